"""Metrics for model A, model B and their joint 3-class answer; threshold choice; mean ± std.

Binary models are scored at p >= 0.5 (the softmax argmax, as in the paper's tables);
the joint answer uses cxr_node's joint_rule with thresholds chosen on validation.
Balanced accuracy is the mean recall over the classes present in the truth.
"""

from __future__ import annotations

import csv
import math
import warnings
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from cxr_node.analysis.fusion import JointClass, Thresholds, joint_rule
from cxr_node.analysis.models import MODEL_CLASSES

JOINT_CLASSES = (JointClass.NORMAL.value, JointClass.PATHOLOGICAL.value, JointClass.COVID.value)
LABEL_TO_JOINT = {
    "normal": JointClass.NORMAL.value,
    "pathological": JointClass.PATHOLOGICAL.value,
    "covid": JointClass.COVID.value,
}


def target_a(labels: np.ndarray) -> np.ndarray:
    """Approach A: 1 = abnormal (pathological or COVID-19)."""
    return (np.asarray(labels) != "normal").astype(np.int64)


def target_b(labels: np.ndarray) -> np.ndarray:
    """Approach B: 1 = COVID-19."""
    return (np.asarray(labels) == "covid").astype(np.int64)


def safe_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC, or None when the truth holds a single class (AUC is undefined then)."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, p))


def balanced_accuracy(y, pred) -> float | None:
    """Mean recall over the classes present in the truth (sklearn's), None without any truth."""
    y, pred = np.asarray(y), np.asarray(pred)
    if len(y) == 0:
        return None
    with warnings.catch_warnings():  # a predicted class absent from the truth is not an error here
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, pred))


def write_predictions(path, samples, p_abn, p_cov, thresholds: Thresholds) -> None:
    """One CSV row per image: its probabilities and the joint class (training's test split, evaluate)."""
    joint, _ = joint_predictions(p_abn, p_cov, thresholds)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "patient_id", "label", "p_abnormal", "p_covid", "joint"])
        for s, pa, pc, j in zip(samples, p_abn, p_cov, joint, strict=True):
            w.writerow([s.name, s.patient_id, s.label, f"{pa:.6f}", f"{pc:.6f}", j])


def _per_class(y, pred, classes, names) -> dict[str, dict[str, float | None]]:
    if len(y) == 0:  # e.g. a balanced B test subset left empty by a tiny class: nothing to score
        return {name: {"precision": None, "recall": None, "f1": None, "support": 0} for name in names}
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(classes), zero_division=0)
    return {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(names)
    }


def _confusion(y, pred, labels: list) -> list[list[int]]:
    if len(y) == 0:
        return [[0] * len(labels) for _ in labels]
    return confusion_matrix(y, pred, labels=labels).tolist()


def binary_metrics(y: np.ndarray, p_pos: np.ndarray, model_key: str, threshold: float = 0.5) -> dict[str, Any]:
    y, p_pos = np.asarray(y, dtype=np.int64), np.asarray(p_pos, dtype=np.float64)
    pred = (p_pos >= threshold).astype(np.int64)
    names = MODEL_CLASSES[model_key]
    return {
        "n": int(len(y)),
        "threshold": float(threshold),
        "accuracy": float(np.mean(pred == y)) if len(y) else None,
        "balanced_accuracy": balanced_accuracy(y, pred),
        "auc": safe_auc(y, p_pos),
        "per_class": _per_class(y, pred, (0, 1), names),
        "confusion_matrix": {"labels": list(names), "matrix": _confusion(y, pred, [0, 1])},
    }


def joint_predictions(p_abn: np.ndarray, p_cov: np.ndarray, thresholds: Thresholds) -> tuple[list[str], int]:
    results = [joint_rule(float(a), float(b), thresholds) for a, b in zip(p_abn, p_cov, strict=True)]
    return [r.label.value for r in results], sum(r.models_disagree for r in results)


def joint_metrics(labels: np.ndarray, p_abn: np.ndarray, p_cov: np.ndarray, thresholds: Thresholds) -> dict[str, Any]:
    """The 3-class evaluation of A + B through the runtime's joint rule (what a reader sees)."""
    labels = np.asarray(labels)
    truth = np.array([LABEL_TO_JOINT[lab] for lab in labels])
    names, disagree = joint_predictions(p_abn, p_cov, thresholds)
    pred = np.array(names)
    return {
        "n": int(len(labels)),
        "counts": {lab: int(np.sum(labels == lab)) for lab in LABEL_TO_JOINT},
        "thresholds": {"a": thresholds.a, "b": thresholds.b},
        "accuracy": float(np.mean(pred == truth)) if len(truth) else None,
        "balanced_accuracy": balanced_accuracy(truth, pred),
        "auc_a": safe_auc(target_a(labels), p_abn),
        "auc_b": safe_auc(target_b(labels), p_cov),
        "per_class": _per_class(truth, pred, JOINT_CLASSES, JOINT_CLASSES),
        "confusion_matrix": {"labels": list(JOINT_CLASSES), "matrix": _confusion(truth, pred, list(JOINT_CLASSES))},
        "models_disagree": int(disagree),
    }


def choose_joint_thresholds(labels: np.ndarray, p_abn: np.ndarray, p_cov: np.ndarray) -> tuple[Thresholds, float]:
    """(t_A, t_B) on a 0.01 grid maximising the joint rule's balanced accuracy on these (validation) images.

    Ties go to the pair closest to (0.5, 0.5), so an uninformative validation set keeps the defaults.
    """
    labels = np.asarray(labels)
    grid = np.round(np.arange(1, 100) / 100.0, 2)
    y = np.select([labels == "normal", labels == "pathological"], [0, 1], 2)
    a_pos = np.asarray(p_abn)[None, :] >= grid[:, None]  # (ta, n)
    b_pos = np.asarray(p_cov)[None, :] >= grid[:, None]  # (tb, n)
    # joint rule: COVID if B positive, else Pathological if A positive, else Normal
    pred = np.where(b_pos[None, :, :], 2, np.where(a_pos[:, None, :], 1, 0))  # (ta, tb, n)
    recalls = [np.mean(pred[..., y == c] == c, axis=-1) for c in range(3) if np.any(y == c)]
    score = np.mean(recalls, axis=0)
    distance = np.abs(grid[:, None] - 0.5) + np.abs(grid[None, :] - 0.5)
    best = np.flatnonzero(score.ravel() == score.max())
    ia, ib = np.unravel_index(best[np.argmin(distance.ravel()[best])], score.shape)
    return Thresholds(float(grid[ia]), float(grid[ib])), float(score[ia, ib])


def _leaves(d: Any, prefix: str = "") -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if k in ("confusion_matrix", "counts", "thresholds"):
                continue
            out.update(_leaves(v, f"{prefix}{k}."))
    elif isinstance(d, (int, float)) and not isinstance(d, bool) or d is None:
        out[prefix[:-1]] = d
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Mean and sample std (ddof=1) of every numeric leaf over the repetitions; None values are skipped."""
    flat = [_leaves(r) for r in runs]
    keys = sorted({k for f in flat for k in f})
    out = {}
    for k in keys:
        vals = [v for f in flat if (v := f.get(k)) is not None and not math.isnan(v)]
        out[k] = {
            "mean": float(np.mean(vals)) if vals else None,
            "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "n": len(vals),
        }
    return out


def sum_confusions(runs: list[dict[str, Any]]) -> list[list[int]]:
    return np.sum([r["confusion_matrix"]["matrix"] for r in runs], axis=0).tolist()
