"""Decode a radiograph into a display-ready float image in [0, 1].

One function for serving and training: the DICOM grey-scale pipeline
(Modality LUT -> VOI LUT / window -> polarity) and plain PNG/JPEG files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi

# Percentiles used when the image carries no VOI: robust to burned-in text
# and collimator edges, which would otherwise dominate a min/max window.
ROBUST_WINDOW_PERCENTILES = (0.5, 99.5)

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")


class PixelDataError(ValueError):
    """The pixel data cannot be turned into a grey-scale image; message names the attribute."""


@dataclass(frozen=True)
class FloatImage:
    """A 2-D float32 image in [0, 1] where 1 is displayed white (bone), plus a validity mask."""

    pixels: np.ndarray  # (rows, cols) float32
    mask: np.ndarray  # (rows, cols) bool, False where Pixel Padding Value marked the pixel
    window: str  # how the VOI was chosen, for logs and reports

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape


def _padding_mask(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    pad = ds.get("PixelPaddingValue")
    if pad is None:
        return np.ones(stored.shape, dtype=bool)
    pad = int(pad)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        return stored != pad
    lo, hi = sorted((pad, int(limit)))
    return ~((stored >= lo) & (stored <= hi))


def _linear_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing, output scaled to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise PixelDataError(f"WindowWidth {width} <= 0 is invalid for VOI LUT Function LINEAR_EXACT")
        return np.clip((values - (center - width / 2.0)) / width, 0.0, 1.0)
    # LINEAR: the standard's (c - 0.5) / (w - 1) form; width must be >= 1.
    if width < 1:
        raise PixelDataError(f"WindowWidth {width} < 1 is invalid for VOI LUT Function LINEAR")
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _first(value) -> float:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0])
    return float(value)


def _robust_window(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    valid = values[mask] if mask.any() else values.ravel()
    lo, hi = np.percentile(valid, ROBUST_WINDOW_PERCENTILES)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def dataset_to_float(ds: Dataset) -> FloatImage:
    """Modality LUT, VOI (sequence, first window, or robust percentiles), polarity, padding mask."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise PixelDataError(
            f"PhotometricInterpretation {photometric or '(missing)'!r} is not grey-scale "
            f"({' or '.join(SUPPORTED_PHOTOMETRIC)} expected)"
        )
    if "PixelData" not in ds:
        raise PixelDataError("PixelData (7FE0,0010) is missing")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken/unsupported pixel data
        raise PixelDataError(
            f"PixelData cannot be decoded ({ds.file_meta.get('TransferSyntaxUID', '?')}): {exc}"
        ) from exc
    if stored.ndim == 3:  # multi-frame: a radiograph has one frame; take the first
        stored = stored[0]
    if stored.ndim != 2:
        raise PixelDataError(f"PixelData has shape {stored.shape}; a single grey-scale frame is expected")

    mask = _padding_mask(ds, stored)
    modality = apply_modality_lut(stored, ds)  # stays integer unless rescaled
    values = np.asarray(modality, dtype=np.float64)

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        item = ds.VOILUTSequence[0]
        out = apply_voi(modality, ds, index=0)
        bits = int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16
        img = np.asarray(out, dtype=np.float64) / float(2**bits - 1)
        window = "VOI LUT sequence"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        img = _linear_window(values, center, width, function)
        window = f"window C={center:g} W={width:g} {function}"
    else:
        img = _robust_window(values, mask)
        window = "robust percentile window"

    # MONOCHROME1 and Presentation LUT Shape INVERSE both mean "minimum is white";
    # DX requires INVERSE with MONOCHROME1, so they mark the same inversion, not two.
    inverse = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).strip() == "INVERSE"
    if inverse:
        img = 1.0 - img
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    img[~mask] = 0.0
    return FloatImage(pixels=img, mask=mask, window=window)


def read_image(path: str | Path) -> FloatImage:
    """Read a DICOM file or an 8/16-bit PNG/JPEG as a FloatImage (used by infer and training)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise PixelDataError(f"{path}: not a readable image")
        if raw.ndim == 3:
            raw = cv2.cvtColor(raw[..., :3], cv2.COLOR_BGR2GRAY)
        # by name: numpy's stubs cannot narrow a dtype to integer through issubdtype
        scale = float(np.iinfo(raw.dtype.name).max) if np.issubdtype(raw.dtype, np.integer) else 1.0
        img = np.clip(raw.astype(np.float32) / scale, 0.0, 1.0)
        return FloatImage(pixels=img, mask=np.ones(img.shape, dtype=bool), window="file values")
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise PixelDataError(f"{path}: not a readable DICOM file: {exc}") from exc
    try:
        return dataset_to_float(ds)
    except PixelDataError as exc:
        raise PixelDataError(f"{path}: {exc}") from exc
