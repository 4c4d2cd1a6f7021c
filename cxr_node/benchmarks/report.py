"""The text report of `cxr-node bench inference` (the JSON is the full result)."""

from __future__ import annotations

BATCH_STAGES = ("preprocess", "model_a", "model_b", "models", "cams", "total")


def _header(r: dict) -> list[str]:
    return [
        f"cxr-node inference benchmark  {r['date']}  {r['image']} {r['image_shape'][0]}x{r['image_shape'][1]}",
        f"device {r['device']}  precision {r['precision']}  compiled {r['compiled']}  cuda graphs {r['cuda_graphs']}  "
        f"input {r['input_size']} px  torch {r['torch']} ({r['torch_threads']} threads)  "
        f"load {r['load_avg_start'][0]} -> {r['load_avg_end'][0]}",
        "",
        f"{'stage (per study, batch 1)':<28}{'p50 s':>10}{'p95 s':>10}",
        *(f"  {stage:<26}{s['p50']:>10.4f}{s['p95']:>10.4f}" for stage, s in r["stages_s"].items()),
    ]


def _speed(r: dict) -> list[str]:
    lines = [
        "",
        f"analysis (models + CAMs)    {r['analysis_s_p50']:.4f} s p50",
        f"floor (2 bare forwards)     {r['floor_s']:.4f} s   analysis/floor = {r['analysis_over_floor']:.3f}",
    ]
    if r["naive_s"] is not None:
        lines.append(
            f"naive (autograd Grad-CAM)   {r['naive_s']:.4f} s   naive/analysis = {r['naive_over_analysis']:.2f}x"
        )
    lines.append("studies/s by batch          " + "  ".join(f"b{b}: {v:.2f}" for b, v in r["studies_per_s"].items()))
    lines.append(
        "floor studies/s by batch    " + "  ".join(f"b{b}: {v:.2f}" for b, v in r["floor_studies_per_s"].items())
    )
    if r.get("stream"):
        st = r["stream"]
        lines.append(
            f"stream of {st['batches']} batches of {st['batch']} (letterbox overlapping the models): "
            f"{st['studies_per_s']:.2f} studies/s"
        )
    for b, t in r.get("batch_stages_s", {}).items():
        lines.append(f"  batch {b:>4} stage s: " + "  ".join(f"{k} {t[k]:.4f}" for k in BATCH_STAGES if k in t))
    return lines


def _rest(r: dict) -> list[str]:
    lines = []
    ref = r.get("cpu_fp32_agreement")
    if ref:
        lines.append(
            f"vs CPU fp32: max |dp| {ref['max_abs_prob_diff']:.2e}, CAM rel diff A {ref['cam_rel_diff'][0]:.2e} "
            f"B {ref['cam_rel_diff'][1]:.2e}, same class {ref['same_class']} ({ref['precision']})"
        )
    if r["decode_overlap"]:
        o = r["decode_overlap"]
        lines.append(
            f"decode+analysis of {o['studies']}: serial {o['serial_s']:.2f} s, overlapped {o['overlapped_s']:.2f} s "
            f"({o['speedup']:.2f}x)"
        )
    w = r["worker_peak_rss_mb"]
    worker = w.get("peak_mb", w) if w else "-"
    lines.append(f"peak RSS: this process {r['peak_rss_mb']:.0f} MB; worker-like process {worker} MB")
    verdicts = {True: "met", False: "not met", None: "n/a"}
    lines.append("goals: " + ", ".join(f"{k}: {verdicts[v]}" for k, v in r["goals"].items()))
    return lines


def format_report(r: dict) -> str:
    return "\n".join(_header(r) + _speed(r) + _rest(r))


__all__ = ["format_report"]
