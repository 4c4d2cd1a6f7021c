"""Inference benchmark: per-stage times, throughput, memory, and the floor and naive baselines.

Everything is measured in one process, on the real radiograph (pydicom-data RG1_J2KR.dcm:
CR chest, JPEG 2000 lossless, 1955 x 1841; `image=` takes another), with warm-up runs first
and medians reported:

- stages per study at batch 1: decode, preprocess, model A, model B, CAMs (on the feature
  grid), SR/SC build (CAMs mapped to the source grid + render + highdicom + encode + durable
  write);
- analysis = one Analyzer.analyse() call for one study (preprocess + models + CAMs, no decode);
- floor   = two bare torchvision DenseNet-161 forwards on the same preprocessed input, same
  batch, device, precision, memory format and inference_mode (Analyzer.floor);
- naive   = preprocess + per-model autograd Grad-CAM (cam.gradcam_autograd: forward + backward,
  parameter gradients included, as a hook-based Grad-CAM library does), CAMs on the feature
  grid like analysis (both map to the source grid later, when the SC is drawn);
floor, analysis and naive are interleaved study by study, so load changes hit all three alike;
- studies/s of analyse() at each batch size (the same image repeated), with the stage split
  of the median run, and of analyse_stream() over repeats + 1 batches of the largest size
  (letterboxing the next batch while the device runs the current one);
- on a GPU, agreement with the CPU in exact fp32 on the same image and weights (probabilities
  and feature-grid CAMs), since autocast changes the numerics;
- decode overlap: N studies decoded serially then analysed, versus decoded in the process
  pool while the previous ones are analysed;
- peak RSS of this process (ru_maxrss), and of a fresh process that does what a worker does
  (both models loaded, decode, a batch of 4, SR + SC), which is what the 1.5 GB goal is about.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BENCH_IMAGE = "RG1_J2KR.dcm"
GOALS = {"analysis_over_floor_max": 1.15, "naive_over_analysis_min": 3.0, "worker_rss_mb_max": 1500.0}


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


def _own_peak_mb() -> float:
    """Peak RSS of this process image only. ru_maxrss survives fork + exec on Linux, so a child
    started by subprocess would report its parent's peak; VmHWM belongs to the new address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _rss_mb()


def _naive(analyzer, image: np.ndarray) -> float:
    """Preprocess + autograd Grad-CAM per model (probabilities come from the same forwards)."""
    from cxr_node.analysis.cam import gradcam_autograd

    t0 = time.perf_counter()
    x, _ = analyzer.preprocess([image])
    x = x.clone()  # a normal tensor: autograd refuses inference-mode tensors
    with analyzer._context():
        cam_a = gradcam_autograd(analyzer.model_a, x, 1)
        cam_b = gradcam_autograd(analyzer.model_b, x, 1)
    for cam in (cam_a, cam_b):
        cam.detach().float().cpu().numpy()  # the same hand-over as analyse(): maps on the host
    for m in (analyzer.model_a, analyzer.model_b):
        m.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _floor_sequential(analyzer, x) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode(), analyzer._context():
        analyzer._bare_a(x)
        analyzer._bare_b(x)
    if analyzer.device.type == "cuda":
        torch.cuda.synchronize(analyzer.device)
    return time.perf_counter() - t0


def _cpu_agreement(analyzer, bundle, image: np.ndarray) -> dict:
    """The device's answer against exact fp32 on the CPU (same weights, same image): how far
    autocast and the device's kernels move the probabilities and the CAMs."""
    import copy
    from dataclasses import replace

    from cxr_node.analysis.engine import Analyzer

    # Copies: Analyzer moves a bundle's models to its device in place, which would pull the
    # device analyzer's weights back to the CPU.
    cpu_bundle = replace(bundle, model_a=copy.deepcopy(analyzer.model_a).cpu(),
                         model_b=copy.deepcopy(analyzer.model_b).cpu())
    ref = Analyzer(cpu_bundle, "cpu", precision="fp32", parallel_models=False)
    (r,) = ref.analyse([image])
    (d,) = analyzer.analyse([image])

    def rel(a, b):
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))

    return {
        "precision": analyzer.precision,
        "p_abnormal": [round(d.result.p_abnormal, 6), round(r.result.p_abnormal, 6)],
        "p_covid": [round(d.result.p_covid, 6), round(r.result.p_covid, 6)],
        "max_abs_prob_diff": round(max(abs(d.result.p_abnormal - r.result.p_abnormal),
                                       abs(d.result.p_covid - r.result.p_covid)), 6),
        "cam_rel_diff": [round(rel(d.cam_grid_a, r.cam_grid_a), 6), round(rel(d.cam_grid_b, r.cam_grid_b), 6)],
        "same_class": d.result.label == r.result.label,
    }


