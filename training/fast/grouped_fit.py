"""`run.parallel = N` with `run.parallel_mode = "grouped"`: N trainings as one grouped network
(training.fast.grouped) in this process, stepping in lockstep on one device.

Each training keeps what `fit` gives it: its own initial weights (torch.manual_seed(seed) then
build_model, as fit does), its own training and validation images, its own shuffling and
augmentation draws (DeviceBatches, seeded as fit seeds it), SGD with the configured rate and
momentum (element-wise, so one SGD over the grouped tensors is N independent SGDs), batch
norm statistics over its own batch, and model selection on its own validation score.

What differs from `fit` (and from `run.parallel_mode = "processes"`, which gives fit's exact
results): all N take the same number of steps per epoch, the smallest training set's
floor(n / batch); each epoch's remaining images of a larger set (a fresh random few each
epoch, logged) are left out of that epoch. Grouped convolutions also round differently from
single ones (equal in float64: tests/test_train_grouped.py).

When done, each training's `<stem>.final.pt` is what `fit` writes, so the pipeline reuses it.
A checkpoint of the whole group (`group-<hash>.ckpt.pt`, every run.checkpoint_every epochs)
makes an interrupted run resume.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxr_node.analysis.models import build_model
from cxr_node.analysis.preprocess import normalise_batch
from training.config import TrainConfig
from training.distributed import DistEnv
from training.fast.device_data import DeviceBatches, DeviceSet
from training.fast.grouped import GroupedDenseNet
from training.fast.step import make_step
from training.loop import (
    FitJob,
    FitResult,
    Progress,
    TrainingDiverged,
    atomic_save,
    check_fingerprint,
    epoch_line,
    learning_rate,
    val_score,
    validation_record,
    write_final,
)
from training.step import at_least_float32, autocast_for

VAL_BATCH = 32  # validation images per model per forward


def grouped_objective(label_smoothing: float):
    """(logits (N, B, C), targets (N, B)) -> (sum of the N mean losses, the N losses, N correct counts).
    Summing keeps each model's gradient that of its own mean loss: no parameter is shared."""

    def objective(logits: torch.Tensor, y: torch.Tensor):
        n, b, c = logits.shape
        per = F.cross_entropy(
            at_least_float32(logits).reshape(n * b, c),
            y.reshape(n * b),
            reduction="none",
            label_smoothing=label_smoothing,
        )
        per = per.view(n, b).mean(1)
        return per.sum(), per.detach(), (logits.detach().argmax(-1) == y).sum(1)

    return objective


@dataclass
class _Member:
    job: FitJob
    batches: DeviceBatches
    val_targets: np.ndarray
    progress: Progress


def group_checkpoint(jobs: Sequence[FitJob]) -> Path:
    names = ",".join(j.ckpt_stem.name for j in jobs)
    return jobs[0].ckpt_stem.with_name(f"group-{hashlib.sha256(names.encode()).hexdigest()[:12]}.ckpt.pt")


@torch.no_grad()
def predict_grouped(
    model: GroupedDenseNet, squares: torch.Tensor, targets: torch.Tensor, lengths: Sequence[int], *, autocast
) -> tuple[list[np.ndarray], list[float]]:
    """Per model: P(positive) for its first `lengths[n]` images of (N, V, S, S) squares, and the mean loss."""
    model.eval()
    n, v = squares.shape[:2]
    probs, losses = [], []
    for i in range(0, v, VAL_BATCH):
        sq = squares[:, i : i + VAL_BATCH]
        b = sq.shape[1]
        x = normalise_batch(sq.reshape(n * b, *sq.shape[2:])).view(n, b, 3, *sq.shape[2:])
        with autocast:
            logits = model(x).float()
        losses.append(F.cross_entropy(logits.reshape(n * b, -1), targets[:, i : i + b].reshape(-1), reduction="none"))
        probs.append(torch.softmax(logits, dim=-1)[..., 1])
    p_all = torch.cat(probs, dim=1).cpu().numpy()
    loss_all = torch.cat([loss.view(n, -1) for loss in losses], dim=1).double().cpu().numpy()
    return (
        [p_all[k, : lengths[k]] for k in range(n)],
        [float(loss_all[k, : lengths[k]].mean()) if lengths[k] else 0.0 for k in range(n)],
    )


