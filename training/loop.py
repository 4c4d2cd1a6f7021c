"""Train one binary DenseNet-161 (model A or B) for one repetition: a plain loop after
torchvision's references/classification/train.py, plus checkpoints, resume and model selection.

Checkpoint `<stem>.ckpt.pt` is rewritten after each epoch (model, optimizer, history, best
weights so far); when the model is done `<stem>.final.pt` keeps the selected weights and the
history, and the epoch checkpoint is removed. A rerun with the same configuration resumes
from whichever of the two exists; a different configuration is refused.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from cxr_node.analysis.models import build_model
from cxr_node.storage import write_durably
from training.config import TrainConfig
from training.dataset import Augment, SquareDataset
from training.distributed import DistEnv, all_reduce_sum, barrier, params_identical_across_ranks
from training.metrics import balanced_accuracy, safe_auc
from training.step import Step, autocast_for


class CheckpointMismatch(RuntimeError):
    """A checkpoint in the output folder was made with another configuration or data."""


class TrainingDiverged(RuntimeError):
    """Loss or outputs became NaN/inf; the message says where and what to change."""


@dataclass
class FitResult:
    state: dict[str, torch.Tensor]  # selected weights (CPU)
    best_epoch: int  # 1-based
    history: list[dict[str, float | None]] = field(default_factory=list)
    replicas_identical: bool = True


@dataclass(frozen=True)
class FitJob:
    """One model of one repetition: everything `fit` needs besides the squares."""

    rep: int
    model: str  # "A" | "B"
    seed: int
    train_idx: np.ndarray
    train_targets: np.ndarray
    val_idx: np.ndarray
    val_targets: np.ndarray
    ckpt_stem: Path

    @property
    def label(self) -> str:
        return f"rep {self.rep + 1} model {self.model}"

    @property
    def final_path(self) -> Path:
        return self.ckpt_stem.with_name(self.ckpt_stem.name + ".final.pt")

    def datasets(self, squares: np.ndarray, cfg: TrainConfig) -> tuple[SquareDataset, SquareDataset]:
        a = cfg.augment
        augment = Augment(a.scale_min, a.scale_max, a.hflip, a.rotate, a.translate)
        return (
            SquareDataset(squares, self.train_idx, self.train_targets, augment, self.seed),
            SquareDataset(squares, self.val_idx, self.val_targets),
        )


def learning_rate(o, epoch: int) -> float:
    """optim.lr for this 0-based epoch: linear warm-up, then constant or cosine decay to 0."""
    if epoch < o.warmup_epochs:
        return o.lr * (epoch + 1) / (o.warmup_epochs + 1)
    if o.schedule == "cosine":
        span = o.epochs - o.warmup_epochs
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - o.warmup_epochs) / span))
    return o.lr


class _LoaderBatches:
    """The DataLoader path: OpenCV augmentation in worker processes, restarted every epoch."""

    def __init__(self, train_set, val_set, batch_size, env, seed, drop_last, cfg, device):
        self.train_set, self.val_set, self.device, self.cfg = train_set, val_set, device, cfg
        # DistributedSampler also serves one process: a (seed, epoch)-determined shuffle survives resume.
        self.sampler: DistributedSampler[int] = DistributedSampler(
            train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed
        )
        self.loader = DataLoader(
            train_set,
            batch_size=batch_size,
            sampler=self.sampler,
            drop_last=drop_last,
            num_workers=cfg.run.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)  # before the loader pickles the dataset to its workers
        return iter(self.loader)

    def predict_val(self, model, batch_size, autocast, memory_format):
        return predict(
            model,
            self.val_set,
            self.device,
            batch_size,
            amp=self.cfg.run.amp,
            channels_last=memory_format == torch.channels_last,
        )


def plain_step(model, optimizer, cfg: TrainConfig, device: torch.device, *, log, label: str = "", ddp: bool = False):
    """The eager step; run.step's other forms are training.fast's (Engine)."""
    if cfg.run.step not in ("auto", "eager"):
        raise ValueError(f"run.step = {cfg.run.step} needs training.fast's engine (fit(engine=training.fast.ENGINE))")
    step = Step(model, optimizer, device=device, amp=cfg.run.amp, label_smoothing=cfg.optim.label_smoothing)
    return step, "plain loop"


def loader_batches(cfg: TrainConfig, train_set, val_set, batch_size, env, seed, drop_last, device):
    """DataLoader batches; the device input path is training.fast's (Engine)."""
    if cfg.data.pipeline == "device":
        raise ValueError("data.pipeline = device needs training.fast's engine (fit(engine=training.fast.ENGINE))")
    return _LoaderBatches(train_set, val_set, batch_size, env, seed, drop_last, cfg, device), "loader"


