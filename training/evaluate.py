"""`cxr-node evaluate`: a bundle's metrics on any labelled set (e.g. an external test set).

Probabilities come from the runtime's Analyzer, i.e. exactly what `serve`/`infer` would
compute; the metrics are the ones training reports for its test splits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cxr_node.analysis.bundle import Bundle, load_bundle
from cxr_node.analysis.domain import flagged_summary
from cxr_node.analysis.engine import Analyzer
from cxr_node.decoding.pixels import PixelDataError, read_image
from cxr_node.decoding.reduced import Resolution
from training.data import MANIFEST, BadRow, DataError, Sample, _rows, read_samples, refuse_or_skip
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
    distances: list[float] = []
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
            if a.domain is not None:
                distances.append(a.domain.distance)
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
        # the metrics above count every image; this says how many the node would have left unclassified
        out_of_domain=_domain_rate(bundle, np.array(distances)),
    )
    return out


def _domain_rate(bundle: Bundle, distances: np.ndarray) -> dict[str, Any]:
    if bundle.domain is None:
        return {"checked": False, "status": bundle.domain_status}
    return {
        "checked": True,
        "threshold": bundle.domain.threshold,
        **flagged_summary(distances, bundle.domain.threshold),
    }


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def _domain_items(folder: Path) -> tuple[list[tuple[Path, str, str, int]], list[BadRow]]:
    """(file, name, kind, line) from manifest.csv (column `image`, optional `kind`), else every
    PNG/JPEG/.dcm file below the folder (kind "-")."""
    if not (folder / MANIFEST).is_file():
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [(p, str(p.relative_to(folder)), "-", 0) for p in files], []
    items, bad = [], []
    for line, row in _rows(folder / MANIFEST, ("image",)):
        path = folder / row["image"]
        if not row["image"] or not path.is_file():
            bad.append(BadRow(MANIFEST, line, f"image file {row['image']!r} does not exist"))
            continue
        items.append((path, row["image"], row.get("kind") or "-", line))
    return items, bad


def evaluate_domain(
    bundle_dir: str | Path,
    data_dir: str | Path,
    *,
    skip_bad_rows: bool = False,
    device: str = "auto",
    batch_size: int = 16,
    predictions_csv: str | Path | None = None,
    progress: Callable | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """The out-of-domain rate of a bundle on any folder of images (no labels needed): how many the
    node would leave without a class, overall and per `kind` column of manifest.csv."""
    import csv

    bundle = load_bundle(bundle_dir)
    if bundle.domain is None:
        raise DataError(f"{bundle_dir}: {bundle.domain_status}")
    items, bad = _domain_items(Path(data_dir))
    analyzer = Analyzer(bundle, device=device)
    resolution = Resolution.serving(bundle.input_size)  # the pixels a node decodes
    rows: list[tuple[str, str, float, str]] = []
    batches = range(0, len(items), batch_size)
    for start in progress(batches, desc="scoring", unit="batch") if progress else batches:
        images, kept = [], []
        for path, name, kind, line in items[start : start + batch_size]:
            try:
                images.append(read_image(path, resolution).pixels)
                kept.append((name, kind))
            except (PixelDataError, ValueError, OSError) as exc:
                bad.append(BadRow(MANIFEST if line else str(path), line, f"unreadable image: {exc}"))
        if bad and not skip_bad_rows:
            continue
        for (name, kind), a in zip(kept, analyzer.analyse(images) if images else [], strict=True):
            assert a.domain is not None  # the bundle has statistics and the check is on
            rows.append((name, kind, a.domain.distance, a.domain.layer))
    refuse_or_skip(sorted(bad, key=lambda b: b.line), skip_bad_rows, log)
    if not rows:
        raise DataError(f"{data_dir}: no usable images")
    t = bundle.domain.threshold
    dist = np.array([r[2] for r in rows])
    kinds = sorted({r[1] for r in rows})
    out: dict[str, Any] = {
        "bundle": {"name": bundle.name, "version": bundle.version, "path": str(bundle_dir)},
        "data": str(data_dir),
        "threshold": t,
        **flagged_summary(dist, t),
        "per_kind": {k: flagged_summary(np.array([r[2] for r in rows if r[1] == k]), t) for k in kinds},
        "bad_rows_skipped": [str(b) for b in bad],
    }
    if predictions_csv is not None:
        with open(predictions_csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "kind", "distance", "layer", "threshold", "outside"])
            for name, kind, d, layer in rows:
                w.writerow([name, kind, f"{d:.4f}", layer, f"{t:.4f}", int(d > t)])
    return out


def format_domain_summary(m: dict[str, Any]) -> str:
    def line(name: str, r: dict[str, Any]) -> str:
        return f"{name:<24} {r['flagged']:>5} of {r['n']:<5} flagged ({100 * r['rate']:.1f} %)"

    lines = [
        f"bundle {m['bundle']['name']} {m['bundle']['version']} on {m['data']}: "
        f"out-of-domain threshold {m['threshold']:.3f}",
        line("all images", m),
    ]
    lines += [line(kind, r) for kind, r in m["per_kind"].items() if len(m["per_kind"]) > 1 or kind != "-"]
    return "\n".join(lines)


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
    ood = m.get("out_of_domain", {})
    if ood.get("checked"):
        lines.append(
            f"out of domain: {ood['flagged']} of {ood['n']} images flagged ({100 * ood['rate']:.1f} %, threshold "
            f"{ood['threshold']:.3f}); the metrics above count them"
        )
    elif ood:
        lines.append(ood["status"])
    return "\n".join(lines)
