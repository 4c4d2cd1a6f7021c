"""`cxr-node bench decode`: full versus reduced decoding, and CPU seconds per study, side by side.

One process, one image (pydicom-data RG1_J2KR.dcm: CR chest, JPEG 2000 lossless, 1955 x 1841;
`image=` takes another), the variants interleaved round by round so that the load of a shared
machine hits all of them alike; medians reported.

- decode: the decode pool's own function (dcmread + pixel decode + grey pipeline), wall and
  CPU seconds (time.process_time: every thread of this process), for
    full     - resolution None: today's path (pydicom + pylibjpeg-openjpeg, full resolution);
    serving  - Resolution.serving(input_size, sc_max_side): what the node decodes;
    model    - Resolution(input_size): the model alone (training without an SC would need no more);
  and the codec alone: pydicom's pixel_array versus libopenjp2 at resolution levels 0-3.
- per study (unless studies=0): decode + analysis (both models, CAMs) + SR/SC build and write,
  process_batch at batch 1 as the worker runs it, full versus serving; CPU seconds per study.
- throughput (throughput=N > 0): N studies end to end as the node's worker runs them: the decode
  pool (`workers` processes, at each variant's resolution) feeding process_batch in batches of
  `batch` (analysis on `device`, then SR/SC built and written in this process); studies/s.
  This is the figure to measure on a GPU host (deploy/gpu-decode-bench.sh).
- gpu_host_projection: the CPU work of a study that does not move to a GPU (decode, letterbox,
  SR/SC build) as measured here, and the studies/s that `cores` such cores could feed if that
  work scaled linearly. A projection from this machine, not a measurement on a GPU host
  (deploy/gpu-decode-bench.sh measures that).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

from cxr_node.benchmarks import goals
from cxr_node.results.sc_size import SC_MAX_SIDE

T = TypeVar("T")

GOALS = (
    goals.Goal(
        "decode_ge_10x_faster",
        ("decode", "serving", "speedup_wall"),
        ">=",
        10.0,
        "the node's decode of the image at least 10 x faster than today's full decode (issue 22)",
    ),
    goals.Goal(
        "cpu_per_study_le_0.5x",
        ("per_study", "cpu_ratio"),
        "<=",
        0.5,
        "CPU seconds per study (decode + analysis + SR/SC) at most half of today's (issue 22)",
    ),
)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 5)


def _measure(fn: Callable[[], T]) -> tuple[float, float, T]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def decode_variants(input_size: int, sc_max_side: int) -> dict:
    from cxr_node.decoding.reduced import Resolution

    return {"full": None, "serving": Resolution.serving(input_size, sc_max_side), "model": Resolution(input_size)}


def decode_phase(image: Path, repeats: int, variants: dict) -> dict:
    from cxr_node.decoding.pool import decode_file

    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    shapes: dict[str, list[int]] = {}
    for k, res in variants.items():  # warm-up: imports, library loading, first allocations
        shapes[k] = list(decode_file(image, res).image.shape)
    for _ in range(repeats):
        for k, res in variants.items():
            w, c, _ = _measure(partial(decode_file, image, res))
            wall[k].append(w)
            cpu[k].append(c)
    full_w, full_c = statistics.median(wall["full"]), statistics.median(cpu["full"])
    return {
        k: {
            "shape": shapes[k],
            "wall_s": _median(wall[k]),
            "cpu_s": _median(cpu[k]),
            "speedup_wall": round(full_w / statistics.median(wall[k]), 2),
            "speedup_cpu": round(full_c / statistics.median(cpu[k]), 2),
        }
        for k in variants
    }


def codec_phase(image: Path, repeats: int) -> dict | None:
    """The pixel decoder alone: pydicom's full decode versus libopenjp2 levels 0-3 (JPEG 2000 only)."""
    import pydicom
    from pydicom.encaps import get_frame

    from cxr_node.decoding import openjp2
    from cxr_node.decoding.reduced import J2K_SYNTAXES

    ds = pydicom.dcmread(image)
    if ds.file_meta.get("TransferSyntaxUID") not in J2K_SYNTAXES or not openjp2.available():
        return None
    frame = get_frame(ds.PixelData, 0, number_of_frames=int(ds.get("NumberOfFrames") or 1))

    def pydicom_full():
        return pydicom.dcmread(image).pixel_array

    runs: dict[str, Callable[[], object]] = {"pydicom full": pydicom_full}
    for level in range(4):
        runs[f"openjp2 1/{1 << level}"] = partial(openjp2.decode, frame, level)
    for fn in runs.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            wall[k].append(_measure(fn)[0])
    return {"libopenjp2": openjp2.version(), **{k: {"wall_s": _median(v)} for k, v in wall.items()}}


