"""Plots (the paper's Figs 3-6 style curves, ROC, confusion matrices) and the Markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cxr_node.analysis.architectures import ARCHITECTURES, DEFAULT_ARCH  # noqa: E402
from cxr_node.analysis.models import MODEL_CLASSES  # noqa: E402
from training.metrics import JOINT_CLASSES, sum_confusions  # noqa: E402

# de Moura et al. 2020, accuracy on their CHUAC portable radiographs (different data: context only).
PAPER_ACCURACY = {"A": 79.62, "B": 90.27}
APPROACH_TITLE = {"A": "A: normal vs pathological + COVID-19", "B": "B: COVID-19 vs rest"}


def _curves(reps: list[dict], key: str, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        for part, colour in (("train", "tab:blue"), ("val", "tab:orange")):
            series = np.array([[h[f"{part}_{metric}"] for h in r[key]["history"]] for r in reps], dtype=float)
            epochs = np.arange(1, series.shape[1] + 1)
            mean = series.mean(axis=0)
            std = series.std(axis=0, ddof=1) if len(series) > 1 else np.zeros_like(mean)
            ax.plot(
                epochs,
                mean,
                color=colour,
                marker="o" if len(epochs) < 20 else None,
                label=f"{'training' if part == 'train' else 'validation'} (mean of {len(series)})",
            )
            ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.25, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{title}, approach {APPROACH_TITLE[key]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _roc(reps: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 4))
    for ax, key in zip(axes, "AB", strict=True):
        for r in reps:
            roc, auc = r[key]["test_roc"], r[key]["test"]["auc"]
            if roc is not None:
                ax.plot(roc["fpr"], roc["tpr"], label=f"rep {r['repetition'] + 1} AUC {auc:.3f}")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"ROC on test, approach {key}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _confusions(reps: list[dict], path: Path) -> None:
    panels = (
        ("A", MODEL_CLASSES["A"], [r["A"]["test"] for r in reps]),
        ("B", MODEL_CLASSES["B"], [r["B"]["test"] for r in reps]),
        ("joint A+B", JOINT_CLASSES, [r["joint_test"] for r in reps]),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (title, names, runs) in zip(axes, panels, strict=True):
        m = np.array(sum_confusions(runs))
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("truth")
        ax.set_title(f"{title} (test, summed over {len(runs)} rep.)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(metrics: dict[str, Any], out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    reps = metrics["repetitions"]
    _curves(reps, "A", out_dir / "curves_A.png")
    _curves(reps, "B", out_dir / "curves_B.png")
    _roc(reps, out_dir / "roc.png")
    _confusions(reps, out_dir / "confusion.png")
    return ["curves_A.png", "curves_B.png", "roc.png", "confusion.png"]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.2f} %"


def _pm(stat: dict | None, percent: bool = True) -> str:
    if stat is None or stat["mean"] is None:
        return "n/a"
    k = 100.0 if percent else 1.0
    unit = " %" if percent else ""
    if stat["std"] is None:
        return f"{stat['mean'] * k:.2f}{unit}"
    return f"{stat['mean'] * k:.2f} ± {stat['std'] * k:.2f}{unit}"


def paper_table(summary: dict[str, Any]) -> list[str]:
    """The paper's table layout: per approach and class precision, recall, F1, plus accuracy."""
    lines = ["| Approach | Class | Precision | Recall | F1-score | Accuracy |", "|---|---|---|---|---|---|"]
    for key in "AB":
        s = summary[key]
        for i, cls in enumerate(MODEL_CLASSES[key]):
            acc = _pm(s.get("accuracy")) if i == 0 else ""
            lines.append(
                f"| {key if i == 0 else ''} | {cls} | {_pm(s.get(f'per_class.{cls}.precision'))} | "
                f"{_pm(s.get(f'per_class.{cls}.recall'))} | {_pm(s.get(f'per_class.{cls}.f1'))} | {acc} |"
            )
    return lines


def _recipe(cfg: dict[str, Any]) -> str:
    """What departs from the paper's constant-rate SGD and scale + flip, if anything."""
    o, a = cfg["optim"], cfg["augment"]
    extra = []
    if o.get("schedule", "constant") != "constant" or o.get("warmup_epochs", 0):
        extra.append(f"learning rate {o.get('schedule')} after {o.get('warmup_epochs', 0)} warm-up epoch(s)")
    if o.get("weight_decay"):
        extra.append(f"weight decay {o['weight_decay']}")
    if o.get("label_smoothing"):
        extra.append(f"label smoothing {o['label_smoothing']}")
    if a.get("rotate") or a.get("translate"):
        extra.append(f"rotation ±{a.get('rotate', 0)}°, shift ±{a.get('translate', 0):.0%}")
    return (" Beyond the paper: " + ", ".join(extra) + ".") if extra else ""


