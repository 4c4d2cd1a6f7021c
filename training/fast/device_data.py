"""The device-resident input path: letterboxed squares uploaded once, augmented in batch on the device.

The squares come from `training.data.load_data` (cxr_node's decode + letterbox, the serving
code); this module uploads the ones a model needs to its device once, and every epoch
  * orders them as the DistributedSampler does (seeded by seed + epoch, sharded by DDP rank),
  * draws each image's scale / flip / rotation / shift from `augment_rng(seed, epoch, image)`,
    the very draws the DataLoader path makes,
  * warps the whole epoch with one `affine_grid` + `grid_sample` per chunk (bilinear, zero
    border: OpenCV's warpAffine, up to its 1/32-pixel fixed-point weights),
  * normalises each batch with cxr_node's `normalise_batch`.
No worker processes, no per-step host transfer: one index and one parameter upload per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from cxr_node.analysis.preprocess import normalise_batch
from training.config import TrainConfig
from training.dataset import Augment, SquareDataset, augment_rng
from training.distributed import DistEnv
from training.loop import _LoaderBatches

CHUNK = 256  # images warped per grid_sample call (bounds the temporary grid's memory)


def sampler_order(n: int, env: DistEnv, seed: int, epoch: int) -> np.ndarray:
    """The positions the DistributedSampler yields on this rank in this epoch (shuffle on)."""
    # It needs only len() of its dataset; the stubs ask for a Dataset.
    sampler: DistributedSampler[int] = DistributedSampler(
        range(n),  # type: ignore[arg-type]
        num_replicas=env.world_size,
        rank=env.rank,
        shuffle=True,
        seed=seed,
    )
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64, count=sampler.num_samples)


def affine_thetas(augment: Augment, size: int, seed: int, epoch: int, images: np.ndarray) -> np.ndarray:
    """(N, 2, 3) float32 `affine_grid` matrices (align_corners=True) that reproduce, for each
    image, OpenCV's warp by `Augment.matrix` followed by the optional horizontal flip.

    grid_sample maps output to input in [-1, 1] coordinates; pixel p is c * (n + 1) with
    c = (size - 1) / 2. OpenCV maps source to destination with A, b; the flip maps n -> -n.
    So the source of output n is  A^-1 F n + (A^-1 (c - b) - c) / c.
    """
    c = (size - 1) / 2.0
    thetas = np.empty((len(images), 2, 3), dtype=np.float64)
    for k, image in enumerate(images):
        scale, flip, angle, tx, ty = augment.draw(augment_rng(seed, epoch, image))
        m = Augment.matrix(size, scale, angle, tx, ty)
        a_inv = np.linalg.inv(m[:, :2])
        f = np.diag([-1.0 if flip else 1.0, 1.0])
        thetas[k, :, :2] = a_inv @ f
        thetas[k, :, 2] = (a_inv @ (np.array([c, c]) - m[:, 2]) - c) / c
    return thetas.astype(np.float32)


def warp(squares: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """(N, S, S) squares warped by (N, 2, 3) thetas: bilinear, zeros outside."""
    n, s, _ = squares.shape
    grid = F.affine_grid(thetas, [n, 1, s, s], align_corners=True)
    return F.grid_sample(squares[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]


class DeviceSet:
    """One model's split (training or validation) as tensors on the device."""

    def __init__(self, dataset: SquareDataset, device: torch.device) -> None:
        self.dataset = dataset
        self.device = device
        squares = np.ascontiguousarray(dataset.squares[dataset.indices], dtype=np.float32)
        self.squares = torch.from_numpy(squares).to(device)
        self.targets = torch.from_numpy(dataset.targets).to(device)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def nbytes(self) -> int:
        return self.squares.numel() * self.squares.element_size()


