"""`cxr-node evaluate`: a bundle's metrics on any labelled set (e.g. an external test set).

Probabilities come from the runtime's Analyzer, i.e. exactly what `serve`/`infer` would
compute; the metrics are the ones training reports for its test splits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cxr_node.analysis.bundle import load_bundle
from cxr_node.analysis.engine import Analyzer
from cxr_node.dicom.pixels import PixelDataError, read_image
from cxr_node.dicom.reduced_decode import Resolution
from training.data import BadRow, DataError, Sample, read_samples, refuse_or_skip
from training.metrics import binary_metrics, joint_metrics, target_a, target_b, write_predictions


def evaluate(
    bundle_dir: str | Path,
    data_dir: str | Path,
    *,
    labels_csv: str | Path | None = None,
    skip_bad_rows: bool = False,
    device: str = "auto",
    batch_size: int = 16,
    predictions_csv: str | Path | None = None,
    progress: Callable | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    bundle = load_bundle(bundle_dir)
    samples, bad = read_samples(data_dir, labels_csv)
    analyzer = Analyzer(bundle, device=device)
    resolution = Resolution.serving(bundle.input_size)  # the pixels a node decodes
    kept_samples: list[Sample] = []
    label_list: list[str] = []
    p_abn_list: list[float] = []
    p_cov_list: list[float] = []
    batches = range(0, len(samples), batch_size)
    for start in progress(batches, desc="evaluating", unit="batch") if progress else batches:
        images, kept = [], []
        for s in samples[start : start + batch_size]:
            try:
                images.append(read_image(s.image, resolution).pixels)
                kept.append(s)
            except (PixelDataError, FileNotFoundError, ValueError, OSError) as exc:
                bad.append(BadRow(s.source, s.line, f"unreadable image: {exc}"))
        if bad and not skip_bad_rows:
            continue  # keep reading to list every bad row, but stop spending time on the models
        for s, a in zip(kept, analyzer.analyse(images), strict=True):
            kept_samples.append(s)
            label_list.append(s.label)
            p_abn_list.append(a.result.p_abnormal)
            p_cov_list.append(a.result.p_covid)
    refuse_or_skip(sorted(bad, key=lambda b: b.line), skip_bad_rows, log)
    if not label_list:
        raise DataError(f"{data_dir}: no usable images")
    labels, p_abn, p_cov = np.array(label_list), np.array(p_abn_list), np.array(p_cov_list)
    out = joint_metrics(labels, p_abn, p_cov, bundle.thresholds)
    if predictions_csv is not None:
        write_predictions(Path(predictions_csv), kept_samples, p_abn, p_cov, bundle.thresholds)
    out.update(
        bundle={
            "name": bundle.name,
            "version": bundle.version,
            "path": str(bundle_dir),
            "input_size": bundle.input_size,
            "sha256": bundle.sha256,
        },
        data=str(data_dir),
        bad_rows_skipped=[str(b) for b in bad],
        model_a=binary_metrics(target_a(labels), p_abn, "A"),
        model_b=binary_metrics(target_b(labels), p_cov, "B"),
    )
    return out


def format_summary(m: dict[str, Any]) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.4f}"

    lines = [
        f"bundle {m['bundle']['name']} {m['bundle']['version']} on {m['data']}: {m['n']} images {m['counts']}",
        f"joint 3-class: accuracy {f(m['accuracy'])}, balanced accuracy {f(m['balanced_accuracy'])} "
        f"(thresholds a={m['thresholds']['a']}, b={m['thresholds']['b']})",
        f"model A: accuracy {f(m['model_a']['accuracy'])}, AUC {f(m['auc_a'])}; "
        f"model B: accuracy {f(m['model_b']['accuracy'])}, AUC {f(m['auc_b'])}",
        "class          precision  recall  f1      support",
    ]
    for c, v in m["per_class"].items():
        lines.append(f"{c:<14} {v['precision']:.4f}     {v['recall']:.4f}  {v['f1']:.4f}  {v['support']}")
    labels, matrix = m["confusion_matrix"]["labels"], m["confusion_matrix"]["matrix"]
    lines.append("confusion (rows truth, columns predicted " + " / ".join(labels) + "):")
    lines += ["  " + " ".join(f"{v:5d}" for v in row) for row in matrix]
    return "\n".join(lines)