def _analyzer(models: Path | None, input_size: int, device: str):
    from cxr_node.analysis.bundle import load_bundle, untrained_bundle
    from cxr_node.analysis.engine import Analyzer

    bundle = load_bundle(models) if models else untrained_bundle(input_size)
    return bundle, Analyzer(bundle, device)


def per_study_phase(image: Path, variants: dict, studies: int, bundle, analyzer, sc_max_side: int):
    """CPU seconds of one study at batch 1 (decode, then process_batch: analysis + SR/SC build + write).

    Split by CPU time, not wall time (on a shared machine wall time mostly measures the others):
    decode; analysis (the same analyse() call once more on its own, outside the study's total);
    results = process_batch's CPU less that analysis (CAMs to the source grid, render, SR/SC, write).
    """
    from cxr_node.decoding.pool import decode_file
    from cxr_node.processing import process_batch
    from cxr_node.results.identity import ModelIdentity, NodeIdentity

    node, model = NodeIdentity("CXR_BENCH"), ModelIdentity.from_bundle(bundle)
    chosen = {k: v for k, v in variants.items() if k in ("full", "serving")}
    parts = ("total", "decode", "analysis", "results", "wall")
    got: dict[str, dict[str, list[float]]] = {k: {p: [] for p in parts} for k in chosen}
    stages: dict[str, dict[str, list[float]]] = {k: {} for k in chosen}
    with tempfile.TemporaryDirectory(prefix="cxr-decode-bench-") as tmp:

        def study(res, i: int) -> dict[str, float]:
            w_dec, c_dec, decoded = _measure(lambda: decode_file(image, res))
            _, c_an, _ = _measure(lambda: analyzer.analyse([decoded.image.pixels]))
            w_pb, c_pb, outcomes = _measure(
                lambda: process_batch(
                    [image],
                    analyzer,
                    node,
                    model,
                    lambda _i, _h: Path(tmp) / str(i),
                    None,
                    decoded=[decoded],
                    max_side=sc_max_side,
                )
            )
            (outcome,) = outcomes
            if not outcome.ok:
                raise RuntimeError(f"the benchmark study failed: {outcome.error}")
            for name, v in outcome.timings.items():
                stages_now[name] = v
            return {
                "total": c_dec + c_pb,
                "decode": c_dec,
                "analysis": c_an,
                "results": max(0.0, c_pb - c_an),
                "wall": w_dec + w_pb,
            }

        stages_now: dict[str, float] = {}
        for res in chosen.values():  # warm-up
            study(res, -1)
        for i in range(studies):
            for k, res in chosen.items():
                stages_now.clear()
                for part, v in study(res, i).items():
                    got[k][part].append(v)
                for name, v in stages_now.items():
                    stages[k].setdefault(name, []).append(v)
    out: dict = {
        k: {
            "cpu_s": _median(got[k]["total"]),
            "cpu_s_parts": {p: _median(got[k][p]) for p in ("decode", "analysis", "results")},
            "wall_s": _median(got[k]["wall"]),
            "stages_wall_s": {n: _median(v) for n, v in stages[k].items()},
        }
        for k in chosen
    }
    out["cpu_ratio"] = round(out["serving"]["cpu_s"] / out["full"]["cpu_s"], 3)
    out["wall_ratio"] = round(out["serving"]["wall_s"] / out["full"]["wall_s"], 3)
    out["input_size"] = bundle.input_size
    out["torch_threads"] = _torch_threads()
    return out


