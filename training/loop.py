"""Train one binary DenseNet-161 (model A or B) for one repetition: a plain loop after
torchvision's references/classification/train.py, plus checkpoints, resume and model selection.

Checkpoint `<stem>.ckpt.pt` is rewritten after each epoch (model, optimizer, history, best
weights so far); when the model is done `<stem>.final.pt` keeps the selected weights and the
history, and the epoch checkpoint is removed. A rerun with the same configuration resumes
from whichever of the two exists; a different configuration is refused.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from cxr_node.analysis.models import build_model
from training.config import TrainConfig
from training.dataset import SquareDataset
from training.distributed import DistEnv, all_reduce_sum, barrier, params_identical_across_ranks
from training.metrics import safe_auc


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


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def predict(model: nn.Module, dataset: SquareDataset, device: torch.device, batch_size: int,
            *, amp: bool = False, channels_last: bool = False, num_workers: int = 0) -> tuple[np.ndarray, float]:
    """P(positive class) for every item, and the mean cross-entropy against its target."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    probs, loss_sum = [], 0.0
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(x)
        logits = logits.float().cpu()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        probs.append(torch.softmax(logits, dim=1)[:, 1].numpy())
    p = np.concatenate(probs) if probs else np.zeros(0)
    return p, loss_sum / max(1, len(dataset))


def _val_score(metric: str, record: dict) -> float:
    """Higher is better; an undefined AUC (one class in validation) falls back to -loss."""
    if metric == "loss" or (metric == "auc" and record["val_auc"] is None):
        return -record["val_loss"]
    return record[f"val_{metric}"]


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
) -> FitResult:
    ckpt_stem.parent.mkdir(parents=True, exist_ok=True)
    final_path = ckpt_stem.with_name(ckpt_stem.name + ".final.pt")
    ckpt_path = ckpt_stem.with_name(ckpt_stem.name + ".ckpt.pt")
    if final_path.is_file():
        done = torch.load(final_path, map_location="cpu", weights_only=False)
        _check_fingerprint(done, fingerprint, final_path)
        log(f"{label}: already trained ({final_path.name}), reusing it")
        return FitResult(done["state"], done["best_epoch"], done["history"], done.get("replicas_identical", True))

    o = cfg.optim
    if o.batch_size % env.world_size:
        raise ValueError(f"optim.batch_size {o.batch_size} is not divisible by the {env.world_size} DDP processes")
    per_rank_batch = o.batch_size // env.world_size
    channels_last = cfg.run.channels_last and device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.preserve_format

    torch.manual_seed(seed)  # same initial weights on every rank and every rerun
    model = build_model(imagenet_weights).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    start_epoch, history, best_state, best_score, best_epoch = 0, [], None, -float("inf"), 0
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        _check_fingerprint(ckpt, fingerprint, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, history = ckpt["epoch"], ckpt["history"]
        best_state, best_score, best_epoch = ckpt["best_state"], ckpt["best_score"], ckpt["best_epoch"]
        log(f"{label}: resuming after epoch {start_epoch} from {ckpt_path.name}")

    train_model = DistributedDataParallel(model) if env.enabled else model
    # DistributedSampler also serves one process: a (seed, epoch)-determined shuffle survives resume.
    sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed)
    # A last batch of one image would break BatchNorm in train mode (1x1 features at small inputs).
    drop_last = (len(train_set) // env.world_size) % per_rank_batch == 1
    loader = DataLoader(train_set, batch_size=per_rank_batch, sampler=sampler, drop_last=drop_last,
                        num_workers=cfg.run.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)

    for epoch in range(start_epoch, o.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)  # before the loader pickles the dataset to its workers
        train_model.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = loader
        if progress is not None:
            batches = progress(loader, desc=f"{label} epoch {epoch + 1}/{o.epochs}", total=len(loader))
        for x, y in batches:
            x = x.to(device, non_blocking=True, memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            with _autocast(device, cfg.run.amp):
                logits = train_model(x)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        loss_sum, correct, seen = all_reduce_sum(env, [loss_sum, float(correct), float(seen)])
        if not np.isfinite(loss_sum):
            raise TrainingDiverged(f"{label}: training loss is not finite in epoch {epoch + 1}; lower optim.lr")
        seconds = time.perf_counter() - t0

        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                  "train_images": int(seen), "train_seconds": seconds, "images_per_second": seen / seconds}
        if env.is_main:
            t_val = time.perf_counter()
            p, val_loss = predict(model, val_set, device, max(per_rank_batch, 16), amp=cfg.run.amp,
                                  channels_last=channels_last)
            if not np.all(np.isfinite(p)) or not np.isfinite(val_loss):
                raise TrainingDiverged(
                    f"{label}: non-finite validation outputs after epoch {epoch + 1} (BatchNorm statistics "
                    f"blew up); lower optim.lr, raise optim.batch_size or data.input_size")
            y_val = val_set.targets
            pred = (p >= 0.5).astype(np.int64)
            recalls = [float(np.mean(pred[y_val == c] == c)) for c in (0, 1) if np.any(y_val == c)]
            record.update(val_loss=val_loss, val_accuracy=float(np.mean(pred == y_val)),
                          val_balanced_accuracy=float(np.mean(recalls)), val_auc=safe_auc(y_val, p),
                          val_seconds=time.perf_counter() - t_val, epoch_seconds=time.perf_counter() - t0)
            history.append(record)
            score = _val_score(cfg.approach.select_metric, record)
            if score > best_score:
                best_score, best_epoch = score, epoch + 1
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            log(f"{label} epoch {epoch + 1}/{o.epochs}: train loss {record['train_loss']:.4f} "
                f"acc {record['train_accuracy']:.3f} | val loss {val_loss:.4f} acc {record['val_accuracy']:.3f} "
                f"auc {_fmt(record['val_auc'])} | {record['images_per_second']:.1f} img/s")
            _atomic_save({"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "epoch": epoch + 1, "history": history, "best_state": best_state,
                          "best_score": best_score, "best_epoch": best_epoch}, ckpt_path)
        barrier(env)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)

    identical = params_identical_across_ranks(env, model)
    result = FitResult(best_state if env.is_main else {}, best_epoch, history, identical)
    if env.is_main:
        _atomic_save({"fingerprint": fingerprint, "state": result.state, "best_epoch": best_epoch,
                      "history": history, "replicas_identical": identical}, final_path)
        ckpt_path.unlink(missing_ok=True)
        log(f"{label}: kept epoch {best_epoch} (best validation {cfg.approach.select_metric})")
    barrier(env)
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _check_fingerprint(ckpt: dict, fingerprint: str, path: Path) -> None:
    if ckpt.get("fingerprint") != fingerprint:
        raise CheckpointMismatch(
            f"{path}: made with a different configuration or data; use another --out folder "
            f"or delete the checkpoints to start over"
        )
