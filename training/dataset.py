"""torch Dataset over the cached letterboxed squares, with the paper's augmentation.

Augmentation (random scaling about the centre, horizontal flip) acts on the letterboxed
square, between cxr_node's letterbox and normalise, so the un-augmented path is exactly
cxr_node.analysis.preprocess.to_model_input. Its randomness is drawn from
(seed, epoch, index): the same image gets the same transform whatever the worker count,
the DDP rank or an interruption and resume in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cxr_node.analysis.preprocess import normalise


@dataclass(frozen=True)
class Augment:
    scale_min: float = 0.9
    scale_max: float = 1.1
    hflip: float = 0.5

    def __call__(self, square: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        size = square.shape[0]
        scale = rng.uniform(self.scale_min, self.scale_max)
        flip = rng.random() < self.hflip
        if scale != 1.0:
            matrix = cv2.getRotationMatrix2D(((size - 1) / 2.0, (size - 1) / 2.0), 0.0, scale)
            square = cv2.warpAffine(square, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        if flip:
            square = square[:, ::-1]
        return np.ascontiguousarray(square)


class SquareDataset(Dataset):
    """Items (normalised (3, S, S) float32 tensor, int target) for a subset of the cached squares."""

    def __init__(
        self,
        squares: np.ndarray,
        indices: np.ndarray,
        targets: np.ndarray,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        self.squares = squares  # the whole cache, shared (not copied) between datasets
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64)
        if len(self.indices) != len(self.targets):
            raise ValueError("indices and targets differ in length")
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        square = self.squares[self.indices[i]].astype(np.float32)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(self.indices[i])])
            square = self.augment(square, rng)
        return torch.from_numpy(normalise(square)), int(self.targets[i])