def throughput_phase(
    image: Path, variants: dict, studies: int, batch: int, workers: int, bundle, analyzer, sc_max_side: int
) -> dict:
    """Studies/s end to end: decode pool -> process_batch (analysis + SR/SC build + write), as the worker runs."""
    from collections import deque

    from cxr_node.decoding.pool import DecodePool, decoder_for
    from cxr_node.processing import process_batch
    from cxr_node.results.identity import ModelIdentity, NodeIdentity

    node, model = NodeIdentity("CXR_BENCH"), ModelIdentity.from_bundle(bundle)
    out: dict = {"studies": studies, "batch": batch, "decode_workers": workers, "device": str(analyzer.device)}
    for k in ("full", "serving"):
        with (
            tempfile.TemporaryDirectory(prefix="cxr-throughput-") as tmp,
            DecodePool(workers, kind="process", decode=decoder_for(variants[k])) as pool,
        ):
            pool.warm_up()
            pending: deque = deque()
            todo, done, failed = studies, 0, 0
            t0, c0 = time.perf_counter(), time.process_time()
            while todo or pending:
                while todo and len(pending) < 2 * max(batch, workers):  # keep the pool ahead of the device
                    pending.append(pool.submit(image))
                    todo -= 1
                futures = [pending.popleft() for _ in range(min(batch, len(pending)))]
                got = []
                for f in futures:
                    try:
                        got.append(f.result())
                    except Exception as exc:
                        got.append(exc)
                outcomes = process_batch(
                    [image] * len(got),
                    analyzer,
                    node,
                    model,
                    partial(_numbered_dir, Path(tmp), done),
                    None,
                    decoded=got,
                    max_side=sc_max_side,
                )
                done += len(outcomes)
                failed += sum(not o.ok for o in outcomes)
            wall, cpu_main = time.perf_counter() - t0, time.process_time() - c0
        out[k] = {
            "wall_s": round(wall, 3),
            "studies_per_s": round(studies / wall, 2),
            "main_process_cpu_s_per_study": round(cpu_main / studies, 4),
            "failed": failed,
        }
    return out


def _numbered_dir(root: Path, base: int, index: int, _header) -> Path:
    return root / str(base + index)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def gpu_host_projection(decode: dict, per_study: dict | None, cores: int) -> dict:
    """CPU seconds per study that stay on the CPU with a GPU doing the models, and what `cores` feed.

    decode + results (SR/SC) CPU seconds + the letterbox (single-threaded: its wall time), spread
    over `cores` with no other limit: an upper bound, reached only when the SR/SC build runs on as
    many cores as decoding does (the worker builds them in its one process today).
    """
    out: dict = {"cores": cores, "kind": "projection from this machine's measurements, not a GPU-host measurement"}
    for k in ("full", "serving"):
        cpu = decode[k]["cpu_s"]
        if per_study is not None:
            cpu += per_study[k]["cpu_s_parts"]["results"] + per_study[k]["stages_wall_s"].get("preprocess", 0.0)
        out[k] = {"cpu_s_per_study": round(cpu, 4), "studies_per_s": round(cores / cpu, 1)}
        out[k]["decode_only_studies_per_s"] = round(cores / decode[k]["cpu_s"], 1)
    return out


