"""Forwards replayed from captured CUDA graphs.

An eager DenseNet-161 forward launches ~600 kernels from Python. On an H200 that launch work,
not the GPU, sets the pace: 15 ms per model at batch 1, and while it holds the GIL the
letterbox threads of the next batch wait. Replaying a captured graph launches the whole
forward at once. Measured on an H200 (bf16, 224 px, same run; docs/benchmarks.md): both
models at batch 1 in 6.1 ms instead of 33.6 ms, 218 instead of 94 studies/s at batch 4, and
analyse_stream() at batch 64 at 1,234 instead of 903 studies/s; outputs bit-identical at the
same batch size.

Batches are padded to the next power of two, so a worker whose backlog varies captures at most
a handful of graphs (1, 2, 4, ... up to its batch size) instead of one per size. Padding rows
are zeros; in eval mode DenseNet has no operation across the batch, so they do not change the
real rows (cuDNN may pick another kernel for the padded size: measured, identical in bf16,
up to 6.5e-5 in probability and 1.5e-3 in the normalised CAM in fp32).

Any failure to capture (an op that cannot be captured, a driver that cannot) logs a warning
and runs eager from then on: graphs are a speed-up, never a reason to stop analysing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

Output = torch.Tensor | tuple[torch.Tensor, ...]


def bucket(n: int) -> int:
    """The batch size a batch of n is padded to: the next power of two."""
    if n < 1:
        raise ValueError(f"batch of {n}: must be at least 1")
    return 1 << (n - 1).bit_length()


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """x with zero rows appended up to `size` rows, in x's memory format."""
    n = x.shape[0]
    if n > size:
        raise ValueError(f"batch of {n} does not fit a graph for {size}")
    if n == size:
        return x
    padded = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
    return padded.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else padded


def take_rows(out: Output, n: int) -> Output:
    """The first n rows of each output, copied out of the graph's static memory (the next
    replay overwrites it)."""
    if isinstance(out, tuple):
        return tuple(t[:n].clone() for t in out)
    return out[:n].clone()


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    static_x: torch.Tensor
    static_out: Output

    def replay(self, x: torch.Tensor) -> Output:
        n = x.shape[0]
        self.static_x[:n].copy_(x)
        if n < self.static_x.shape[0]:
            self.static_x[n:].zero_()
        self.graph.replay()
        return take_rows(self.static_out, n)


class GraphedForward:
    """fn(x) -> tensor or tuple of tensors, replayed from a CUDA graph captured on first use of
    each (padded batch size, input shape, dtype). Call it inside torch.inference_mode."""

    def __init__(self, fn: Callable[[torch.Tensor], Output], name: str, autocast_dtype: torch.dtype | None = None):
        self.fn, self.name, self.autocast_dtype = fn, name, autocast_dtype
        self._graphs: dict[tuple, _Captured] = {}
        self.failed = False

    @property
    def captured_sizes(self) -> list[int]:
        return sorted(key[0] for key in self._graphs)

    def _autocast(self):
        # Without the autocast weight cache: cached bf16 copies of the weights would be made
        # outside the graph's memory pool and freed when the caller's autocast context exits,
        # leaving the graph reading freed memory. Uncached, the casts are part of the graph.
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)

    def _capture(self, x: torch.Tensor, size: int) -> _Captured:
        static_x = pad_batch(x, size).clone()
        with torch.inference_mode(), self._autocast():
            # Warm-up on a side stream (cuDNN / cuBLAS set themselves up outside the capture).
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.fn(static_x)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the letterbox threads pin host memory for the next batch meanwhile,
            # which the default ("global") mode would count as an illegal call during capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self.fn(static_x)
        return _Captured(graph, static_x, static_out)

    def __call__(self, x: torch.Tensor) -> Output:
        if self.failed or x.device.type != "cuda":
            return self.fn(x)
        size = bucket(x.shape[0])
        key = (size, tuple(x.shape[1:]), x.dtype)
        captured = self._graphs.get(key)
        if captured is None:
            try:
                captured = self._graphs[key] = self._capture(x, size)
            except Exception as exc:  # never fatal: eager gives the same answer, slower
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("CUDA graph capture of %s failed, running eager from now on: %s", self.name, first)
                self.failed = True
                self._graphs.clear()
                return self.fn(x)
        return captured.replay(x)


__all__ = ["GraphedForward", "bucket", "pad_batch", "take_rows"]