@dataclass(frozen=True)
class Engine:
    """How `fit` makes its step and its batches. PLAIN: eager steps and DataLoader batches, the
    research loop alone; training.fast.ENGINE adds run.step's compiled and CUDA-graph forms and the
    device input path (data.pipeline) without the loop knowing them."""

    # (model, optimizer, cfg, device, *, log, label, ddp) -> (step, why this form)
    make_step: Callable[..., tuple[Any, str]]
    # (cfg, train_set, val_set, per-rank batch size, env, seed, drop_last, device) -> (batches, input path)
    make_batches: Callable[..., tuple[Any, str]]


PLAIN = Engine(plain_step, loader_batches)


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: SquareDataset,
    device: torch.device,
    batch_size: int,
    *,
    amp: bool = False,
    channels_last: bool = False,
    num_workers: int = 0,
) -> tuple[np.ndarray, float]:
    """P(positive class) for every item, and the mean cross-entropy against its target."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    probs, loss_sum = [], 0.0
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device, amp):
            logits = model(x)
        logits = logits.float().cpu()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        probs.append(torch.softmax(logits, dim=1)[:, 1].numpy())
    p = np.concatenate(probs) if probs else np.zeros(0)
    return p, loss_sum / max(1, len(dataset))


def val_score(metric: str, record: dict) -> float:
    """Higher is better; an undefined AUC (one class in validation) falls back to -loss."""
    if metric == "loss" or (metric == "auc" and record["val_auc"] is None):
        return -record["val_loss"]
    return record[f"val_{metric}"]


def atomic_save(obj, path: Path) -> None:
    """torch.save through the node's one durable write (temp file, fsync, rename, fsync dir)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_durably(path, buf.getvalue())


@dataclass
class Progress:
    """What a training carries from epoch to epoch (and through a checkpoint)."""

    start_epoch: int = 0
    history: list = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_score: float = -float("inf")
    best_epoch: int = 0


