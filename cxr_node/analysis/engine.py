"""Batched analysis: float images -> probabilities of A and B, joint class, CAMs (feature grid,
mapped to the source grid on first read).

Speed, without changing the method:
- both models stay loaded on one device, in eval mode and channels_last memory format
  (oneDNN on CPU and cuDNN on GPU pick their fastest convolution layouts for it);
- everything runs under torch.inference_mode (no autograd bookkeeping at all);
- a backlog is analysed as one batch per model;
- Grad-CAM comes from the forward activations (cam.py), no backward pass;
- on GPU, bf16 autocast (fp16 when the card has no bf16), pinned host memory and
  non-blocking copies of grey squares normalised on the device; `compile=True` wraps both
  forwards in torch.compile and falls back to eager mode, with a warning, when compilation fails;
  without compile, the forwards are replayed from captured CUDA graphs (cuda_graphs.py: an eager
  DenseNet-161 forward is launch-bound on an H200), again falling back to eager on failure.
- CAMs stay on the 7 x 7 feature grid until read (Analysis.cam_a/cam_b), so a batch does not
  carry two full-size float maps per study; the SC build maps them once.
- prepare() (CPU letterbox) and run() (device) are separate, so analyse_stream() can letterbox
  the next batch while the device runs the current one (on an H200 at batch 64 the letterbox,
  36 ms on 16 cores, took as long as both forwards, 33 ms; docs/benchmarks.md).
- on a CPU with 2+ threads, models A and B run at the same time, each on half of the
  threads: a batch-1 DenseNet forward does not keep two cores busy (intra-op parallelism
  has idle gaps), two independent forwards do (measured on 2 cores: 0.18 s instead of 0.24 s
  for both models at batch 1, 0.16 instead of 0.26 s per study at batch 4). floor() uses the
  same setting, so analysis/floor still measures only the pipeline's own overhead.
CPU defaults to exact fp32 eager: the numbers then match training's evaluation bit for bit
in method and closely in value. bf16 on CPU (`precision="bf16"`) is available but changes
the numerics, so it is opt-in.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import numpy as np
import torch

from cxr_node.analysis.bundle import Bundle
from cxr_node.analysis.cam import cam_from_features, densenet_classifier, forward_with_features
from cxr_node.analysis.cuda_graphs import GraphedForward
from cxr_node.analysis.domain import DomainModel, DomainScore, forward_with_descriptors
from cxr_node.analysis.fusion import JointResult, joint_rule
from cxr_node.analysis.preprocess import Letterbox, map_to_source, normalise, normalise_batch, square_input
from cxr_node.validation import PRECISIONS  # one list for the config, the engine and the CLI

log = logging.getLogger(__name__)

# x -> what the eager forward returns; eager, torch.compile'd (_WithFallback) or replayed from a CUDA graph
Forward = Callable[[torch.Tensor], Any]

POSITIVE = 1  # index of the positive class in both heads (abnormal for A, COVID for B)
STAGES = ("preprocess", "model_a", "model_b", "cams", "domain")


@dataclass
class Analysis:
    """One study's answer. The CAMs leave the engine on the model's feature grid (7 x 7 at a
    224 input) with the letterbox placement, and are mapped to the source grid only when read
    (`cam_a`, `cam_b`, cached): a 64-study batch then holds 64 x 2 tiny maps instead of
    64 x 2 x 14 MB, and the upsampling runs where the SC is drawn, off the GPU's critical path.
    """

    result: JointResult
    cam_grid_a: np.ndarray  # (h, w) float32 in [0, 1]; on the source grid already when box is None
    cam_grid_b: np.ndarray
    box: Letterbox | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, batch share
    # Distance from the training images (None: the bundle has no statistics or the check is off).
    # When domain.outside the image gets no class: processing turns it into `not_analysable`.
    domain: DomainScore | None = None

    @cached_property
    def cam_a(self) -> np.ndarray:
        """Grad-CAM of model A on the source image grid, float32 in [0, 1]."""
        return self.cam_grid_a if self.box is None else map_to_source(self.cam_grid_a, self.box)

    @cached_property
    def cam_b(self) -> np.ndarray:
        """Grad-CAM of model B on the source image grid, float32 in [0, 1]."""
        return self.cam_grid_b if self.box is None else map_to_source(self.cam_grid_b, self.box)


@dataclass
class Prepared:
    """A batch letterboxed on the CPU, ready for Analyzer.run()."""

    host: torch.Tensor  # (N, 3, S, S) normalised, or on a GPU (N, S, S) grey and pinned
    boxes: list[Letterbox]
    seconds: float


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    return device


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "auto" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _prep_threads(device: torch.device) -> int:
    """Threads that letterbox a batch. cv2.resize releases the GIL, so they run in parallel.
    On GPU the CPU does nothing else meanwhile: use the cores (a 64-study batch of 2k x 2k
    radiographs is ~0.4 s of letterboxing on one core). On CPU, half: the models want the rest."""
    cores = os.cpu_count() or 2
    return max(1, min(16, cores)) if device.type == "cuda" else max(1, cores // 2)


class Analyzer:
    """Holds both models loaded on one device; analyse() takes any number of images at once.

    After each analyse() call `last_timings` holds the seconds of each stage for the whole
    batch ("preprocess", "model_a", "model_b", "cams", "total") and `last_batch` its size.
    """

    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        *,
        precision: str = "auto",
        compile: bool = False,
        cuda_graphs: bool = True,
        parallel_models: bool | None = None,
        domain_check: bool = True,
        domain_threshold: float | None = None,
    ) -> None:
        self.bundle = bundle
        # The out-of-domain check reads its descriptors from the same forwards (domain.py).
        self.domain: DomainModel | None = bundle.domain if domain_check else None
        if self.domain is not None and domain_threshold is not None:
            self.domain = DomainModel(
                self.domain.layers, float(domain_threshold), self.domain.quantile, self.domain.summary
            )
        self.device = pick_device(device)
        if parallel_models is None:  # auto: CPU with at least two threads to split
            parallel_models = self.device.type == "cpu" and torch.get_num_threads() >= 2
        self.parallel_models = bool(parallel_models)
        self._model_pool: ThreadPoolExecutor | None = None
        if self.parallel_models:
            per_model = max(1, torch.get_num_threads() // 2)
            # set_num_threads is per OS thread for OpenMP: each pool thread gets half, the caller keeps its own.
            self._model_pool = ThreadPoolExecutor(
                2, thread_name_prefix="cxr-model", initializer=torch.set_num_threads, initargs=(per_model,)
            )
        self._prep_pool = ThreadPoolExecutor(_prep_threads(self.device), thread_name_prefix="cxr-prep")
        # Process-wide malloc settings are the caller's: cxr_node.memory.tune_malloc() at start-up.
        self.input_size = bundle.input_size
        # channels_last lets oneDNN / cuDNN pick their fastest convolution layouts.
        self.model_a = bundle.model_a.to(self.device).to(memory_format=torch.channels_last).eval()
        self.model_b = bundle.model_b.to(self.device).to(memory_format=torch.channels_last).eval()
        self.autocast_dtype = _autocast_dtype(self.device, precision)
        self.precision = "fp32" if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch.")
        # The four forwards, each a callable of x: with features (analyse) and bare (floor).
        # With the out-of-domain check they also return each model's descriptors (a flat tuple).
        self._fwd_a: Forward = self._analysis_forward(self.model_a, "A")
        self._fwd_b: Forward = self._analysis_forward(self.model_b, "B")
        self._bare_a: Forward = self.model_a
        self._bare_b: Forward = self.model_b
        self.compiled = False
        if compile:
            self._try_compile()
        # CUDA graphs only on a GPU and not over compiled code; floor() gets them too, so that
        # analysis/floor keeps comparing like with like.
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda" and not self.compiled
        if self.cuda_graphs:
            dtype = self.autocast_dtype
            self._fwd_a = GraphedForward(self._fwd_a, "forward A", dtype)
            self._fwd_b = GraphedForward(self._fwd_b, "forward B", dtype)
            self._bare_a = GraphedForward(self._bare_a, "bare forward A", dtype)
            self._bare_b = GraphedForward(self._bare_b, "bare forward B", dtype)
        self.last_timings: dict[str, float] = {}
        self.last_batch = 0
        _release_freed_memory()

    def _analysis_forward(self, model: torch.nn.Module, key: str) -> Forward:
        if self.domain is None:
            return partial(forward_with_features, model)
        return partial(forward_with_descriptors, model, layers=self.domain.specs_of(key))

    @property
    def domain_status(self) -> str:
        """One line: whether this analyser checks images against the training images, and how."""
        if self.bundle.domain is None:
            return self.bundle.domain_status
        if self.domain is None:
            return "out-of-domain check off: turned off by configuration (models.domain_check = false)"
        where = "the bundle's" if self.domain.threshold == self.bundle.domain.threshold else "models.domain_threshold"
        return (
            f"out-of-domain check on: {len(self.domain.layers)} feature layer(s), threshold "
            f"{self.domain.threshold:.2f} ({where})"
        )

    @property
    def domain_note(self) -> str:
        """The SR/SC note of a result computed without the out-of-domain check."""
        if self.bundle.domain is None:
            return "Out-of-domain check off: the model bundle has no feature statistics"
        return "Out-of-domain check off by configuration"

    # -- settings shared by analyse() and floor() -----------------------------------------
    def precision_context(self):
        """The autocast context analyse() runs its forwards under (a no-op in fp32), for code that
        times other forwards of these models like for like (the benchmark's naive Grad-CAM)."""
        if self.autocast_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.autocast_dtype)
        return nullcontext()

    def _try_compile(self) -> None:
        """torch.compile both forwards; any failure (no compiler, unsupported op) -> eager."""
        try:
            fwd_a = torch.compile(self._fwd_a, dynamic=False)
            fwd_b = torch.compile(self._fwd_b, dynamic=False)
            bare_a, bare_b = torch.compile(self.model_a, dynamic=False), torch.compile(self.model_b, dynamic=False)
            x = torch.zeros(1, 3, self.input_size, self.input_size, device=self.device).contiguous(
                memory_format=torch.channels_last
            )
            with torch.inference_mode(), self.precision_context():
                fwd_a(x)
                fwd_b(x)
                bare_a(x)
                bare_b(x)
        except Exception as exc:  # compilation needs a C++ compiler / Triton; never fatal
            log.warning("torch.compile failed, running eager: %s", str(exc).splitlines()[0] if str(exc) else exc)
            return
        self._fwd_a = _WithFallback(fwd_a, self._fwd_a, "forward A")
        self._fwd_b = _WithFallback(fwd_b, self._fwd_b, "forward B")
        self._bare_a = _WithFallback(bare_a, self.model_a, "bare forward A")
        self._bare_b = _WithFallback(bare_b, self.model_b, "bare forward B")
        self.compiled = True

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- stages ----------------------------------------------------------------------------
    def prepare(self, images: list[np.ndarray]) -> Prepared:
        """The CPU half of preprocessing: letterbox (thread pool), clip, stack. Touches no device
        state, so it can run in another thread while run() has the previous batch on the GPU.
        On a GPU the batch stays grey and pinned: only 1 channel crosses the bus, and run()
        normalises it there with the same float32 arithmetic."""
        t0 = time.perf_counter()
        images = list(images)
        prep = partial(square_input, size=self.input_size)
        pairs = list(self._prep_pool.map(prep, images)) if len(images) > 2 else [prep(i) for i in images]
        if self.device.type == "cuda":
            host = torch.from_numpy(np.stack([p[0] for p in pairs])).pin_memory()
        else:
            host = torch.from_numpy(np.stack([normalise(p[0]) for p in pairs]))
        return Prepared(host, [p[1] for p in pairs], time.perf_counter() - t0)

    def _to_device(self, prepared: Prepared) -> torch.Tensor:
        if self.device.type == "cuda":
            x = normalise_batch(prepared.host.to(self.device, non_blocking=True))
        else:
            x = prepared.host
        return x.contiguous(memory_format=torch.channels_last)

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[Letterbox]]:
        """Float images in [0, 1] -> (N, 3, S, S) channels_last tensor on the device + placements."""
        prepared = self.prepare(images)
        return self._to_device(prepared), prepared.boxes

    def _both(self, run_a, run_b):
        """Run A and B (concurrently when parallel_models); returns ((out_a, s_a), (out_b, s_b))."""

        def timed(fn):
            with torch.inference_mode(), self.precision_context():
                t = time.perf_counter()
                out = fn()
                self._sync()
                return out, time.perf_counter() - t

        if self._model_pool is None:
            return timed(run_a), timed(run_b)
        fa, fb = self._model_pool.submit(timed, run_a), self._model_pool.submit(timed, run_b)
        return fa.result(), fb.result()

    @torch.inference_mode()
    def floor(self, x: torch.Tensor, *, sequential: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The hardware floor: two bare DenseNet forwards (the models' own forward), same settings
        (precision, compile or CUDA graphs, channels_last, and A and B concurrently when analyse()
        runs them so). sequential=True runs A then B in the calling thread with all its threads:
        what the floor is when the two models do not overlap. Returns when the device is done."""
        if not sequential:
            (la, _), (lb, _) = self._both(lambda: self._bare_a(x), lambda: self._bare_b(x))
            return la, lb
        with self.precision_context():
            la, lb = self._bare_a(x), self._bare_b(x)
        self._sync()
        return la, lb

    def analyse(self, images: list[np.ndarray]) -> list[Analysis]:
        if not images:
            return []
        return self.run(self.prepare(images))

    def analyse_stream(self, batches: Iterable[list[np.ndarray]]) -> Iterator[list[Analysis]]:
        """analyse() over a stream of batches, letterboxing batch n+1 on the CPU while batch n runs
        on the device. Same results as analyse() batch by batch. Worth it on a GPU, where the
        letterbox of a large batch takes as long as the forwards; on a CPU both want the cores."""
        it = iter(batches)

        def prepare(images):
            return self.prepare(images) if len(images) else None

        with ThreadPoolExecutor(1, thread_name_prefix="cxr-prepare") as ahead:
            upcoming = next(it, None)  # a batch is a list, never None
            pending = ahead.submit(prepare, list(upcoming)) if upcoming is not None else None
            while pending is not None:
                prepared = pending.result()
                upcoming = next(it, None)
                pending = ahead.submit(prepare, list(upcoming)) if upcoming is not None else None
                yield self.run(prepared) if prepared is not None else []

    @torch.inference_mode()
    def run(self, prepared: Prepared) -> list[Analysis]:
        """The device half: copy (and on a GPU normalise), both forwards, CAMs, joint rule."""
        n = len(prepared.boxes)
        t0 = time.perf_counter()
        x, boxes = self._to_device(prepared), prepared.boxes
        self._sync()
        t1 = time.perf_counter()

        ((feats_a, logits_a, *desc_a), s_a), ((feats_b, logits_b, *desc_b), s_b) = self._both(
            lambda: self._fwd_a(x), lambda: self._fwd_b(x)
        )
        p_abn = torch.softmax(logits_a.float(), dim=1)[:, POSITIVE]
        p_cov = torch.softmax(logits_b.float(), dim=1)[:, POSITIVE]
        t2 = time.perf_counter()
        domain = self._domain_scores(n, desc_a, desc_b)
        t3 = time.perf_counter()

        cams_a = cam_from_features(feats_a, densenet_classifier(self.model_a), POSITIVE).cpu().numpy()
        cams_b = cam_from_features(feats_b, densenet_classifier(self.model_b), POSITIVE).cpu().numpy()
        p_abn_np, p_cov_np = p_abn.cpu().numpy(), p_cov.cpu().numpy()
        out = [
            Analysis(
                result=joint_rule(float(p_abn_np[i]), float(p_cov_np[i]), self.bundle.thresholds),
                cam_grid_a=cams_a[i],
                cam_grid_b=cams_b[i],
                box=boxes[i],
                domain=domain[i],
            )
            for i in range(n)
        ]
        t4 = time.perf_counter()
        # With parallel_models, model_a and model_b overlap: each is its own forward's wall time,
        # "models" is the wall time of both together. "domain" is the scoring of the descriptors
        # (their pooling runs inside the forwards and is counted there).
        batch = {
            "preprocess": prepared.seconds + (t1 - t0),
            "model_a": s_a,
            "model_b": s_b,
            "cams": t4 - t3,
            "domain": t3 - t2,
        }
        # total: this call's wall time plus the letterbox, wherever that ran
        self.last_timings = {**batch, "models": t2 - t1, "total": prepared.seconds + (t4 - t0)}
        self.last_batch = n
        share = {k: v / n for k, v in batch.items()}
        for a in out:
            a.timings = dict(share)
        return out

    def _domain_scores(self, n: int, desc_a, desc_b) -> list[DomainScore | None]:
        """Each image's distance from the training images, from the descriptors the forwards
        returned (A's layers then B's, in the order of the statistics)."""
        if self.domain is None:
            return [None] * n
        names = [s.name for s in self.domain.specs_of("A")] + [s.name for s in self.domain.specs_of("B")]
        descriptors = {name: d[:n].float().cpu().numpy() for name, d in zip(names, [*desc_a, *desc_b], strict=True)}
        return list(self.domain.score(descriptors))


def _release_freed_memory() -> None:
    """Give the heap freed while building, loading and re-laying out the models back to the OS.

    Random initialisation, torch.load and the channels_last copies leave ~100-300 MB of freed
    but still resident glibc heap behind; a worker should not carry it forever.
    """
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


class _WithFallback:
    """A compiled callable that switches to its eager twin for good if a later call fails
    (a recompilation for a new batch size can fail where the warm-up did not)."""

    def __init__(self, compiled, eager, name: str) -> None:
        self.compiled, self.eager, self.name = compiled, eager, name

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:
                log.warning("torch.compile'd %s failed, running eager from now on: %s", self.name, exc)
                self.compiled = None
        return self.eager(*args)


__all__ = ["Analysis", "Analyzer", "Prepared", "STAGES", "pick_device"]