def source_section(metrics: dict[str, Any]) -> list[str]:
    """Per-source test metrics (mean ± std over repetitions) and the source-confounding statement."""
    per = metrics["summary"].get("per_source", {})
    statement = metrics.get("source_confounding")
    if len(per) < 2 and not statement:
        return []
    lines = ["## Per source (test split)", ""]
    if statement:
        lines += [statement, ""]
    by_label = metrics["data"].get("sources", {})
    if by_label:
        lines += [
            "Images per label and source (whole data set): "
            + "; ".join(f"{lab}: " + ", ".join(f"{s} {n}" for s, n in c.items()) for lab, c in by_label.items())
            + ".",
            "",
        ]
    lines += [
        "| Source | Test images (mean) | A acc | A bal. acc | A AUC | B acc (B's test subset) | B AUC | "
        "Joint acc | Joint bal. acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for src, s in per.items():
        n = s["joint"].get("n")
        lines.append(
            f"| {src} | {n['mean']:.1f} | {_pm(s['A'].get('accuracy'))} | "
            f"{_pm(s['A'].get('balanced_accuracy'))} | {_pm(s['A'].get('auc'), False)} | "
            f"{_pm(s['B'].get('accuracy'))} | {_pm(s['B'].get('auc'), False)} | "
            f"{_pm(s['joint'].get('accuracy'))} | {_pm(s['joint'].get('balanced_accuracy'))} |"
        )
    lines += ["", "n/a: undefined on that source (one class only, e.g. AUC of B where no COVID-19 image exists).", ""]
    return lines


def write_report(metrics: dict[str, Any], path: Path) -> None:
    cfg, data, env, reps, summary = (metrics[k] for k in ("config", "data", "environment", "repetitions", "summary"))
    n = len(reps)
    o = cfg["optim"]
    init = "ImageNet (" + env["imagenet_init"] + ")" if env["imagenet_init"] else "scratch (no ImageNet weights)"
    lines = [
        f"# Training report: {cfg['run']['name']} {cfg['run']['version']}",
        "",
        f"Created {metrics['created']} on {env['device_name']} (device {env['device']}, "
        f"{env['world_size']} DDP process(es), run.parallel {cfg['run'].get('parallel', 1)}, step "
        f"{cfg['run'].get('step', 'eager')}, torch {env['torch']}); {metrics['elapsed_seconds']:.0f} s in all.",
        "",
        f"Data: `{data['folder']}`: {data['images']} images of {data['patients']} patients, "
        + ", ".join(f"{k} {v}" for k, v in data["counts"].items())
        + (f"; {len(data['bad_rows_skipped'])} bad rows skipped" if data["bad_rows_skipped"] else "")
        + ".",
        "",
        f"Protocol: {ARCHITECTURES[cfg['model'].get('arch', DEFAULT_ARCH)].title}, init {init}, input {cfg['data']['input_size']} px, SGD lr {o['lr']} "
        f"momentum {o['momentum']}, batch {o['batch_size']}, {o['epochs']} epoch(s), cross-entropy, "
        f"scaling {cfg['augment']['scale_min']}-{cfg['augment']['scale_max']} + horizontal flip "
        f"p={cfg['augment']['hflip']}, split {cfg['split']['train']:.0%}/{cfg['split']['val']:.0%}/"
        f"{cfg['split']['test']:.0%} by {cfg['split']['unit']}, {n} repetition(s) (seeds "
        f"{', '.join(str(r['seed']) for r in reps)}); model B on "
        f"{'the balanced 1:1:1 subset' if cfg['approach']['b_balanced'] else 'all images'}; epoch kept by "
        f"validation {cfg['approach']['select_metric']}." + _recipe(cfg),
        "",
        "## Test results, the paper's table format (mean ± sample std over repetitions)",
        "",
        *paper_table(summary),
        "",
        f"For context only, de Moura et al. 2020 report {PAPER_ACCURACY['A']} % (A) and {PAPER_ACCURACY['B']} % (B) "
        "accuracy on their own portable radiographs (CHUAC); different data, not comparable one to one.",
        "",
        "## Beyond the paper",
        "",
        "| | Accuracy | Balanced accuracy | ROC AUC |",
        "|---|---|---|---|",
        f"| Model A (test) | {_pm(summary['A'].get('accuracy'))} | {_pm(summary['A'].get('balanced_accuracy'))} | "
        f"{_pm(summary['A'].get('auc'), False)} |",
        f"| Model B (test{', balanced subset' if cfg['approach']['b_balanced'] else ''}) | "
        f"{_pm(summary['B'].get('accuracy'))} | {_pm(summary['B'].get('balanced_accuracy'))} | "
        f"{_pm(summary['B'].get('auc'), False)} |",
        f"| Joint A+B, 3 classes (full test split) | {_pm(summary['joint'].get('accuracy'))} | "
        f"{_pm(summary['joint'].get('balanced_accuracy'))} | A {_pm(summary['joint'].get('auc_a'), False)}, "
        f"B {_pm(summary['joint'].get('auc_b'), False)} |",
        "",
        "Joint 3-class answer (cxr_node's joint rule, thresholds chosen on validation), per class:",
        "",
        "| Class | Precision | Recall | F1-score |",
        "|---|---|---|---|",
        *[
            f"| {c} | {_pm(summary['joint'].get(f'per_class.{c}.precision'))} | "
            f"{_pm(summary['joint'].get(f'per_class.{c}.recall'))} | {_pm(summary['joint'].get(f'per_class.{c}.f1'))} |"
            for c in JOINT_CLASSES
        ],
        "",
        "Joint 3-class confusion matrix, test, summed over the repetitions (rows truth, columns predicted):",
        "",
        "| truth \\ predicted | " + " | ".join(JOINT_CLASSES) + " |",
        "|---|" + "---|" * len(JOINT_CLASSES),
        *[
            f"| {c} | " + " | ".join(str(v) for v in row) + " |"
            for c, row in zip(JOINT_CLASSES, sum_confusions([r["joint_test"] for r in reps]), strict=True)
        ],
        "",
        *source_section(metrics),
        "## Repetitions",
        "",
        "| Rep | Seed | Train/val/test images | Best epoch A, B | Thresholds a, b | Val joint bal. acc | "
        "Test A acc | Test B acc | Test joint acc | Patients shared | Near-dup. pairs across splits |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reps:
        sz, th = r["split"]["sizes"], r["thresholds"]
        shared = sum(r["split"]["patient_overlap"].values())
        lines.append(
            f"| {r['repetition'] + 1}{' (bundle)' if r['repetition'] == metrics['bundle_repetition'] else ''} | "
            f"{r['seed']} | {sz['train']}/{sz['val']}/{sz['test']} | {r['A']['best_epoch']}, {r['B']['best_epoch']} | "
            f"{th['a']:.2f}, {th['b']:.2f} | {r['val_joint_balanced_accuracy'] * 100:.2f} % | "
            f"{_pct(r['A']['test']['accuracy'])} | {_pct(r['B']['test']['accuracy'])} | "
            f"{_pct(r['joint_test']['accuracy'])} | {shared} | "
            f"{len(r['split']['near_duplicates_across_splits'])} |"
        )
    dups = [d for r in reps for d in r["split"]["near_duplicates_across_splits"]]
    lines += [
        "",
        "## Leak checks",
        "",
        "Patients shared between train, validation and test: "
        + (
            "0 in every repetition."
            if all(sum(r["split"]["patient_overlap"].values()) == 0 for r in reps)
            else "NOT zero (split.unit = 'image' or overlapping ids), see the table above."
        ),
        "",
        f"Near-duplicate images in different splits (64-bit perceptual hash, <= "
        f"{cfg['split']['near_duplicate_bits']} bits apart): {len(dups)} pair(s) over all repetitions.",
    ]
    if dups:
        lines += ["", "| a | b | bits | splits |", "|---|---|---|---|"]
        lines += [f"| {d['a']} | {d['b']} | {d['bits']} | {d['split_a']} / {d['split_b']} |" for d in dups[:30]]
        if len(dups) > 30:
            lines.append(f"| ... {len(dups) - 30} more in metrics.json | | | |")
    tp = metrics["throughput_images_per_second"]
    counts = data["counts"]
    notes = []
    if min(counts.values()) < 0.1 * data["images"]:
        rare = min(counts, key=counts.get)
        notes.append(
            f"The {rare} class is {counts[rare]} of {data['images']} images: its metrics rest on "
            "a handful of test images; look at balanced accuracy and per-class recall, not accuracy alone."
        )
    if not env["imagenet_init"]:
        notes.append("Trained from scratch; the paper starts from ImageNet weights.")
    if n == 1:
        notes.append("One repetition: no standard deviation.")
    lines += [
        "",
        "## Notes",
        "",
        *[f"- {t}" for t in notes],
        f"- Training throughput: A {tp['A']:.1f} images/s, B {tp['B']:.1f} images/s on {env['device_name']}.",
        "",
        "## Figures",
        "",
        "![curves A](plots/curves_A.png)",
        "",
        "![curves B](plots/curves_B.png)",
        "",
        "![ROC](plots/roc.png)",
        "",
        "![confusion](plots/confusion.png)",
        "",
        "Grad-CAM examples (test images of the bundled repetition, made by the runtime's Analyzer):",
        "",
    ]
    lines += [f"![{g}](gradcam/{g})" for g in metrics.get("gradcam", [])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