def _resume(ckpt_path: Path, fingerprint: str, model: nn.Module, optimizer, log, label: str) -> Progress:
    if not ckpt_path.is_file():
        return Progress()
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    check_fingerprint(ckpt, fingerprint, ckpt_path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    log(f"{label}: resuming after epoch {ckpt['epoch']} from {ckpt_path.name}")
    return Progress(ckpt["epoch"], ckpt["history"], ckpt["best_state"], ckpt["best_score"], ckpt["best_epoch"])


def _train_epoch(
    step, epoch_batches, device: torch.device, memory_format, env: DistEnv, label: str, epoch: int
) -> dict:
    t0, started = time.perf_counter(), time.time()  # wall clock: bench lines up parallel processes' epochs
    # summed on the device; read once per epoch (no host synchronisation per step)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in epoch_batches:
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        loss, right = step(x, y)
        loss_sum += loss.double() * len(y)
        correct += right
        seen += len(y)
    loss_total, correct_total, seen_total = all_reduce_sum(env, [float(loss_sum), float(correct), float(seen)])
    if not np.isfinite(loss_total):
        raise TrainingDiverged(f"{label}: training loss is not finite in epoch {epoch + 1}; lower optim.lr")
    seconds = time.perf_counter() - t0
    record = {
        "epoch": epoch + 1,
        "train_loss": loss_total / max(seen_total, 1),
        "train_accuracy": correct_total / max(seen_total, 1),
        "train_images": int(seen_total),
        "train_seconds": seconds,
        "images_per_second": seen_total / seconds,
        "train_start_unix_seconds": started,
        "train_end_unix_seconds": time.time(),
    }
    if device.type == "cuda":  # allocator statistics: host-side, no device synchronisation
        record["device_memory_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return record


def _validate(
    batches,
    model: nn.Module,
    val_set: SquareDataset,
    batch_size: int,
    val_autocast,
    memory_format,
    label: str,
    epoch: int,
) -> dict:
    t_val = time.perf_counter()
    p, val_loss = batches.predict_val(model, batch_size, val_autocast, memory_format)
    return validation_record(p, val_loss, val_set.targets, label, epoch, time.perf_counter() - t_val)


def validation_record(
    p: np.ndarray, val_loss: float, y_val: np.ndarray, label: str, epoch: int, seconds: float
) -> dict:
    """One epoch's validation figures from P(positive) and the mean loss; diverged outputs raise."""
    if not np.all(np.isfinite(p)) or not np.isfinite(val_loss):
        raise TrainingDiverged(
            f"{label}: non-finite validation outputs after epoch {epoch + 1} (BatchNorm statistics "
            f"blew up); lower optim.lr, raise optim.batch_size or data.input_size"
        )
    pred = (p >= 0.5).astype(np.int64)
    return {
        "val_loss": val_loss,
        "val_accuracy": float(np.mean(pred == y_val)),
        "val_balanced_accuracy": balanced_accuracy(y_val, pred),
        "val_auc": safe_auc(y_val, p),
        "val_seconds": seconds,
    }


def fit(
    *,
    cfg: TrainConfig,
    train_set: SquareDataset,
    val_set: SquareDataset,
    imagenet_weights: Path | None,
    device: torch.device,
    env: DistEnv,
    ckpt_stem: Path,
    fingerprint: str,
    seed: int,
    label: str,
    log: Callable[[str], None],
    progress: Callable | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    engine: Engine = PLAIN,
) -> FitResult:
    ckpt_stem.parent.mkdir(parents=True, exist_ok=True)
    final_path = ckpt_stem.with_name(ckpt_stem.name + ".final.pt")
    ckpt_path = ckpt_stem.with_name(ckpt_stem.name + ".ckpt.pt")
    if final_path.is_file():
        done = torch.load(final_path, map_location="cpu", weights_only=False)
        check_fingerprint(done, fingerprint, final_path)
        log(f"{label}: already trained ({final_path.name}), reusing it")
        return FitResult(done["state"], done["best_epoch"], done["history"], done.get("replicas_identical", True))

    o = cfg.optim
    if o.batch_size % env.world_size:
        raise ValueError(f"optim.batch_size {o.batch_size} is not divisible by the {env.world_size} DDP processes")
    per_rank_batch = o.batch_size // env.world_size
    channels_last = cfg.run.channels_last and device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.preserve_format

    torch.manual_seed(seed)  # same initial weights on every rank and every rerun
    model = build_model(imagenet_weights, arch=cfg.model.arch).to(device).to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    state = _resume(ckpt_path, fingerprint, model, optimizer, log, label)

    train_model = DistributedDataParallel(model) if env.enabled else model
    step, why = engine.make_step(train_model, optimizer, cfg, device, log=log, label=label, ddp=env.enabled)
    mode = step.mode
    # A last batch of one image would break BatchNorm in train mode (1x1 features at small inputs).
    drop_last = (-(-len(train_set) // env.world_size)) % per_rank_batch == 1
    batches, pipeline = engine.make_batches(cfg, train_set, val_set, per_rank_batch, env, seed, drop_last, device)
    log(
        f"{label}: {len(train_set)} training / {len(val_set)} validation images, step {mode} ({why}), "
        f"input path {pipeline}"
    )
    val_autocast = autocast_for(device, cfg.run.amp)

    for epoch in range(state.start_epoch, o.epochs):
        lr = learning_rate(o, epoch)
        step.set_lr(lr)
        train_model.train()
        t0 = time.perf_counter()
        epoch_batches = batches.epoch(epoch)
        if progress is not None:
            epoch_batches = progress(epoch_batches, desc=f"{label} epoch {epoch + 1}/{o.epochs}", total=len(batches))
        record = {"lr": lr, **_train_epoch(step, epoch_batches, device, memory_format, env, label, epoch)}
        if env.is_main:
            record.update(
                _validate(batches, model, val_set, max(per_rank_batch, 16), val_autocast, memory_format, label, epoch),
                epoch_seconds=time.perf_counter() - t0,
            )
            state.history.append(record)
            score = val_score(cfg.approach.select_metric, record)
            if score > state.best_score:
                state.best_score, state.best_epoch = score, epoch + 1
                state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            log(epoch_line(label, epoch, o.epochs, record))
            if (epoch + 1) % cfg.run.checkpoint_every == 0 and epoch + 1 < o.epochs:
                atomic_save(
                    {
                        "fingerprint": fingerprint,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "history": state.history,
                        "best_state": state.best_state,
                        "best_score": state.best_score,
                        "best_epoch": state.best_epoch,
                    },
                    ckpt_path,
                )
        barrier(env)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)

    identical = params_identical_across_ranks(env, model)
    best = state.best_state if env.is_main else {}
    if best is None:  # no epoch's validation score beat -inf: all were NaN
        raise TrainingDiverged(f"{label}: no epoch has a finite validation score; lower optim.lr")
    result = FitResult(best, state.best_epoch, state.history, identical)
    if env.is_main:
        write_final(final_path, fingerprint, result)
        ckpt_path.unlink(missing_ok=True)
        log(f"{label}: kept epoch {state.best_epoch} (best validation {cfg.approach.select_metric})")
    barrier(env)
    return result


def write_final(path: Path, fingerprint: str, result: FitResult) -> None:
    """`<stem>.final.pt`: a finished training, as fit reuses it and the pipeline reads it."""
    atomic_save(
        {
            "fingerprint": fingerprint,
            "state": result.state,
            "best_epoch": result.best_epoch,
            "history": result.history,
            "replicas_identical": result.replicas_identical,
        },
        path,
    )


def fmt_metric(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def epoch_line(label: str, epoch: int, epochs: int, record: dict) -> str:
    """The log line of a finished 0-based `epoch`, from its history record (fit and the grouped fit)."""
    return (
        f"{label} epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f} "
        f"acc {record['train_accuracy']:.3f} | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.3f} "
        f"auc {fmt_metric(record['val_auc'])} | {record['images_per_second']:.1f} img/s"
    )


def check_fingerprint(ckpt: dict, fingerprint: str, path: Path) -> None:
    if ckpt.get("fingerprint") != fingerprint:
        raise CheckpointMismatch(
            f"{path}: made with a different configuration or data; use another --out folder "
            f"or delete the checkpoints to start over"
        )


def run_fit(
    job: FitJob,
    *,
    cfg: TrainConfig,
    squares: np.ndarray,
    weights: Path | None,
    device: torch.device,
    env: DistEnv,
    fingerprint: str,
    log: Callable[[str], None],
    progress=None,
    engine: Engine = PLAIN,
) -> FitResult:
    """`fit` for one FitJob: the sequential path, and each of run.parallel's worker processes."""
    train_set, val_set = job.datasets(squares, cfg)
    return fit(
        cfg=cfg,
        train_set=train_set,
        val_set=val_set,
        imagenet_weights=weights,
        device=device,
        env=env,
        ckpt_stem=job.ckpt_stem,
        fingerprint=fingerprint,
        seed=job.seed,
        label=job.label,
        log=log,
        progress=progress,
        engine=engine,
    )