def run_decode_bench(
    *,
    image: Path | None = None,
    repeats: int = 5,
    studies: int = 5,
    models: Path | None = None,
    input_size: int = 224,
    sc_max_side: int = SC_MAX_SIDE,
    cores: int = 16,
    throughput: int = 0,
    batch: int = 4,
    workers: int | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> dict:
    from cxr_node.benchmarks.inference import bench_image

    say = progress or (lambda m: None)
    image = Path(image) if image else bench_image()
    if models:
        from cxr_node.analysis.bundle import load_bundle

        input_size = load_bundle(models).input_size
    load_start, started = os.getloadavg(), time.perf_counter()
    variants = decode_variants(input_size, sc_max_side)
    say(f"decode x{repeats}: full, serving, model")
    decode = decode_phase(image, repeats, variants)
    say(f"codec alone x{repeats}")
    codec = codec_phase(image, repeats)
    per_study = flow = None
    if studies > 0 or throughput > 0:
        bundle, analyzer = _analyzer(models, input_size, device)
        if studies > 0:
            say(f"{studies} studies: decode + analysis + SR/SC, full and serving")
            per_study = per_study_phase(image, variants, studies, bundle, analyzer, sc_max_side)
        if throughput > 0:
            n_workers = workers or max(1, (os.cpu_count() or 2) - 1)
            say(f"throughput: {throughput} studies, batch {batch}, {n_workers} decode processes, full and serving")
            flow = throughput_phase(image, variants, throughput, batch, n_workers, bundle, analyzer, sc_max_side)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "image": image.name,
        "input_size": input_size,
        "sc_max_side": sc_max_side,
        "repeats": repeats,
        "studies": studies,
        "decode": decode,
        "codec": codec,
        "per_study": per_study,
        "throughput": flow,
        "gpu_host_projection": gpu_host_projection(decode, per_study, cores),
        "cpu_count": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    result["goals"] = goals.check(result, GOALS)
    result["load_avg_start"] = [round(v, 2) for v in load_start]
    result["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def report(r: dict) -> str:
    lines = [f"{r['image']}  model input {r['input_size']} px, SC {r['sc_max_side']} px  ({r['date']})", "decode:"]
    for k, v in r["decode"].items():
        shape = "x".join(map(str, v["shape"]))
        lines.append(
            f"  {k:<8} {shape:>10}  wall {v['wall_s']:.3f} s  cpu {v['cpu_s']:.3f} s  "
            f"x{v['speedup_wall']:.1f} wall  x{v['speedup_cpu']:.1f} cpu"
        )
    if r["codec"]:
        lines.append(f"codec alone (libopenjp2 {r['codec']['libopenjp2']}):")
        lines += [f"  {k:<14} {v['wall_s']:.3f} s" for k, v in r["codec"].items() if isinstance(v, dict)]
    ps = r["per_study"]
    if ps:
        lines.append(f"per study (decode + analysis + SR/SC, torch {ps['torch_threads']} threads):")
        for k in ("full", "serving"):
            st = "  ".join(f"{n} {v:.3f}" for n, v in ps[k]["stages_wall_s"].items())
            parts = "  ".join(f"{n} {v:.3f}" for n, v in ps[k]["cpu_s_parts"].items())
            lines.append(f"  {k:<8} cpu {ps[k]['cpu_s']:.3f} s ({parts})  wall {ps[k]['wall_s']:.3f} s   [wall: {st}]")
        lines.append(f"  cpu ratio {ps['cpu_ratio']}  wall ratio {ps['wall_ratio']}")
    tp = r.get("throughput")
    if tp:
        lines.append(
            f"throughput ({tp['studies']} studies, batch {tp['batch']}, {tp['decode_workers']} decode processes, {tp['device']}):"
        )
        for k in ("full", "serving"):
            v = tp[k]
            lines.append(
                f"  {k:<8} {v['studies_per_s']} studies/s  ({v['wall_s']} s; main process "
                f"{v['main_process_cpu_s_per_study']} CPU s/study; {v['failed']} failed)"
            )
    pr = r["gpu_host_projection"]
    lines.append(f"GPU host, {pr['cores']} cores ({pr['kind']}):")
    for k in ("full", "serving"):
        lines.append(
            f"  {k:<8} {pr[k]['cpu_s_per_study']:.3f} CPU s/study -> {pr[k]['studies_per_s']} studies/s "
            f"(decode alone: {pr[k]['decode_only_studies_per_s']} studies/s)"
        )
    lines.append(f"goals: {r['goals']}")
    lines.append(f"{r['cpu_count']} CPUs {r['machine']}, load average {r['load_avg_start']} -> {r['load_avg_end']}")
    return "\n".join(lines)


__all__ = ["GOALS", "report", "run_decode_bench"]