class DeviceBatches:
    """Per-epoch batches (normalised (B, 3, S, S) input, targets) from a DeviceSet."""

    def __init__(self, data: DeviceSet, batch_size: int, env: DistEnv, seed: int, drop_last: bool) -> None:
        self.data, self.batch_size, self.env, self.seed, self.drop_last = data, batch_size, env, seed, drop_last
        n_rank = -(-len(data) // env.world_size)  # DistributedSampler pads to a multiple of the ranks
        self.n_batches = n_rank // batch_size if drop_last else -(-n_rank // batch_size)

    def __len__(self) -> int:
        return self.n_batches

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        squares, targets = self.epoch_squares(epoch)
        for b in range(self.n_batches):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield normalise_batch(squares[sl]), targets[sl]

    def epoch_squares(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's augmented squares (n, S, S) and targets in training order (not normalised)."""
        ds, dev = self.data.dataset, self.data.device
        order = sampler_order(len(self.data), self.env, self.seed, epoch)
        order_t = torch.from_numpy(order).to(dev)
        squares = self.data.squares[order_t]
        if ds.augment is not None:
            size = squares.shape[-1]
            thetas = torch.from_numpy(affine_thetas(ds.augment, size, ds.seed, epoch, ds.indices[order])).to(dev)
            squares = torch.cat(
                [warp(squares[i : i + CHUNK], thetas[i : i + CHUNK]) for i in range(0, len(order), CHUNK)]
            )
        return squares, self.data.targets[order_t]


@torch.no_grad()
def predict_on_device(
    model: nn.Module, data: DeviceSet, batch_size: int, *, autocast, memory_format=torch.preserve_format
) -> tuple[np.ndarray, float]:
    """P(positive class) for every image and the mean cross-entropy; one host transfer at the end."""
    model.eval()
    probs, loss_sum = [], torch.zeros((), device=data.device, dtype=torch.float64)
    for i in range(0, len(data), batch_size):
        x = normalise_batch(data.squares[i : i + batch_size]).contiguous(memory_format=memory_format)
        y = data.targets[i : i + batch_size]
        with autocast:
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        probs.append(torch.softmax(logits, dim=1)[:, 1])
    p = torch.cat(probs).cpu().numpy() if probs else np.zeros(0, dtype=np.float32)
    return p, float(loss_sum) / max(1, len(data))


def fits_on_device(nbytes: int, device: torch.device, parallel: int) -> bool:
    """Device path when every process's squares take at most a quarter of the device memory."""
    if device.type != "cuda":
        return True  # the squares already sit in host memory; the device path only adds a copy
    total = torch.cuda.get_device_properties(device).total_memory
    return nbytes * parallel <= total // 4


def resolve_pipeline(cfg: TrainConfig, train_set: SquareDataset, val_set: SquareDataset, device: torch.device) -> str:
    """data.pipeline, with "auto" the device path when the squares fit (fits_on_device)."""
    if cfg.data.pipeline != "auto":
        return cfg.data.pipeline
    size = train_set.squares.shape[-1]
    nbytes = (len(train_set) + len(val_set)) * size * size * 4
    return "device" if fits_on_device(nbytes, device, cfg.run.parallel) else "loader"


class DevicePipeline:
    """data.pipeline = "device" for `fit`: squares uploaded once, augmented on the device; the
    same calls as the loop's DataLoader batches (len, epoch, predict_val)."""

    def __init__(self, train_set, val_set, batch_size, env, seed, drop_last, cfg, device):
        self.train = DeviceBatches(DeviceSet(train_set, device), batch_size, env, seed, drop_last)
        self.val = DeviceSet(val_set, device)

    def __len__(self) -> int:
        return len(self.train)

    def epoch(self, epoch: int):
        return self.train.epoch(epoch)

    def predict_val(self, model, batch_size, autocast, memory_format):
        return predict_on_device(model, self.val, batch_size, autocast=autocast, memory_format=memory_format)


def device_or_loader_batches(cfg: TrainConfig, train_set, val_set, batch_size, env, seed, drop_last, device):
    """The Engine's batches: the device path or the loop's DataLoader, as data.pipeline resolves."""
    pipeline = resolve_pipeline(cfg, train_set, val_set, device)
    kind = DevicePipeline if pipeline == "device" else _LoaderBatches
    return kind(train_set, val_set, batch_size, env, seed, drop_last, cfg, device), pipeline
