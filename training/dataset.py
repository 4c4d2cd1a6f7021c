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
    rotate: float = 0.0  # degrees, drawn in [-rotate, rotate]
    translate: float = 0.0  # fraction of the side, drawn in [-translate, translate] per axis

    def draw(self, rng: np.random.Generator) -> tuple[float, bool, float, float, float]:
        """(scale, flip, angle in degrees, shift x, shift y as fractions). Rotation and shift are
        drawn only when enabled, so the paper's scale + flip draws stay what they always were."""
        scale = rng.uniform(self.scale_min, self.scale_max)
        flip = bool(rng.random() < self.hflip)
        angle = rng.uniform(-self.rotate, self.rotate) if self.rotate else 0.0
        tx, ty = rng.uniform(-self.translate, self.translate, 2) if self.translate else (0.0, 0.0)
        return float(scale), flip, float(angle), float(tx), float(ty)

    @staticmethod
    def matrix(size: int, scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
        """OpenCV's 2x3 source -> destination matrix: scale and rotate about the centre, then shift."""
        m = cv2.getRotationMatrix2D(((size - 1) / 2.0, (size - 1) / 2.0), angle, scale)
        m[:, 2] += np.array([tx * size, ty * size])
        return m

    def __call__(self, square: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        size = square.shape[0]
        scale, flip, angle, tx, ty = self.draw(rng)
        if scale != 1.0 or angle or tx or ty:
            square = cv2.warpAffine(
                square,
                self.matrix(size, scale, angle, tx, ty),
                (size, size),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0.0,
            )
        if flip:
            square = square[:, ::-1]
        return np.ascontiguousarray(square)


def augment_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The one source of an image's augmentation draws, whichever path applies them."""
    return np.random.default_rng([seed, epoch, int(index)])


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
            rng = augment_rng(self.seed, self.epoch, self.indices[i])
            square = self.augment(square, rng)
        return torch.from_numpy(normalise(square)), int(self.targets[i])
