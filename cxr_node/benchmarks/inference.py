"""`cxr-node bench inference`: per-stage times, throughput, memory, and the floor and naive baselines.

Everything is measured in one process, on the real radiograph (pydicom-data RG1_J2KR.dcm:
CR chest, JPEG 2000 lossless, 1955 x 1841; `image=` takes another), with warm-up runs first
and medians reported. One function per phase:

- decode_phase: the pool's decode_file (dcmread + J2K + grey pipeline), N times;
- per_study_phase, at batch 1, study by study: cxr_node.processing.process_batch (the worker's
  and infer's path: analysis, SR/SC build = CAMs mapped to the source grid + render + highdicom
  + encode + durable write) gives the stage split; analysis = the Analyzer's wall time of that
  batch (preprocess + models + CAMs, no decode); then, interleaved so that load changes hit
  all of them alike:
  floor = Analyzer.floor(): two bare DenseNet forwards (the bundle's architecture) on the same preprocessed
  input, same batch, device, precision, memory format and inference_mode (and sequentially:
  floor(sequential=True));
  naive = preprocess + per-model autograd Grad-CAM (cam.gradcam_autograd: forward + backward,
  parameter gradients included, as a hook-based Grad-CAM library does), CAMs on the feature grid;
- batch_phase: studies/s of analyse() at each batch size (the same image repeated), with the
  stage split of the median run; stream_phase: analyse_stream() over repeats + 1 batches of the
  largest size (letterboxing the next batch while the device runs the current one);
- cpu_agreement (GPU only): against the CPU in exact fp32 on the same image and weights;
- overlap_phase: N studies decoded serially then analysed, versus decoded in the process pool
  while the previous ones are analysed;
- peak RSS of this process (ru_maxrss), and of a fresh worker-like process (probe.py), which is
  what the 1.5 GB goal is about. The goals themselves are data in goals.py.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

from cxr_node.benchmarks import goals
from cxr_node.benchmarks.probe import result_dirs, run_probe

BENCH_IMAGE = "RG1_J2KR.dcm"
WORKER_BATCH = 4  # the worker-like probe's batch (the worker's default batch size)


def bench_image() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(BENCH_IMAGE)
    if path is None:
        raise RuntimeError(f"{BENCH_IMAGE} not found: install the PyPI package pydicom-data")
    return Path(path)


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 5), "p95": round(float(np.percentile(a, 95)), 5), "n": len(a)}


def _rss_mb() -> float:
    """Peak RSS of this process in MiB: ru_maxrss (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- phases ---------------------------------------------------------------------------------
def decode_phase(image: Path, studies: int):
    """Decode `image` `studies` times with the decode pool's own function; (last Decoded, seconds)."""
    from cxr_node.decoding.pool import decode_file

    seconds, decoded = [], None
    for _ in range(studies):
        decoded = decode_file(image)
        seconds.append(decoded.seconds)
    return decoded, seconds


def load_phase(models: Path | None, input_size: int, device: str, precision: str, compile: bool, cuda_graphs: bool):
    """Both models on the device as the worker holds them; (bundle, analyzer, seconds)."""
    from cxr_node.analysis.bundle import load_bundle, untrained_bundle
    from cxr_node.analysis.engine import Analyzer

    t0 = time.perf_counter()
    bundle = load_bundle(models) if models else untrained_bundle(input_size)
    analyzer = Analyzer(bundle, device, precision=precision, compile=compile, cuda_graphs=cuda_graphs)
    return bundle, analyzer, time.perf_counter() - t0


def naive_once(analyzer, image: np.ndarray) -> float:
    """Preprocess + autograd Grad-CAM per model (probabilities come from the same forwards)."""
    from cxr_node.analysis.cam import gradcam_autograd

    t0 = time.perf_counter()
    x, _ = analyzer.preprocess([image])
    x = x.clone()  # a normal tensor: autograd refuses inference-mode tensors
    with analyzer.precision_context():
        cams = [gradcam_autograd(m, x, 1) for m in (analyzer.model_a, analyzer.model_b)]
    for cam in cams:
        cam.detach().float().cpu().numpy()  # the same hand-over as analyse(): maps on the host
    for m in (analyzer.model_a, analyzer.model_b):
        m.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def warm_up_phase(analyzer, image: np.ndarray, naive: bool) -> None:
    from cxr_node.results.writer import warm_up

    warm_up()  # highdicom's tables, as serve loads them at start-up
    x1, _ = analyzer.preprocess([image])
    for _ in range(2):
        analyzer.analyse([image])
        analyzer.floor(x1)
    if naive:
        naive_once(analyzer, image)


@dataclass
class PerStudy:
    stages: dict[str, list[float]] = field(default_factory=dict)
    analysis: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    floor_sequential: list[float] = field(default_factory=list)
    naive: list[float] = field(default_factory=list)


def per_study_phase(analyzer, image: Path, decoded, model, studies: int, naive: bool) -> PerStudy:
    """Study by study at batch 1: the processing path (stages, SR/SC written), floor, naive."""
    from cxr_node.analysis.engine import STAGES
    from cxr_node.decoding.pool import Decoded
    from cxr_node.processing import process_batch
    from cxr_node.results.identity import NodeIdentity

    node, img = NodeIdentity("CXR_NODE"), decoded.image.pixels
    x1, _ = analyzer.preprocess([img])
    out = PerStudy(stages={k: [] for k in (*STAGES, "sr_sc_build")})

    def decode(paths: list[str]) -> list[Decoded | BaseException]:  # timed once per study in decode_phase
        return [decoded] * len(paths)

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        for i in range(studies):
            (outcome,) = process_batch([image], analyzer, node, model, result_dirs(Path(tmp), f"s{i}-"), decode)
            if not outcome.ok:
                raise RuntimeError(outcome.error)
            out.analysis.append(analyzer.last_timings["total"])
            for k in out.stages:
                out.stages[k].append(outcome.timings[k])
            out.floor.append(_timed(lambda: analyzer.floor(x1)))
            out.floor_sequential.append(_timed(lambda: analyzer.floor(x1, sequential=True)))
            if naive:
                out.naive.append(naive_once(analyzer, img))
    return out


def batch_phase(analyzer, image: np.ndarray, batch_sizes: tuple[int, ...], repeats: int, say) -> dict:
    """analyse() and floor() studies/s at each batch size, and the stage split of the median run."""
    per_s, floor_per_s, batch_stages = {}, {}, {}
    for b in batch_sizes:
        say(f"batch {b} x{repeats}")
        batch = [image] * b
        xb, _ = analyzer.preprocess(batch)
        analyzer.analyse(batch)  # warm-up at this shape
        analyzer.floor(xb)
        runs, fruns, splits = [], [], []
        for _ in range(max(1, repeats)):
            runs.append(_timed(partial(analyzer.analyse, batch)))
            splits.append(dict(analyzer.last_timings))
            fruns.append(_timed(partial(analyzer.floor, xb)))
        per_s[str(b)] = round(b / float(np.median(runs)), 3)
        floor_per_s[str(b)] = round(b / float(np.median(fruns)), 3)
        median_run = splits[int(np.argsort(runs)[len(runs) // 2])]
        batch_stages[str(b)] = {k: round(v, 5) for k, v in median_run.items()}
        del xb
    return {"studies_per_s": per_s, "floor_studies_per_s": floor_per_s, "batch_stages_s": batch_stages}


def stream_phase(analyzer, image: np.ndarray, batch: int, repeats: int) -> dict:
    """analyse_stream() over repeats + 1 batches: the letterbox of the next overlapping the device."""
    batches = [[image] * batch for _ in range(max(1, repeats) + 1)]
    for _ in analyzer.analyse_stream(batches[:2]):  # warm-up
        pass
    t0 = time.perf_counter()
    done = sum(len(r) for r in analyzer.analyse_stream(batches))
    return {"batch": batch, "batches": len(batches), "studies_per_s": round(done / (time.perf_counter() - t0), 3)}


def cpu_agreement(analyzer, bundle, image: np.ndarray) -> dict:
    """The device's answer against exact fp32 on the CPU (same weights, same image): how far
    autocast and the device's kernels move the probabilities and the CAMs."""
    import copy
    from dataclasses import replace

    from cxr_node.analysis.engine import Analyzer

    # Copies: Analyzer moves a bundle's models to its device in place, which would pull the
    # device analyzer's weights back to the CPU.
    cpu_bundle = replace(
        bundle, model_a=copy.deepcopy(analyzer.model_a).cpu(), model_b=copy.deepcopy(analyzer.model_b).cpu()
    )
    (r,) = Analyzer(cpu_bundle, "cpu", precision="fp32", parallel_models=False).analyse([image])
    (d,) = analyzer.analyse([image])

    def rel(a, b):
        return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12))

    return {
        "precision": analyzer.precision,
        "p_abnormal": [round(d.result.p_abnormal, 6), round(r.result.p_abnormal, 6)],
        "p_covid": [round(d.result.p_covid, 6), round(r.result.p_covid, 6)],
        "max_abs_prob_diff": round(
            max(abs(d.result.p_abnormal - r.result.p_abnormal), abs(d.result.p_covid - r.result.p_covid)), 6
        ),
        "cam_rel_diff": [round(rel(d.cam_grid_a, r.cam_grid_a), 6), round(rel(d.cam_grid_b, r.cam_grid_b), 6)],
        "same_class": d.result.label == r.result.label,
    }


def overlap_phase(analyzer, image: Path, studies: int) -> dict:
    """N studies decoded serially then analysed, versus decoded in the process pool meanwhile."""
    from cxr_node.decoding.pool import DecodePool, decode_file

    serial = _timed(lambda: [analyzer.analyse([decode_file(image).image.pixels]) for _ in range(studies)])
    with DecodePool(kind="process", workers=2) as pool:
        pool.warm_up()
        t0 = time.perf_counter()
        futures = [pool.submit(image) for _ in range(studies)]
        for f in futures:
            analyzer.analyse([f.result().image.pixels])
        overlapped = time.perf_counter() - t0
    return {
        "studies": studies,
        "serial_s": round(serial, 3),
        "overlapped_s": round(overlapped, 3),
        "speedup": round(serial / overlapped, 3),
    }


# -- the whole benchmark -----------------------------------------------------------------------
def _environment(analyzer, model, architecture: str) -> dict:
    import torch

    gpu = None
    if analyzer.device.type == "cuda":
        gpu = {
            "name": torch.cuda.get_device_name(analyzer.device),
            "max_memory_allocated_mb": round(torch.cuda.max_memory_allocated(analyzer.device) / 2**20, 1),
        }
    return {
        "input_size": analyzer.input_size,
        "device": str(analyzer.device),
        "gpu": gpu,
        "precision": analyzer.precision,
        "compiled": analyzer.compiled,
        "cuda_graphs": analyzer.cuda_graphs,
        "parallel_models": analyzer.parallel_models,
        "channels_last": True,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "model": model.label,
        "architecture": architecture,
    }


def _per_study_figures(decode_s: list[float], s: PerStudy) -> dict:
    a50, f50 = float(np.median(s.analysis)), float(np.median(s.floor))
    n50 = float(np.median(s.naive)) if s.naive else None
    stages = {"decode": _stats(decode_s), **{k: _stats(v) for k, v in s.stages.items()}}
    return {
        "stages_s": stages,
        "analysis_s_p50": round(a50, 5),
        "analysis_s_p95": round(float(np.percentile(s.analysis, 95)), 5),
        "floor_s": round(f50, 5),
        # two bare forwards one after the other in the calling thread (all threads each):
        # what floor_s is when A and B do not run concurrently
        "floor_sequential_s": round(float(np.median(s.floor_sequential)), 5),
        "naive_s": round(n50, 5) if n50 is not None else None,
        "analysis_over_floor": round(a50 / f50, 4),
        "naive_over_analysis": round(n50 / a50, 3) if n50 is not None else None,
    }


def run_inference_bench(
    *,
    studies: int = 10,
    batch_sizes: tuple[int, ...] = (1, 4, 16),
    device: str = "cpu",
    input_size: int = 224,
    models: Path | None = None,
    precision: str = "auto",
    compile: bool = False,
    cuda_graphs: bool = True,
    repeats: int = 3,
    naive: bool = True,
    overlap: bool = True,
    rss_probe: bool = True,
    image: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """All phases in order; the JSON documented in docs/benchmarks.md. The caller owns the process:
    call cxr_node.memory.tune_malloc() first, as serve does (the `bench inference` command does)."""
    from cxr_node.results.identity import ModelIdentity

    say = progress or (lambda msg: None)
    studies, image = max(1, int(studies)), Path(image) if image else bench_image()
    load_start, started = os.getloadavg(), time.perf_counter()
    say(f"decode x{studies}")
    decoded, decode_s = decode_phase(image, studies)
    img = decoded.image.pixels
    say("load models")
    bundle, analyzer, load_s = load_phase(models, input_size, device, precision, compile, cuda_graphs)
    model = ModelIdentity.from_bundle(bundle)
    say("warm-up")
    warm_up_phase(analyzer, img, naive)
    say(f"{studies} studies: analysis + SR/SC, floor{', naive' if naive else ''}")
    per_study = per_study_phase(analyzer, image, decoded, model, studies, naive)
    batches = batch_phase(analyzer, img, batch_sizes, repeats, say)
    say(f"stream of {repeats + 1} batches of {max(batch_sizes)}")
    stream = stream_phase(analyzer, img, max(batch_sizes), repeats)
    reference = cpu_agreement(analyzer, bundle, img) if analyzer.device.type != "cpu" else None
    if overlap and studies >= 2:
        say("decode overlap")
    overlapped = overlap_phase(analyzer, image, studies) if overlap and studies >= 2 else None
    peak_rss = _rss_mb()
    worker_rss = run_probe(image, models, bundle.input_size, device, WORKER_BATCH) if rss_probe else None
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "image": image.name,
        "image_shape": list(img.shape),
        **_environment(analyzer, model, bundle.architecture),
        "studies": studies,
        "repeats": repeats,
        "model_load_s": round(load_s, 3),
        **_per_study_figures(decode_s, per_study),
        **batches,  # batch_stages_s: stage seconds of the whole batch, median run
        "stream": stream,  # analyse_stream(): letterbox of batch n+1 while batch n is on the device
        "cpu_fp32_agreement": reference,
        "decode_overlap": overlapped,
        "peak_rss_mb": round(peak_rss, 1),
        "worker_peak_rss_mb": worker_rss,
    }
    result["goals"] = goals.check(result)
    result["load_avg_start"] = [round(v, 2) for v in load_start]
    result["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


__all__ = ["BENCH_IMAGE", "bench_image", "run_inference_bench"]
