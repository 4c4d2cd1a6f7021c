"""Pixel decoding off the inference path: a small pool that decodes DICOM files ahead.

JPEG 2000 decoding of a chest radiograph takes about 0.5 s, as long as both model
forwards on a 2-core CPU. The OpenJPEG plug-in (pylibjpeg-openjpeg 2.x) holds the
Python GIL for the whole decode (measured: a Python thread next to it gets ~6 % of its
normal speed), so decoding in *threads* overlaps with nothing. The default pool
therefore uses processes ("spawn": safe next to torch's threads; the children import
pydicom/numpy/cv2 only, never torch). A thread pool remains available (kind="thread")
for codecs that release the GIL and for tests.

    pool = DecodePool()
    futures = [pool.submit(p) for p in paths]   # decoding starts now
    ...                                         # analyse earlier images meanwhile
    decoded = futures[0].result()               # Decoded(path, image, seconds)

Pool processes die with their parent: each watches its parent's pid and exits when it
changes (the parent was killed, even with SIGKILL), so a `kill -9` of the node leaves no
decoders (~60 MB each) behind.

Errors travel back unchanged (PixelDataError for images that can never be decoded,
anything else for I/O trouble that a retry may fix), so callers keep their policies.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom

from cxr_node.dicom.pixels import FloatImage, PixelDataError, dataset_to_float, read_image

KINDS = ("process", "thread")


@dataclass(frozen=True)
class Decoded:
    path: str
    image: FloatImage
    seconds: float  # wall time of read + decode + grey-scale pipeline, inside the pool


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def decode_file(path: str | Path) -> Decoded:
    """Read and decode one file to a FloatImage; runs inside the pool.

    DICOM: pydicom's read errors pass through unchanged (an I/O error may be transient);
    PixelDataError (the image itself cannot be turned into grey levels) names the file.
    PNG/JPEG/TIFF files go through pixels.read_image.
    """
    t0 = time.perf_counter()
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = read_image(path)
    else:
        ds = pydicom.dcmread(path)
        try:
            image = dataset_to_float(ds)
        except PixelDataError as exc:
            raise PixelDataError(f"{path}: {exc}") from exc
    return Decoded(str(path), image, time.perf_counter() - t0)


def decode_dataset(ds) -> Decoded:
    """Decode an already-read pydicom Dataset (thread pools only: datasets do not cross processes cheaply)."""
    t0 = time.perf_counter()
    image = dataset_to_float(ds)
    return Decoded(str(getattr(ds, "filename", "") or ""), image, time.perf_counter() - t0)


class DecodePool:
    def __init__(self, workers: int | None = None, kind: str = "process") -> None:
        if kind not in KINDS:
            raise ValueError(f"decode pool kind {kind!r} must be one of {', '.join(KINDS)}")
        self.kind = kind
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._executor: Executor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> Executor:
        with self._lock:
            if self._executor is None:
                if self.kind == "process":
                    self._executor = ProcessPoolExecutor(
                        self.workers,
                        mp_context=multiprocessing.get_context("spawn"),
                        initializer=_exit_with_parent,
                        initargs=(os.getpid(),),
                    )
                else:
                    self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="cxr-decode")
            return self._executor

    def submit(self, path: str | Path) -> Future:
        """Start decoding `path`; the future yields a Decoded or raises the decoder's error."""
        return self._pool().submit(decode_file, str(path))

    def decode_many(self, paths: Sequence[str | Path]) -> list[Decoded | BaseException]:
        """Decode all paths in parallel; per path a Decoded or the exception it raised, in order."""
        if len(paths) == 1:  # nothing to overlap with: skip the round trip through the pool
            futures = [_done(decode_file, paths[0])]
        else:
            futures = [self.submit(p) for p in paths]
        out: list[Decoded | BaseException] = []
        for f in futures:
            try:
                out.append(f.result())
            except Exception as exc:
                out.append(exc)
        return out

    def warm_up(self) -> None:
        """Start the worker processes now (spawn + imports take ~1 s) instead of on the first image."""
        pool = self._pool()
        if isinstance(pool, ProcessPoolExecutor):
            list(pool.map(_noop, range(self.workers)))

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _done(fn, *args) -> Future:
    f: Future = Future()
    try:
        f.set_result(fn(*args))
    except Exception as exc:
        f.set_exception(exc)
    return f


def _noop(_: int) -> None:
    return None


PARENT_POLL_S = 0.5


def _exit_with_parent(parent_pid: int, poll_s: float = PARENT_POLL_S) -> None:
    """Pool-process initializer: a daemon thread ends this process once its parent is gone.

    A watch thread rather than prctl(PR_SET_PDEATHSIG): the death signal fires when the parent
    *thread* that started the process ends, and the executor starts processes from whichever
    thread submits first.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    if os.getppid() != parent_pid:  # the parent died while this process was starting
        os._exit(1)
    threading.Thread(target=watch, name="cxr-decode-parent-watch", daemon=True).start()


__all__ = ["Decoded", "DecodePool", "KINDS", "decode_dataset", "decode_file"]