def _padded(sets: Sequence[DeviceSet]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V, S, S) squares and (N, V) targets, each set zero-padded to the longest."""
    v = max(len(s) for s in sets)
    sq = torch.zeros((len(sets), v, *sets[0].squares.shape[1:]), dtype=torch.float32, device=sets[0].device)
    tg = torch.zeros((len(sets), v), dtype=torch.int64, device=sets[0].device)
    for k, s in enumerate(sets):
        sq[k, : len(s)] = s.squares
        tg[k, : len(s)] = s.targets
    return sq, tg


def fit_grouped(
    jobs: Sequence[FitJob],
    *,
    cfg: TrainConfig,
    squares: np.ndarray,
    weights: Path | None,
    device: torch.device,
    fingerprint: str,
    log: Callable[[str], None],
) -> None:
    """Train `jobs` as one grouped network and write each one's `<stem>.final.pt`."""
    o, n = cfg.optim, len(jobs)
    batch = o.batch_size
    channels_last = cfg.run.channels_last and device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    members = []
    for job in jobs:
        torch.manual_seed(job.seed)  # fit's initial weights for this training
        members.append(build_model(weights, arch=cfg.model.arch))
    model = GroupedDenseNet(members, cfg.run.grouped_pointwise).to(device).to(memory_format=memory_format)
    del members
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    ckpt_path = group_checkpoint(jobs)
    label = f"group of {n} ({jobs[0].label} .. {jobs[-1].label})"

    env = DistEnv()
    group: list[_Member] = []
    val_sets = []
    for job in jobs:
        train_set, val_set = job.datasets(squares, cfg)
        group.append(
            _Member(
                job,
                DeviceBatches(DeviceSet(train_set, device), batch, env, job.seed, True),
                val_set.targets,
                Progress(),
            )
        )
        val_sets.append(DeviceSet(val_set, device))
    val_squares, val_targets = _padded(val_sets)
    val_lengths = [len(s) for s in val_sets]
    del val_sets
    steps = min(len(m.batches) for m in group)
    if steps < 1:
        raise ValueError(f"{label}: a training set has fewer images than optim.batch_size {batch}")
    used = steps * batch

    start = 0
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        check_fingerprint(ckpt, fingerprint, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for m, p in zip(group, ckpt["progress"], strict=True):
            m.progress = p
        start = ckpt["epoch"]
        log(f"{label}: resuming after epoch {start} from {ckpt_path.name}")

    step, why = make_step(
        model, optimizer, cfg, device, log=log, label=label, objective=grouped_objective(o.label_smoothing)
    )
    mode = step.mode
    left_out = ", ".join(f"{len(m.batches.data) - used}" for m in group)
    log(
        f"{label}: one grouped network (1x1 convolutions as {cfg.run.grouped_pointwise}), {steps} steps of {batch} images per model per epoch "
        f"(images left out of each epoch, per model: {left_out}), step {mode} ({why}), input path device"
    )
    autocast = autocast_for(device, cfg.run.amp)

    for epoch in range(start, o.epochs):
        lr = learning_rate(o, epoch)
        step.set_lr(lr)
        model.train()
        t0, started = time.perf_counter(), time.time()
        drawn = [m.batches.epoch_squares(epoch) for m in group]
        epoch_squares = torch.stack([sq[:used] for sq, _ in drawn])  # (N, used, S, S)
        epoch_targets = torch.stack([tg[:used] for _, tg in drawn])
        del drawn
        size = epoch_squares.shape[-1]
        loss_sum = torch.zeros(n, device=device, dtype=torch.float64)
        correct = torch.zeros(n, device=device, dtype=torch.int64)
        for s in range(steps):
            sl = slice(s * batch, (s + 1) * batch)
            x = normalise_batch(epoch_squares[:, sl].reshape(n * batch, size, size)).view(n, batch, 3, size, size)
            loss, right = step(x, epoch_targets[:, sl])
            loss_sum += loss.double() * batch
            correct += right
        losses, rights = (loss_sum / used).tolist(), correct.tolist()  # the epoch's one host read
        seconds = time.perf_counter() - t0
        ended = time.time()
        for m, loss_m in zip(group, losses, strict=True):
            if not np.isfinite(loss_m):
                raise TrainingDiverged(
                    f"{m.job.label}: training loss is not finite in epoch {epoch + 1}; lower optim.lr"
                )
        del epoch_squares, epoch_targets
        t_val = time.perf_counter()
        probs, val_losses = predict_grouped(model, val_squares, val_targets, val_lengths, autocast=autocast)
        val_seconds = time.perf_counter() - t_val
        state = None
        for k, m in enumerate(group):
            record = {
                "lr": lr,
                "epoch": epoch + 1,
                "train_loss": losses[k],
                "train_accuracy": rights[k] / used,
                "train_images": used,
                "train_seconds": seconds,  # the group's: all N trained in this time
                "images_per_second": used / seconds,
                "train_start_unix_seconds": started,
                "train_end_unix_seconds": ended,
                **validation_record(probs[k], val_losses[k], m.val_targets, m.job.label, epoch, val_seconds),
                "epoch_seconds": time.perf_counter() - t0,
            }
            if device.type == "cuda":
                record["device_memory_peak_bytes"] = torch.cuda.max_memory_allocated(device)
            pr = m.progress
            pr.history.append(record)
            score = val_score(cfg.approach.select_metric, record)
            if score > pr.best_score:
                state = model.state_dict() if state is None else state
                pr.best_score, pr.best_epoch = score, epoch + 1
                pr.best_state = {key: t.detach().cpu().clone() for key, t in model.member_state(k, state).items()}
            log(f"{epoch_line(m.job.label, epoch, o.epochs, record)} ({n * used / seconds:.1f} for the group)")
        if (epoch + 1) % cfg.run.checkpoint_every == 0 and epoch + 1 < o.epochs:
            atomic_save(
                {
                    "fingerprint": fingerprint,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "progress": [m.progress for m in group],
                },
                ckpt_path,
            )

    for m in group:
        pr = m.progress
        if pr.best_state is None:
            raise TrainingDiverged(f"{m.job.label}: no epoch has a finite validation score; lower optim.lr")
        write_final(m.job.final_path, fingerprint, FitResult(pr.best_state, pr.best_epoch, pr.history))
        log(f"{m.job.label}: kept epoch {pr.best_epoch} (best validation {cfg.approach.select_metric})")
    ckpt_path.unlink(missing_ok=True)


def run_grouped(
    jobs: Sequence[FitJob],
    *,
    cfg: TrainConfig,
    squares: np.ndarray,
    weights: Path | None,
    device: torch.device,
    fingerprint: str,
    log: Callable[[str], None],
    size: int,
) -> None:
    """Every unfinished job, in groups of `size` (longest training sets together), one group after another."""
    todo = sorted((j for j in jobs if not j.final_path.is_file()), key=lambda j: -len(j.train_idx))
    if not todo:
        return
    groups = [todo[i : i + size] for i in range(0, len(todo), size)]
    log(
        f"run.parallel = {size}, grouped: {len(todo)} training(s) as {len(groups)} grouped network(s) "
        f"of up to {size} on {device}"
    )
    for g in groups:
        fit_grouped(g, cfg=cfg, squares=squares, weights=weights, device=device, fingerprint=fingerprint, log=log)