def worker_rss_probe(image: str, models: str | None, input_size: int, device: str, batch: int) -> dict:
    """Run in a fresh process: what a worker holds with both models, a batch and SR/SC writing."""
    import pydicom

    from cxr_node.analysis.bundle import load_bundle, untrained_bundle
    from cxr_node.analysis.engine import Analyzer
    from cxr_node.dicom.pixels import dataset_to_float
    from cxr_node.results.identity import NodeIdentity
    from cxr_node.results.writer import write_results
    from cxr_node.worker import model_identity

    bundle = load_bundle(models) if models else untrained_bundle(input_size)
    analyzer = Analyzer(bundle, device)
    after_load = _own_peak_mb()
    ds = pydicom.dcmread(image)
    img = dataset_to_float(ds)
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(2):
            analyses = analyzer.analyse([img.pixels] * batch)
            for i, a in enumerate(analyses):
                write_results(ds, img.pixels, a, Path(tmp) / str(i), NodeIdentity("CXR_NODE"), model_identity(bundle))
    return {"after_model_load_mb": round(after_load, 1), "peak_mb": round(_own_peak_mb(), 1), "batch": batch,
            "measure": "VmHWM"}


def _probe_subprocess(image: Path, models: Path | None, input_size: int, device: str, batch: int) -> dict:
    code = (
        "import json, sys; from cxr_node.bench import worker_rss_probe; "
        f"print(json.dumps(worker_rss_probe({str(image)!r}, {str(models) if models else None!r}, "
        f"{input_size}, {device!r}, {batch})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    progress=None,
) -> dict:
    import pydicom
    import torch

    from cxr_node.analysis.bundle import load_bundle, untrained_bundle
    from cxr_node.analysis.decode_pool import DecodePool
    from cxr_node.analysis.engine import STAGES, Analyzer
    from cxr_node.dicom.pixels import dataset_to_float
    from cxr_node.results.identity import NodeIdentity
    from cxr_node.results.writer import write_results
    from cxr_node.worker import model_identity

    say = progress or (lambda msg: None)
    studies = max(1, int(studies))
    image = Path(image) if image else bench_image()
    load_start = os.getloadavg()
    started = time.perf_counter()

    # -- decode -------------------------------------------------------------------------
    say(f"decode x{studies}")
    decode_s = []
    for _ in range(studies):
        t0 = time.perf_counter()
        ds = pydicom.dcmread(image)
        decoded = dataset_to_float(ds)
        decode_s.append(time.perf_counter() - t0)
    img = decoded.pixels

    # -- models ------------------------------------------------------------------------------
    say("load models")
    t0 = time.perf_counter()
    bundle = load_bundle(models) if models else untrained_bundle(input_size)
    analyzer = Analyzer(bundle, device, precision=precision, compile=compile, cuda_graphs=cuda_graphs)
    load_s = time.perf_counter() - t0
    size = bundle.input_size
    model = model_identity(bundle)
    node = NodeIdentity("CXR_NODE")
    x1, _ = analyzer.preprocess([img])

    say("warm-up")
    for _ in range(2):
        analyzer.analyse([img])
        analyzer.floor(x1)
    if naive:
        _naive(analyzer, img)

    # -- per study at batch 1, interleaved with floor and naive -------------------------
    say(f"{studies} studies: analysis, floor{', naive' if naive else ''}, SR/SC")
    stage_s: dict[str, list[float]] = {k: [] for k in STAGES}
    analysis_s, floor_s, naive_s, build_s, floor_seq_s = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        for i in range(studies):
            t0 = time.perf_counter()
            (analysis,) = analyzer.analyse([img])
            analysis_s.append(time.perf_counter() - t0)
            for k in STAGES:
                stage_s[k].append(analyzer.last_timings[k])
            t0 = time.perf_counter()
            analyzer.floor(x1)
            floor_s.append(time.perf_counter() - t0)
            floor_seq_s.append(_floor_sequential(analyzer, x1))
            if naive:
                naive_s.append(_naive(analyzer, img))
            t0 = time.perf_counter()
            write_results(ds, img, analysis, Path(tmp) / f"s{i}", node, model)
            build_s.append(time.perf_counter() - t0)

    # -- throughput by batch size ------------------------------------------------------------
    per_s, floor_per_s, batch_stages = {}, {}, {}
    for b in batch_sizes:
        say(f"batch {b} x{repeats}")
        batch = [img] * b
        xb, _ = analyzer.preprocess(batch)
        analyzer.analyse(batch)  # warm-up at this shape
        analyzer.floor(xb)
        runs, fruns, splits = [], [], []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            analyzer.analyse(batch)
            runs.append(time.perf_counter() - t0)
            splits.append(dict(analyzer.last_timings))
            t0 = time.perf_counter()
            analyzer.floor(xb)
            fruns.append(time.perf_counter() - t0)
        per_s[str(b)] = round(b / float(np.median(runs)), 3)
        floor_per_s[str(b)] = round(b / float(np.median(fruns)), 3)
        median_run = splits[int(np.argsort(runs)[len(runs) // 2])]
        batch_stages[str(b)] = {k: round(v, 5) for k, v in median_run.items()}
        del xb

    # -- a stream of batches at the largest size, letterbox of the next overlapping the device --
    b = max(batch_sizes)
    say(f"stream of {repeats + 1} batches of {b}")
    batches = [[img] * b for _ in range(max(1, repeats) + 1)]
    for _ in analyzer.analyse_stream(batches[:2]):  # warm-up
        pass
    t0 = time.perf_counter()
    done = sum(len(r) for r in analyzer.analyse_stream(batches))
    stream = {"batch": b, "batches": len(batches), "studies_per_s": round(done / (time.perf_counter() - t0), 3)}

    reference = _cpu_agreement(analyzer, bundle, img) if analyzer.device.type != "cpu" else None

    # -- decode overlapping inference -----------------------------------------------------------
    overlap_result = None
    if overlap and studies >= 2:
        say("decode overlap")
        t0 = time.perf_counter()
        for _ in range(studies):
            analyzer.analyse([dataset_to_float(pydicom.dcmread(image)).pixels])
        serial = time.perf_counter() - t0
        with DecodePool(kind="process", workers=2) as pool:
            pool.warm_up()
            t0 = time.perf_counter()
            futures = [pool.submit(image) for _ in range(studies)]
            for f in futures:
                analyzer.analyse([f.result().image.pixels])
            overlapped = time.perf_counter() - t0
        overlap_result = {
            "studies": studies,
            "serial_s": round(serial, 3),
            "overlapped_s": round(overlapped, 3),
            "speedup": round(serial / overlapped, 3),
        }

    peak_rss = _rss_mb()
    worker_rss = _probe_subprocess(image, models, size, device, 4) if rss_probe else None

    a50, f50 = float(np.median(analysis_s)), float(np.median(floor_s))
    n50 = float(np.median(naive_s)) if naive_s else None
    stages = {"decode": _stats(decode_s), **{k: _stats(v) for k, v in stage_s.items()}, "sr_sc_build": _stats(build_s)}
    goals = {
        "analysis_le_1.15x_floor": a50 <= GOALS["analysis_over_floor_max"] * f50,
        "naive_ge_3x_analysis": (n50 / a50 >= GOALS["naive_over_analysis_min"]) if n50 else None,
        "worker_rss_le_1.5GB": (worker_rss["peak_mb"] <= GOALS["worker_rss_mb_max"])
        if worker_rss and "peak_mb" in worker_rss else None,
    }
    gpu = None
    if analyzer.device.type == "cuda":
        gpu = {
            "name": torch.cuda.get_device_name(analyzer.device),
            "max_memory_allocated_mb": round(torch.cuda.max_memory_allocated(analyzer.device) / 2**20, 1),
        }
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "image": image.name,
        "image_shape": list(img.shape),
        "input_size": size,
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
        "studies": studies,
        "repeats": repeats,
        "model_load_s": round(load_s, 3),
        "stages_s": stages,
        "analysis_s_p50": round(a50, 5),
        "analysis_s_p95": round(float(np.percentile(analysis_s, 95)), 5),
        "floor_s": round(f50, 5),
        # two bare forwards one after the other in the calling thread (all threads each):
        # what floor_s is when A and B do not run concurrently
        "floor_sequential_s": round(float(np.median(floor_seq_s)), 5),
        "naive_s": round(n50, 5) if n50 is not None else None,
        "analysis_over_floor": round(a50 / f50, 4),
        "naive_over_analysis": round(n50 / a50, 3) if n50 is not None else None,
        "studies_per_s": per_s,
        "floor_studies_per_s": floor_per_s,
        "batch_stages_s": batch_stages,  # stage seconds of the whole batch, median run
        "stream": stream,  # analyse_stream(): letterbox of batch n+1 while batch n is on the device
        "cpu_fp32_agreement": reference,
        "decode_overlap": overlap_result,
        "peak_rss_mb": round(peak_rss, 1),
        "worker_peak_rss_mb": worker_rss,
        "goals": goals,
        "load_avg_start": [round(v, 2) for v in load_start],
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def format_report(r: dict) -> str:
    lines = [
        f"cxr-node inference benchmark  {r['date']}  {r['image']} {r['image_shape'][0]}x{r['image_shape'][1]}",
        f"device {r['device']}  precision {r['precision']}  compiled {r['compiled']}  cuda graphs {r['cuda_graphs']}  input {r['input_size']} px  "
        f"torch {r['torch']} ({r['torch_threads']} threads)  load {r['load_avg_start'][0]} -> {r['load_avg_end'][0]}",
        "",
        f"{'stage (per study, batch 1)':<28}{'p50 s':>10}{'p95 s':>10}",
    ]
    for stage, s in r["stages_s"].items():
        lines.append(f"  {stage:<26}{s['p50']:>10.4f}{s['p95']:>10.4f}")
    lines += [
        "",
        f"analysis (models + CAMs)    {r['analysis_s_p50']:.4f} s p50",
        f"floor (2 bare forwards)     {r['floor_s']:.4f} s   analysis/floor = {r['analysis_over_floor']:.3f}",
    ]
    if r["naive_s"] is not None:
        lines.append(f"naive (autograd Grad-CAM)   {r['naive_s']:.4f} s   naive/analysis = {r['naive_over_analysis']:.2f}x")
    lines.append("studies/s by batch          " + "  ".join(f"b{b}: {v:.2f}" for b, v in r["studies_per_s"].items()))
    lines.append("floor studies/s by batch    " + "  ".join(f"b{b}: {v:.2f}" for b, v in r["floor_studies_per_s"].items()))
    if r.get("stream"):
        st = r["stream"]
        lines.append(f"stream of {st['batches']} batches of {st['batch']} (letterbox overlapping the models): "
                     f"{st['studies_per_s']:.2f} studies/s")
    for b, t in r.get("batch_stages_s", {}).items():
        lines.append(f"  batch {b:>4} stage s: " + "  ".join(
            f"{k} {t[k]:.4f}" for k in ("preprocess", "model_a", "model_b", "models", "cams", "total") if k in t))
    ref = r.get("cpu_fp32_agreement")
    if ref:
        lines.append(f"vs CPU fp32: max |dp| {ref['max_abs_prob_diff']:.2e}, CAM rel diff A {ref['cam_rel_diff'][0]:.2e} "
                     f"B {ref['cam_rel_diff'][1]:.2e}, same class {ref['same_class']} ({ref['precision']})")
    if r["decode_overlap"]:
        o = r["decode_overlap"]
        lines.append(
            f"decode+analysis of {o['studies']}: serial {o['serial_s']:.2f} s, overlapped {o['overlapped_s']:.2f} s "
            f"({o['speedup']:.2f}x)"
        )
    w = r["worker_peak_rss_mb"]
    lines.append(f"peak RSS: this process {r['peak_rss_mb']:.0f} MB; worker-like process {w.get('peak_mb', w) if w else '-'} MB")
    lines.append("goals: " + ", ".join(f"{k}: {'met' if v else ('not met' if v is False else 'n/a')}" for k, v in r["goals"].items()))
    return "\n".join(lines)
