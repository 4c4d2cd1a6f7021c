"""`cxr-node bench train`: training throughput of the real training code, and what it means for
the full protocol.

It runs N copies of model A's training (repetition 1's split, seeds seed..seed+N-1) as
`run.parallel` = N processes on one device for a few epochs, through the very `fit` and
process runner that `cxr-node train` uses, then reports
  * per process: images/s in the first epoch (warm-up: upload, graph capture or compilation)
    and in the later ones (steady), validation images/s, peak device memory;
  * in aggregate: the sum of the steady per-process rates (all N run side by side then), and
    all training images over the wall time of the whole concurrent section (start-up included);
  * the projected wall time of the full protocol (optim.epochs x run.repetitions, models A and
    B, at the data set's split sizes): each training lasts epochs x (train images / steady
    rate + validation images / validation rate) plus its warm-up, and the trainings are packed
    longest first onto N slots. The rate measured with N processes busy is kept to the end, so
    the tail (fewer than N left) is projected on the slow side. Decoding is measured and listed
    apart; start-up, test scoring, Grad-CAM and the report are not included.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from cxr_node.analysis.architectures import DEFAULT_ARCH
from training.config import TrainConfig
from training.data import load_data
from training.distributed import DistEnv


def _device(request: str) -> torch.device:
    if request.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {request}: CUDA is not available")
        device = torch.device(request)
        return torch.device("cuda", torch.cuda.current_device()) if device.index is None else device
    if request != "cpu":
        raise RuntimeError(f"--device {request!r}: expected cpu, cuda or cuda:N")
    return torch.device("cpu")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {os.cpu_count()} logical cores"


def makespan(durations: list[float], slots: int) -> float:
    """Longest-first packing of independent jobs onto `slots` parallel workers."""
    free = [0.0] * max(1, slots)
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(free, free[0] + d)
    return max(free)


class _Rates(TypedDict):
    first_epoch_images_per_second: float
    steady_images_per_second: float
    validation_images_per_second: float | None
    first_epoch_seconds: float
    device_memory_peak_bytes: int | None


def _rates(history: list[dict], n_val: int) -> _Rates:
    first, later = history[0], history[1:] or history[:1]
    steady = sum(h["train_images"] for h in later) / sum(h["train_seconds"] for h in later)
    val_seconds = [h["val_seconds"] for h in later if h.get("val_seconds")]
    return {
        "first_epoch_images_per_second": first["train_images"] / first["train_seconds"],
        "steady_images_per_second": steady,
        "validation_images_per_second": n_val / float(np.mean(val_seconds)) if val_seconds and n_val else None,
        "first_epoch_seconds": first["train_seconds"],
        "device_memory_peak_bytes": max((h.get("device_memory_peak_bytes", 0) for h in history), default=0) or None,
    }


def concurrent_rate(histories: list[list[dict]]) -> tuple[float, float] | None:
    """(images/s, seconds): every process's last epoch, images over the wall-clock span from the
    first of them starting to the last ending. Start-up staggers the processes, so their steady
    epochs need not overlap; the sum of per-process rates then counts a process that ran
    partly alone at its uncontended speed (seen on an H200: 43 vs 26 images/s). None for
    histories without wall-clock stamps (checkpoints of older runs)."""
    last = [hs[-1] for hs in histories if hs]
    if not last or any("train_start_unix_seconds" not in h for h in last):
        return None
    span = max(h["train_end_unix_seconds"] for h in last) - min(h["train_start_unix_seconds"] for h in last)
    return (sum(h["train_images"] for h in last) / span, span) if span > 0 else None


def run_train_bench(
    *,
    cfg: TrainConfig,
    data_dir: Path | None,
    device_request: str,
    parallel: int,
    epochs: int,
    images: int,
    workdir: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from training.fast import ENGINE
    from training.pipeline import Context, plan_repetition
    from training.splits import hash_all, near_duplicates
    from training.synthetic import write_synthetic

    device = _device(device_request)
    full_epochs, reps = cfg.optim.epochs, cfg.run.repetitions
    bench_cfg = dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, parallel=parallel, device=str(device)),
        model=dataclasses.replace(cfg.model, init="scratch"),  # the speed does not depend on the start weights
        optim=dataclasses.replace(cfg.optim, epochs=epochs, warmup_epochs=min(cfg.optim.warmup_epochs, epochs - 1)),
    )
    t0 = time.perf_counter()
    if data_dir is None:
        data_dir = write_synthetic(
            workdir / "synthetic",
            patients_per_label=max(4, images // 3),
            images_per_patient=2,
            size=max(64, cfg.data.input_size),
        )
    data = load_data(
        data_dir,
        cfg.data.input_size,
        skip_bad_rows=True,
        subset=cfg.data.subset,
        seed=cfg.run.seed,
        threads=max(1, cfg.run.num_workers),
        log=log,
    )
    decode_seconds = time.perf_counter() - t0
    pairs = near_duplicates(hash_all(data.squares), cfg.split.near_duplicate_bits)
    ctx = Context(cfg, data, workdir, DistEnv(), device, None, "bench", log, None, pairs)
    plans = [plan_repetition(ctx, r) for r in range(reps)]

    template = plans[0].jobs["A"]
    n_train = min(len(template.train_idx), images) if images else len(template.train_idx)
    # a seeded random subset (the indices are sorted by image, i.e. often by source and label)
    keep = np.sort(np.random.default_rng(cfg.run.seed).permutation(len(template.train_idx))[:n_train])
    jobs = [
        dataclasses.replace(
            template,
            rep=k,
            seed=template.seed + k,
            train_idx=template.train_idx[keep],
            train_targets=template.train_targets[keep],
            ckpt_stem=workdir / "checkpoints" / f"bench{k}",
        )
        for k in range(parallel)
    ]
    (workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
    log(
        f"bench train: {parallel} {'trainings grouped' if cfg.run.parallel_mode == 'grouped' else 'process(es)'} x {epochs} epoch(s) of model A ({cfg.model.arch}), {n_train} training / "
        f"{len(template.val_idx)} validation images at {cfg.data.input_size} px, batch {cfg.optim.batch_size}, "
        f"on {_device_name(device)}"
    )
    t1 = time.perf_counter()
    ENGINE.side_by_side(
        jobs,
        cfg=bench_cfg,
        squares=data.squares,
        workdir=workdir / "checkpoints",
        weights=None,
        device=device,
        fingerprint="bench",
        log=log,
        log_path=workdir / "bench.log",
    )
    wall = time.perf_counter() - t1
    histories = [torch.load(j.final_path, map_location="cpu", weights_only=False)["history"] for j in jobs]

    per_process = [_rates(h, len(template.val_idx)) for h in histories]
    steady = [p["steady_images_per_second"] for p in per_process]
    val_rates = [p["validation_images_per_second"] for p in per_process if p["validation_images_per_second"]]
    val_rate = float(np.mean(val_rates)) if val_rates else None
    concurrent = concurrent_rate(histories)
    # per slot: the lower of the mean steady rate and the all-side-by-side rate over N
    rate = min(float(np.mean(steady)), concurrent[0] / parallel) if concurrent else float(np.mean(steady))
    warmup = float(
        np.mean(
            [
                p["first_epoch_seconds"]
                - p["first_epoch_seconds"] * p["first_epoch_images_per_second"] / p["steady_images_per_second"]
                for p in per_process
            ]
        )
    )

    durations: list[float] = []
    sizes: list[dict[str, Any]] = []
    for plan in plans:
        for key, job in plan.jobs.items():
            n_t, n_v = len(job.train_idx), len(job.val_idx)
            per_epoch = n_t / rate + (n_v / val_rate if val_rate else 0.0)
            durations.append(full_epochs * per_epoch + max(0.0, warmup))
            sizes.append({"repetition": plan.rep + 1, "model": key, "train": n_t, "val": n_v})
    train_images_total = sum(full_epochs * s["train"] for s in sizes)
    projected = makespan(durations, parallel)
    return {
        "format": "cxr-node-bench-train/1",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "device": str(device),
            "device_name": _device_name(device),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "arch": cfg.model.arch,
            "parallel": parallel,
            "parallel_mode": cfg.run.parallel_mode,
            "grouped_pointwise": cfg.run.grouped_pointwise,
            "channels_last": cfg.run.channels_last,
            "epochs": epochs,
            "training_images_per_process": n_train,
            "validation_images": len(template.val_idx),
            "input_size": cfg.data.input_size,
            "batch_size": cfg.optim.batch_size,
            "step": cfg.run.step,
            "pipeline": cfg.data.pipeline,
            "amp": cfg.run.amp,
            "deterministic": cfg.run.deterministic,
            "data": str(data_dir),
            "images": len(data.samples),
        },
        "per_process": per_process,
        "aggregate": {
            "steady_images_per_second": float(np.sum(steady)),
            "concurrent_images_per_second": concurrent[0] if concurrent else None,
            "concurrent_span_seconds": concurrent[1] if concurrent else None,
            "projection_images_per_second_per_process": rate,
            "wall_images_per_second": sum(h["train_images"] for hs in histories for h in hs) / wall,
            "wall_seconds": wall,
        },
        "decode_seconds": decode_seconds,
        "projection": {
            "epochs": full_epochs,
            "repetitions": reps,
            "parallel": parallel,
            "trainings": sizes,
            "training_images": train_images_total,
            "wall_seconds": projected,
            "needed_images_per_second_for_20_min": train_images_total / 1200.0,
        },
    }


def _how(s: dict[str, Any]) -> str:
    if s.get("parallel_mode") != "grouped":
        return "process(es)"
    layout = "channels-last" if s.get("channels_last") else "NCHW"
    return f"trainings grouped in one network (1x1 as {s.get('grouped_pointwise')}, {layout})"


def format_report(r: dict[str, Any]) -> str:
    s, a, p = r["settings"], r["aggregate"], r["projection"]
    gib = 1024**3
    lines = [
        f"bench train on {r['machine']['device_name']} ({r['created']}, torch {r['machine']['torch']}): "
        f"{s['parallel']} {_how(s)}"
        f" x {s['epochs']} epoch(s) of {s.get('arch', DEFAULT_ARCH)}, {s['training_images_per_process']} training "
        f"images each at {s['input_size']} px, batch {s['batch_size']}, step {s['step']}, "
        f"input path {s['pipeline']}, amp {s['amp']}, deterministic {s['deterministic']}"
    ]
    for k, pp in enumerate(r["per_process"]):
        mem = pp["device_memory_peak_bytes"]
        val = pp["validation_images_per_second"]
        lines.append(
            f"  process {k + 1}: first epoch {pp['first_epoch_images_per_second']:.1f} images/s, "
            f"then {pp['steady_images_per_second']:.1f} images/s; validation "
            f"{'n/a' if val is None else f'{val:.1f}'} images/s; device memory peak "
            f"{'n/a (CPU)' if mem is None else f'{mem / gib:.2f} GiB'}"
        )
    if a.get("concurrent_images_per_second"):
        lines.append(
            f"  aggregate: {a['concurrent_images_per_second']:.1f} images/s over the "
            f"{a['concurrent_span_seconds']:.1f} s span of the processes' last epochs (all side by side; "
            f"the projection uses {a['projection_images_per_second_per_process']:.1f} images/s per process)"
        )
    lines += [
        f"  aggregate: {a['steady_images_per_second']:.1f} images/s steady (sum of the per-process rates), "
        f"{a['wall_images_per_second']:.1f} images/s over the {a['wall_seconds']:.0f} s wall time (start-up included)",
        f"  decoding + letterboxing {s['images']} images: {r['decode_seconds']:.1f} s",
        f"  projected full protocol ({p['epochs']} epochs x {p['repetitions']} repetitions, A and B: "
        f"{p['training_images']:,} training images) with run.parallel = {p['parallel']}: "
        f"{p['wall_seconds'] / 60:.1f} min of training + validation "
        f"(20 min needs {p['needed_images_per_second_for_20_min']:.0f} images/s in aggregate)",
    ]
    if "profile" in r:
        q = r["profile"]
        lines.append(
            f"  profile of one process ({q['mode']}, {q['models_per_step']} model(s) per step, {q['steps']} steps): "
            f"{q['uninstrumented_wall_ms_per_step']:.1f} ms per step ({q['images_per_second']:.1f} images/s alone); "
            f"under the profiler {q['wall_ms_per_step']:.1f} ms, device busy {q['device_busy_ms_per_step']:.1f} ms "
            f"({q['device_busy_fraction']:.0%})"
        )
    return "\n".join(lines)


def profile_steps(cfg: TrainConfig, device_request: str, steps: int, parallel: int = 1) -> tuple[dict[str, Any], str]:
    """Where one training step's time goes: `steps` steps of random data at the config's
    batch, input size and step form (with run.parallel_mode = "grouped": the grouped network of
    `parallel` models); warm-up steps (capture, compilation) are neither timed nor profiled.
    The same steps are timed once without the profiler (its tracing slows replays down)."""
    from torch.profiler import ProfilerActivity, profile

    from cxr_node.analysis.models import build_model
    from training.determinism import apply_determinism
    from training.fast.grouped import GroupedDenseNet
    from training.fast.grouped_fit import grouped_objective
    from training.fast.step import make_step

    device = _device(device_request)
    apply_determinism(cfg.run.deterministic)
    torch.manual_seed(0)
    fmt = torch.channels_last if cfg.run.channels_last and device.type == "cuda" else torch.preserve_format
    b, s = cfg.optim.batch_size, cfg.data.input_size
    grouped = cfg.run.parallel_mode == "grouped" and parallel > 1
    n = parallel if grouped else 1
    model = (
        GroupedDenseNet([build_model(None, arch=cfg.model.arch) for _ in range(n)], cfg.run.grouped_pointwise)
        if grouped
        else build_model(None, arch=cfg.model.arch)
    ).to(device)
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
    )
    objective = grouped_objective(cfg.optim.label_smoothing) if grouped else None
    step, _ = make_step(model, opt, cfg, device, log=lambda m: None, label="profile", objective=objective)
    mode = step.mode
    if grouped:
        x = torch.randn(n, b, 3, s, s, device=device)
        y = torch.randint(0, 2, (n, b), device=device)
    else:
        x = torch.randn(b, 3, s, s, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 2, (b,), device=device)
    for _ in range(5):
        step(x, y)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync()
    plain = (time.perf_counter() - t0) / steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(x, y)
        sync()
    wall = (time.perf_counter() - t0) / steps
    events = prof.key_averages()
    if device.type == "cuda":
        busy = sum(e.self_device_time_total for e in events) / 1e6 / steps
        sort = "self_device_time_total"
    else:
        busy = sum(e.self_cpu_time_total for e in events) / 1e6 / steps
        sort = "self_cpu_time_total"
    result = {
        "mode": mode,
        "models_per_step": n,
        "grouped_pointwise": cfg.run.grouped_pointwise if grouped else None,
        "batch": b,
        "input_size": s,
        "steps": steps,
        "wall_ms_per_step": wall * 1e3,
        "uninstrumented_wall_ms_per_step": plain * 1e3,
        "device_busy_ms_per_step": busy * 1e3,
        "device_busy_fraction": min(1.0, busy / wall),
        "images_per_second": n * b / plain,
    }
    return result, events.table(sort_by=sort, row_limit=25)
