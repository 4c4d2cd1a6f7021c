"""Float image in [0, 1] -> model tensor. The single preprocessing path for training and serving."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_INPUT_SIZE = 224


@dataclass(frozen=True)
class Letterbox:
    """Where the source image sits inside the square model input (needed to map CAMs back)."""

    size: int
    top: int
    left: int
    height: int
    width: int
    source_shape: tuple[int, int]


def letterbox(img: np.ndarray, size: int = DEFAULT_INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio so the long side is `size`, pad with black to a square."""
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grey-scale image, got shape {img.shape}")
    if size < 32:
        raise ValueError(f"input size {size} is too small (DenseNet-161 needs at least 32)")
    rows, cols = img.shape
    scale = size / max(rows, cols)
    h, w = max(1, round(rows * scale)), max(1, round(cols * scale))
    # INTER_AREA averages when shrinking (a 2000 px radiograph to 224) instead of aliasing.
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(img.astype(np.float32, copy=False), (w, h), interpolation=interp)
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((size, size), dtype=np.float32)
    out[top : top + h, left : left + w] = resized
    return out, Letterbox(size, top, left, h, w, (rows, cols))


def square_input(img: np.ndarray, size: int = DEFAULT_INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Letterbox to a size x size square with values clipped to [0, 1].

    The clip runs on the small square: letterboxing (area averaging, zero padding) keeps
    values of an image already in [0, 1] (every decoder here delivers that) inside it, so
    this equals clipping the source first, without a 14 MB copy per 2k radiograph (that copy
    and its page faults were a third of the preprocessing time, and scaled badly over threads).
    """
    square, box = letterbox(img, size)
    np.clip(square, 0.0, 1.0, out=square)
    return square, box


def normalise(square: np.ndarray) -> np.ndarray:
    """(S, S) grey in [0, 1] -> (3, S, S) float32 with ImageNet mean/std per channel."""
    rgb = np.broadcast_to(square[None, :, :], (3, *square.shape))
    return ((rgb - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]).astype(np.float32)


def normalise_batch(squares):
    """normalise() for a (N, S, S) float32 torch tensor on any device -> (N, 3, S, S): the same
    float32 subtract and divide, so a GPU can do it after copying 1 channel instead of 3."""
    import torch

    mean = torch.as_tensor(IMAGENET_MEAN, device=squares.device)[None, :, None, None]
    std = torch.as_tensor(IMAGENET_STD, device=squares.device)[None, :, None, None]
    return (squares[:, None, :, :] - mean) / std


def to_model_input(img: np.ndarray, size: int = DEFAULT_INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """The whole path: letterbox, clip, normalise. Returns (3, S, S) float32 and the placement."""
    square, box = square_input(img, size)
    return normalise(square), box


def map_to_source(grid: np.ndarray, box: Letterbox) -> np.ndarray:
    """Upsample a map over the square input (any resolution) back onto the source image grid."""
    full = cv2.resize(grid.astype(np.float32), (box.size, box.size), interpolation=cv2.INTER_LINEAR)
    crop = full[box.top : box.top + box.height, box.left : box.left + box.width]
    rows, cols = box.source_shape
    return cv2.resize(crop, (cols, rows), interpolation=cv2.INTER_LINEAR)
