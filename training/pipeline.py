"""`cxr-node train`: data -> repeated patient-grouped splits -> models A and B -> metrics, bundle, report.

Per repetition r (seed = run.seed + r): split, train A on all images, train B (on the
balanced 1:1:1 subset of each split when approach.b_balanced), keep each model's best
validation epoch, choose the joint-rule thresholds on the whole validation split, and
score on the test split. The bundle holds the repetition with the best validation joint
balanced accuracy (test numbers never choose anything).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cxr_node.analysis.architectures import ARCHITECTURES
from cxr_node.analysis.bundle import load_bundle, write_bundle
from cxr_node.analysis.fusion import Thresholds
from cxr_node.analysis.models import WeightsError, build_densenet, find_imagenet_weights
from training.config import ConfigError, TrainConfig
from training.data import LABELS, LoadedData, load_data
from training.dataset import SquareDataset
from training.determinism import apply_determinism
from training.distributed import DistEnv, init_distributed, shutdown
from training.fast import ENGINE
from training.loop import FitJob, predict, run_fit
from training.metrics import (
    binary_metrics,
    choose_joint_thresholds,
    joint_metrics,
    summarise,
    target_a,
    target_b,
    write_predictions,
)
from training.runlog import RunLog
from training.sources import confounding_statement, label_sources, per_source_metrics
from training.splits import (
    balanced_subset,
    cross_split_duplicates,
    hash_all,
    label_counts,
    make_split,
    merge_groups,
    near_duplicates,
    patient_overlap,
)


def resolve_weights(cfg: TrainConfig) -> Path | None:
    if cfg.model.init == "scratch":
        return None
    try:
        weights = find_imagenet_weights(cfg.model.imagenet_weights or None, cfg.model.arch)
    except WeightsError as exc:
        raise ConfigError(f"model.imagenet_weights: {exc}") from exc
    if weights is None:
        raise ConfigError(
            f"model.init: 'imagenet' needs a local {ARCHITECTURES[cfg.model.arch].imagenet_file} (set model.imagenet_weights "
            "or place it under $TORCH_HOME/hub/checkpoints); set model.init = 'scratch' to train without it"
        )
    return weights


def _data_fingerprint(data: LoadedData) -> str:
    text = "\n".join(f"{s.name}\t{s.patient_id}\t{s.label}" for s in data.samples)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Context:
    cfg: TrainConfig
    data: LoadedData
    out: Path
    env: DistEnv
    device: torch.device
    weights: Path | None
    fingerprint: str
    log: Callable[[str], None]  # a RunLog, or bench's plain printer
    progress: Any
    near_pairs: list[tuple[int, int, int]]  # near-duplicate image pairs in the whole set


def _predict_all(ctx: Context, state: dict, idx: np.ndarray) -> np.ndarray:
    model = build_densenet(ctx.cfg.model.arch)
    model.load_state_dict(state)
    model.to(ctx.device)
    ds = SquareDataset(ctx.data.squares, idx, np.zeros(len(idx), np.int64))
    p, _ = predict(model, ds, ctx.device, 32, amp=ctx.cfg.run.amp)
    return p


def _write_split_csv(ctx: Context, path: Path, split) -> None:
    where = split.part_of(len(ctx.data.samples))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "patient_id", "label", "split"])
        for s, part in zip(ctx.data.samples, where, strict=True):
            w.writerow([s.name, s.patient_id, s.label, part])


@dataclass
class RepPlan:
    rep: int
    seed: int
    split: Any
    b_parts: dict[str, np.ndarray]
    jobs: dict[str, FitJob]


def plan_repetition(ctx: Context, rep: int) -> RepPlan:
    """The split of repetition `rep` and its two trainings (pure: the same on every call and rank)."""
    cfg, labels = ctx.cfg, ctx.data.labels
    seed = cfg.run.seed + rep
    patients = np.array([s.patient_id for s in ctx.data.samples])
    groups = patients if cfg.split.unit == "patient" else np.arange(len(labels)).astype(str)
    if cfg.split.group_near_duplicates:
        groups = merge_groups(groups, ctx.near_pairs)
    split = make_split(labels, groups, (cfg.split.train, cfg.split.val, cfg.split.test), seed)
    b_parts = split.parts()
    if cfg.approach.b_balanced:
        b_parts = {k: balanced_subset(v, labels, LABELS, seed) for k, v in b_parts.items()}
    jobs = {}
    for key, parts, targets_of in (("A", split.parts(), target_a), ("B", b_parts, target_b)):
        jobs[key] = FitJob(
            rep,
            key,
            seed,
            parts["train"],
            targets_of(labels[parts["train"]]),
            parts["val"],
            targets_of(labels[parts["val"]]),
            ctx.out / "checkpoints" / f"rep{rep}_{key}",
        )
    return RepPlan(rep, seed, split, b_parts, jobs)


@dataclass
class ModelOutcome:
    """One model (A or B) of one repetition: its training and its test-split scores."""

    best_epoch: int  # 1-based, chosen on validation
    history: list[dict[str, Any]]  # one record per epoch (fit's)
    replicas_identical: bool  # DDP: every rank ended with the same weights
    test: dict[str, Any]  # binary_metrics on the test split (B: its balanced subset)
    test_roc: dict[str, list[float]] | None  # None when the test labels hold one class


@dataclass
class Repetition:
    """What one repetition gives rank 0; `to_dict` is its entry in metrics.json "repetitions"."""

    repetition: int
    seed: int
    split: dict[str, Any]  # sizes, label counts, patient overlap, near-duplicates across splits
    thresholds: Thresholds  # the joint rule's, chosen on the validation split
    val_joint_balanced_accuracy: float  # what chooses the bundle's repetition
    A: ModelOutcome
    B: ModelOutcome
    joint_test: dict[str, Any]
    per_source_test: dict[str, Any]

    def model(self, key: str) -> ModelOutcome:
        return {"A": self.A, "B": self.B}[key]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summary(reps: list[Repetition]) -> dict[str, Any]:
    """Mean and spread over the repetitions of each test figure: A, B, joint, and per source."""
    sources = sorted({s for r in reps for s in r.per_source_test})
    return {
        "A": summarise([r.A.test for r in reps]),
        "B": summarise([r.B.test for r in reps]),
        "joint": summarise([r.joint_test for r in reps]),
        "per_source": {
            src: {
                k: summarise([r.per_source_test[src][k] for r in reps if src in r.per_source_test])
                for k in ("A", "B", "joint")
            }
            for src in sources
        },
    }


def run_repetition(ctx: Context, rep: int) -> Repetition | None:
    cfg, data, log = ctx.cfg, ctx.data, ctx.log
    plan = plan_repetition(ctx, rep)
    seed, split, b_parts = plan.seed, plan.split, plan.b_parts
    labels = data.labels
    patients = np.array([s.patient_id for s in data.samples])
    overlap = patient_overlap(split, patients)
    counts = label_counts(split, labels)
    log(
        f"repetition {rep + 1}/{cfg.run.repetitions} (seed {seed}): "
        + ", ".join(f"{k} {len(v)} {counts[k]}" for k, v in split.parts().items())
        + f"; patients shared between splits: {overlap}"
    )
    if cfg.approach.b_balanced:
        log("model B on the balanced 1:1:1 subset: " + ", ".join(f"{k} {len(v)}" for k, v in b_parts.items()))

    results = {
        key: run_fit(
            job,
            cfg=cfg,
            squares=data.squares,
            weights=ctx.weights,
            device=ctx.device,
            env=ctx.env,
            fingerprint=ctx.fingerprint,
            log=log,
            progress=ctx.progress,
            engine=ENGINE,
        )
        for key, job in plan.jobs.items()
    }
    if not ctx.env.is_main:
        return None

    # Both models on every validation and test image: the joint rule needs both probabilities.
    val_idx, test_idx = split.val, split.test
    p_abn_val, p_cov_val = (_predict_all(ctx, results[k].state, val_idx) for k in "AB")
    p_abn_test, p_cov_test = (_predict_all(ctx, results[k].state, test_idx) for k in "AB")
    thresholds, val_score = choose_joint_thresholds(labels[val_idx], p_abn_val, p_cov_val)
    in_b_test = np.isin(test_idx, b_parts["test"])

    dups = cross_split_duplicates(ctx.near_pairs, split, len(labels))
    (ctx.out / "splits").mkdir(exist_ok=True)
    _write_split_csv(ctx, ctx.out / "splits" / f"rep{rep}.csv", split)
    write_predictions(
        ctx.out / "predictions" / f"rep{rep}_test.csv",
        [data.samples[i] for i in test_idx],
        p_abn_test,
        p_cov_test,
        thresholds,
    )

    y_test_a, y_test_b = target_a(labels[test_idx]), target_b(labels[test_idx][in_b_test])
    record = Repetition(
        repetition=rep,
        seed=seed,
        split={
            "unit": cfg.split.unit,
            "sizes": {k: int(len(v)) for k, v in split.parts().items()},
            "label_counts": counts,
            "b_sizes": {k: int(len(v)) for k, v in b_parts.items()},
            "patient_overlap": overlap,
            "near_duplicates_across_splits": [
                {"a": data.samples[i].name, "b": data.samples[j].name, "bits": d, "split_a": sa, "split_b": sb}
                for i, j, d, sa, sb in dups
            ],
        },
        thresholds=thresholds,
        val_joint_balanced_accuracy=val_score,
        A=ModelOutcome(
            results["A"].best_epoch,
            results["A"].history,
            results["A"].replicas_identical,
            binary_metrics(y_test_a, p_abn_test, "A"),
            _roc(y_test_a, p_abn_test),
        ),
        B=ModelOutcome(
            results["B"].best_epoch,
            results["B"].history,
            results["B"].replicas_identical,
            binary_metrics(y_test_b, p_cov_test[in_b_test], "B"),
            _roc(y_test_b, p_cov_test[in_b_test]),
        ),
        joint_test=joint_metrics(labels[test_idx], p_abn_test, p_cov_test, thresholds),
        per_source_test=per_source_metrics(
            [data.samples[i].name for i in test_idx], labels[test_idx], p_abn_test, p_cov_test, in_b_test, thresholds
        ),
    )
    j = record.joint_test
    if not len(b_parts["test"]):
        log(
            f"rep {rep + 1}: the balanced test subset for model B is empty (too few images of some label); "
            "B has no test metrics in this repetition"
        )
    log(
        f"rep {rep + 1} test: A acc {_f4(record.A.test['accuracy'])}, B acc {_f4(record.B.test['accuracy'])}, "
        f"joint acc {_f4(j['accuracy'])} bal.acc {_f4(j['balanced_accuracy'])} "
        f"(thresholds chosen on validation: a={thresholds.a:.2f}, b={thresholds.b:.2f}); "
        f"{len(dups)} near-duplicate pair(s) across splits"
    )
    return record


def _f4(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _roc(y: np.ndarray, p: np.ndarray) -> dict[str, list[float]] | None:
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, p)
    return {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()}


def train(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    labels_csv: str | Path | None = None,
    skip_bad_rows: bool = False,
    config_path: str | None = None,
) -> dict[str, Any] | None:
    """Run the whole protocol; returns the metrics dict on rank 0 (None on other ranks)."""
    env, device = init_distributed(cfg.run.device)
    try:
        return _train(cfg, Path(data_dir), Path(out_dir), env, device, labels_csv, skip_bad_rows, config_path)
    finally:
        shutdown(env)


def _train(
    cfg: TrainConfig,
    data_dir: Path,
    out: Path,
    env: DistEnv,
    device: torch.device,
    labels_csv: str | Path | None,
    skip_bad_rows: bool,
    config_path: str | None,
) -> dict[str, Any] | None:
    started = time.time()
    apply_determinism(cfg.run.deterministic)
    weights = resolve_weights(cfg)
    if env.is_main:
        for sub in ("checkpoints", "plots", "predictions", "gradcam"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "train.log" if env.is_main else None, env.is_main)
    progress = partial(tqdm, mininterval=1.0, dynamic_ncols=True, leave=False) if env.is_main else None
    log(
        f"cxr-node train: config {config_path or '(dict)'}, data {data_dir}, out {out}, device {device}, "
        f"world size {env.world_size}, init {'ImageNet ' + str(weights) if weights else 'scratch'}"
    )

    data = load_data(
        data_dir,
        cfg.data.input_size,
        labels_csv=labels_csv,
        skip_bad_rows=skip_bad_rows,
        subset=cfg.data.subset,
        seed=cfg.run.seed,
        threads=max(1, cfg.run.num_workers),
        progress=partial(progress, desc="decoding images") if progress else None,
        log=log,
    )
    log(f"{len(data.samples)} images, {len({s.patient_id for s in data.samples})} patients: {data.counts()}")
    fingerprint = f"{cfg.fingerprint()}-{_data_fingerprint(data)}"
    # every rank: the split depends on it and must be the same everywhere
    pairs = near_duplicates(hash_all(data.squares), cfg.split.near_duplicate_bits)
    log(
        f"{len(pairs)} near-duplicate image pair(s) in the data (perceptual hash, <= "
        f"{cfg.split.near_duplicate_bits} bits apart)"
        + ("; their patients are kept in one split" if cfg.split.group_near_duplicates else "")
    )
    ctx = Context(cfg, data, out, env, device, weights, fingerprint, log, progress, pairs)

    if cfg.run.parallel > 1:
        if env.enabled:
            raise ConfigError(
                f"run.parallel: {cfg.run.parallel} processes per device cannot be combined with "
                f"torchrun (WORLD_SIZE={env.world_size}); set run.parallel = 1 or run one process"
            )
        jobs = [j for r in range(cfg.run.repetitions) for j in plan_repetition(ctx, r).jobs.values()]
        ENGINE.side_by_side(
            jobs,
            cfg=cfg,
            squares=data.squares,
            workdir=out / "checkpoints",
            weights=weights,
            device=device,
            fingerprint=fingerprint,
            log=log,
            log_path=out / "train.log",
        )
    outcomes = [run_repetition(ctx, r) for r in range(cfg.run.repetitions)]
    if not env.is_main:
        return None
    reps = [r for r in outcomes if r is not None]  # rank 0 has every repetition

    chosen = max(range(len(reps)), key=lambda r: (reps[r].val_joint_balanced_accuracy, -r))
    best = reps[chosen]
    states = {
        k: torch.load(out / "checkpoints" / f"rep{chosen}_{k}.final.pt", map_location="cpu", weights_only=False)[
            "state"
        ]
        for k in "AB"
    }
    models = {}
    for k in "AB":
        models[k] = build_densenet(cfg.model.arch)
        models[k].load_state_dict(states[k])
    by_source = label_sources([s.name for s in data.samples], data.labels)
    metrics: dict[str, Any] = {
        "format": "cxr-node-training-metrics/1",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "config_file": config_path,
        "data": {
            "folder": str(data_dir),
            "images": len(data.samples),
            "counts": data.counts(),
            "patients": len({s.patient_id for s in data.samples}),
            "bad_rows_skipped": [str(b) for b in data.bad_rows],
            "sources": by_source,
        },
        "source_confounding": confounding_statement(by_source),
        "environment": {
            "device": str(device),
            "device_name": _device_name(device),
            "world_size": env.world_size,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "imagenet_init": str(weights) if weights else None,
        },
        "bundle_repetition": chosen,
        "repetitions": [r.to_dict() for r in reps],
        "summary": _summary(reps),
        "throughput_images_per_second": {
            k: float(np.mean([h["images_per_second"] for r in reps for h in r.model(k).history])) for k in "AB"
        },
    }
    thresholds = best.thresholds
    domain = None
    if cfg.domain.enabled:
        from cxr_node.analysis.domain import DomainError
        from training.domain_fit import fit_bundle_domain

        parts = plan_repetition(ctx, chosen).split.parts()
        try:
            domain, metrics["out_of_domain"] = fit_bundle_domain(cfg.domain, models, data.squares, parts, device, log)
        except DomainError as exc:  # too few images to fit: the bundle works, with the check off
            log(f"out-of-domain statistics not fitted ({exc}): the node will run this bundle with the check off")
    else:
        log("domain.enabled = false: the bundle gets no out-of-domain statistics (the node runs with the check off)")
    write_bundle(
        out / "bundle",
        models["A"],
        models["B"],
        name=cfg.run.name,
        version=cfg.run.version,
        input_size=cfg.data.input_size,
        thresholds=thresholds,
        training={
            "created": metrics["created"],
            "repetition": chosen,
            "seed": best.seed,
            "data": metrics["data"],
            "config": cfg.to_dict(),
            "validation_joint_balanced_accuracy": best.val_joint_balanced_accuracy,
            "test_joint": {k: best.joint_test[k] for k in ("accuracy", "balanced_accuracy", "auc_a", "auc_b")},
        },
        domain=domain,
        architecture=cfg.model.arch,
    )
    bundle = load_bundle(out / "bundle")  # proves the runtime can load what was written
    log(f"bundle written to {out / 'bundle'} (repetition {chosen + 1}, thresholds a={thresholds.a}, b={thresholds.b})")

    from training.gradcam import write_gradcam_examples
    from training.report import write_plots, write_report

    test_rows = [data.samples[i] for i in _test_indices(out, chosen)]
    metrics["gradcam"] = write_gradcam_examples(
        bundle, test_rows, out / "gradcam", cfg.report.gradcam_examples, device=str(device)
    )
    metrics["plots"] = write_plots(metrics, out / "plots")
    metrics["elapsed_seconds"] = time.time() - started
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json_default), encoding="utf-8")
    write_report(metrics, out / "report.md")
    log(f"done in {metrics['elapsed_seconds']:.0f} s: {out / 'report.md'}, {out / 'metrics.json'}")
    return metrics


def _test_indices(out: Path, rep: int) -> np.ndarray:
    with open(out / "splits" / f"rep{rep}.csv", newline="", encoding="utf-8") as fh:
        parts = [row["split"] for row in csv.DictReader(fh)]
    return np.flatnonzero(np.array(parts) == "test")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} logical cores)"


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
