"""Process-wide memory settings for a long-running analysis process.

Called once at start-up by the process that owns it (`serve`, `infer`, the benchmark), never
as a side effect of importing or building something: glibc's malloc settings belong to the
whole process, not to one Analyzer.
"""

from __future__ import annotations

import ctypes
import os


def tune_malloc() -> bool:
    """Keep a long-running worker's RSS flat (glibc only; CXR_NODE_MALLOC_TUNING=0 turns it off).

    glibc raises its mmap threshold every time a large block is freed, so after the first
    batch the 14 MB source-grid images and CAMs come from the heap, which fragments and
    never shrinks (measured: +360 MB peak RSS after two batches of 4). A fixed 4 MB threshold
    returns those blocks to the OS on free while torch's smaller batch-1 activations stay on
    the heap; two arenas limit per-thread heap growth (cv2 / decode helper threads).
    mallopt only sets values, so calling this twice is harmless. Returns whether it applied.
    """
    if os.environ.get("CXR_NODE_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 4 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    return True


__all__ = ["tune_malloc"]
