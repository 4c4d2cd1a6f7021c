"""Decode a radiograph into a display-ready float image in [0, 1].

One function for serving and training: the DICOM grey-scale pipeline
(Modality LUT -> VOI LUT / window -> polarity) and plain PNG/JPEG files.

Two steps, so that how the pixel data is decoded can change without touching the rest:
`decode_stored` turns PixelData into stored values; `grey_from_stored` applies the header to them.

Header oddities are decided here, never left to fail later: a VOI LUT, window or rescale
that cannot be right (WindowWidth < 1, a VOI LUT item without or with a malformed LUT,
non-numeric or non-finite values) is ignored in favour of the node's robust percentile
window, and a note says so (it travels to the SR and SC). RescaleSlope 0 maps every pixel to
one value (PS3.3 C.11.1.1.2): that image holds nothing to analyse (NotAnalysable).
Every image also carries `info`, what cxr_node.decoding.information checks before analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from cxr_node.decoding.reduced import Resolution, Stored, decode_pixels
from cxr_node.errors import NotAnalysable

# Percentiles used when the image carries no VOI: robust to burned-in text
# and collimator edges, which would otherwise dominate a min/max window.
ROBUST_WINDOW_PERCENTILES = (0.5, 99.5)
ROBUST_WINDOW = "node's robust window"

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

# The information measures use at most about this many pixels (a regular subsample): the
# percentiles of a 3000 x 3000 image then cost ~1/14 of the full image's (0.19 s vs 2.6 s on the
# shared 2-core VM at load average 19, 2026-12-04) and move by < 0.001.
MEASURE_PIXELS = 1_000_000
SPREAD_PERCENTILES = (1.0, 99.0)
GREY_LEVELS = 256  # the information measures count 8-bit display levels


class PixelDataError(ValueError):
    """The pixel data cannot be turned into a grey-scale image; message names the attribute."""


@dataclass(frozen=True)
class ImageInfo:
    """How much the decoded image can show, measured on its display values (cxr_node.decoding.information)."""

    rows: int  # of the image as sent (Rows / Columns), whatever resolution it was decoded at
    cols: int
    valid_fraction: float  # share of pixels not marked as padding
    nonfinite: int  # pixels whose value is NaN or infinite after the grey-scale pipeline
    spread: float  # 99th - 1st percentile of the displayed grey values of valid pixels, in [0, 1]
    grey_levels: int  # distinct 8-bit display levels among valid pixels (1..256)

    @property
    def aspect_ratio(self) -> float:
        return max(self.rows, self.cols) / max(1, min(self.rows, self.cols))


@dataclass(frozen=True)
class FloatImage:
    """A 2-D float32 image in [0, 1] where 1 is displayed white (bone), plus a validity mask."""

    pixels: np.ndarray  # (rows, cols) float32
    mask: np.ndarray  # (rows, cols) bool, False where Pixel Padding Value marked the pixel
    window: str  # how the VOI was chosen, for logs and reports
    # Short sentences for the reader of the result: header attributes the node ignored and the
    # window it used instead ("window: node's robust window (WindowWidth 0 ignored)").
    notes: tuple[str, ...] = ()
    info: ImageInfo | None = field(default=None, compare=False)
    reduction: int = 1  # decoded at 1/reduction of the stored rows and columns (reduced.py)

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape


def _raw_text(ds: Dataset, keyword: str) -> str:
    """The attribute's value as sent, for a note, when pydicom cannot convert it."""
    try:
        raw = ds.get_item(keyword).value
    except Exception:
        return "?"
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    text = text.strip(" \x00")
    return repr(text[:16]) if text else "empty"


def header_number(ds: Dataset, keyword: str) -> tuple[float | None, str | None]:
    """(first value as a finite float, its text) of a numeric attribute; (None, text) when the
    value is unusable (non-numeric, empty, NaN, infinite); (None, None) when absent."""
    if keyword not in ds:
        return None, None
    try:
        value = ds[keyword].value
    except Exception:  # pydicom converts lazily and raises ValueError (or others) on non-numbers
        return None, _raw_text(ds, keyword)
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None, "empty"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, repr(str(value)[:16])
    if not math.isfinite(number):
        return None, f"{number}"
    return number, f"{number:g}"


def _padding_mask(ds: Dataset, stored: np.ndarray, notes: list[str]) -> np.ndarray:
    pad, pad_text = header_number(ds, "PixelPaddingValue")
    if pad is None:
        if pad_text is not None:
            notes.append(f"PixelPaddingValue {pad_text} ignored: no pixel is treated as padding")
        return np.ones(stored.shape, dtype=bool)
    limit, _ = header_number(ds, "PixelPaddingRangeLimit")
    if limit is None:
        return stored != int(pad)
    lo, hi = sorted((int(pad), int(limit)))
    return ~((stored >= lo) & (stored <= hi))


def _linear_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing, output scaled to [0, 1]; the width was checked by _window."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - (center - width / 2.0)) / width, 0.0, 1.0)
    # LINEAR: the standard's (c - 0.5) / (w - 1) form; width must be >= 1 (and > 1 to divide).
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def robust_window(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The node's own window: the 0.5th..99.5th percentile of the valid pixels onto [0, 1]."""
    valid = values[mask] if mask.any() else values.ravel()
    valid = valid[np.isfinite(valid)]
    if valid.size == 0:
        return np.zeros(values.shape, dtype=np.float64)
    lo, hi = np.percentile(valid, ROBUST_WINDOW_PERCENTILES)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _modality(ds: Dataset, stored: np.ndarray, notes: list[str]) -> tuple[np.ndarray, bool]:
    """Modality LUT (PS3.3 C.11.1): (values, whether the header's VOI still applies to them)."""
    if ds.get("ModalityLUTSequence"):
        item = ds.ModalityLUTSequence[0]
        problem = _lut_problem(item)
        if problem is None:
            return _apply_lut(item, stored), True
        notes.append(f"Modality LUT (ModalityLUTSequence) ignored: {problem}")
        return stored.astype(np.float64), False
    slope, slope_text = header_number(ds, "RescaleSlope")
    intercept, intercept_text = header_number(ds, "RescaleIntercept")
    broken = [
        f"{keyword} {text}"
        for keyword, number, text in (
            ("RescaleSlope", slope, slope_text),
            ("RescaleIntercept", intercept, intercept_text),
        )
        if text is not None and number is None
    ]
    if broken:
        notes.append(f"{' and '.join(broken)} ignored: the stored values are used as they are")
        return stored.astype(np.float64), False
    if slope == 0:
        raise NotAnalysable(
            "rescale-slope-zero",
            f"RescaleSlope is 0: the Modality LUT maps every pixel to the same value ({intercept or 0:g})",
        )
    values = stored.astype(np.float64)
    if slope is not None and slope != 1:
        values = values * slope
    if intercept:
        values = values + intercept
    return values, True


def _lut_problem(item: Dataset) -> str | None:
    """Why a LUT item (VOI or Modality LUT Sequence) cannot be applied, or None."""
    try:
        if "LUTDescriptor" not in item:
            return "it has no LUTDescriptor"
        if "LUTData" not in item or item.get("LUTData") in (None, b"", []):
            return "it has no LUTData"
        descriptor = _descriptor(item)
        if descriptor is None:
            return "its LUTDescriptor is not three numbers"
        entries, _first, bits = descriptor
        if not 8 <= bits <= 16:
            return f"its LUTDescriptor gives {bits} bits per entry (8 to 16 allowed)"
        count = len(_lut_data(item))
    except Exception:  # a value pydicom cannot convert
        return "it cannot be read"
    if count != entries:
        return f"its LUTData holds {count} entries, its LUTDescriptor says {entries}"
    return None


def _descriptor(item: Dataset) -> tuple[int, int, int] | None:
    """(entries, first input value mapped, bits per entry) of a LUT item, or None."""
    try:
        values = [int(v) for v in item.LUTDescriptor]
    except Exception:
        return None
    if len(values) != 3:
        return None
    entries, first, bits = values
    # PS3.3 C.11.1.1: 0 entries means 2^16 (pydicom reads the first mapped value as US or SS).
    return entries or 65536, first, bits


def _lut_data(item: Dataset) -> np.ndarray:
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit words, little endian in every transfer syntax in use
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2")
    return np.asarray(data if isinstance(data, (list, tuple, MultiValue)) else [data], dtype=np.float64)


def _apply_lut(item: Dataset, values: np.ndarray) -> np.ndarray:
    """Look values up in a checked LUT item: below the first input -> first entry, above -> last."""
    descriptor = _descriptor(item)
    assert descriptor is not None  # _lut_problem passed
    entries, first, _bits = descriptor
    index = np.clip(np.rint(values) - first, 0, entries - 1).astype(np.int64)
    return np.asarray(_lut_data(item), dtype=np.float64)[index]


def _voi(
    ds: Dataset, values: np.ndarray, mask: np.ndarray, header_voi: bool, notes: list[str]
) -> tuple[np.ndarray, str]:
    """VOI LUT or window (PS3.3 C.11.2); the node's robust window when the header has none, a
    broken one, or one that shows an image with contrast as a single grey."""
    ignored: list[str] = []
    chosen: tuple[np.ndarray, str] | None = None
    if not header_voi:
        ignored.append("the image's own window does not apply to unrescaled values")
    elif ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        problem = _lut_problem(item)
        if problem is None:
            bits = _descriptor(item)[2]  # type: ignore[index]  # checked by _lut_problem
            chosen = _apply_lut(item, values) / float(2**bits - 1), "VOI LUT sequence"
        else:
            ignored.append(f"VOI LUT (VOILUTSequence) ignored: {problem}")
    if chosen is None and header_voi and ("WindowCenter" in ds or "WindowWidth" in ds):
        chosen = _window(ds, values, ignored)
    if chosen is not None:
        # A window far from the pixel values (a CT window on a CR, a copy-paste) shows the
        # whole picture as one grey; the values themselves still hold one: use them.
        if _one_grey(chosen[0], mask) and not _one_grey(values, mask):
            ignored.append(f"the image's {chosen[1]} shows it as a single grey")
        else:
            if ignored:  # a broken VOI LUT gave way to the image's own window
                notes.append(f"window: the image's {chosen[1]} ({'; '.join(ignored)})")
            return chosen
    img = robust_window(values, mask)
    if ignored:
        notes.append(f"window: {ROBUST_WINDOW} ({'; '.join(ignored)})")
    return img, ROBUST_WINDOW + (f" ({'; '.join(ignored)})" if ignored else "")


def _one_grey(img: np.ndarray, mask: np.ndarray) -> bool:
    """Do the 1st and 99th percentiles of the valid pixels coincide (the spread measure is 0)?
    A yes/no on every image with a header window: a quarter of the measure's pixels answer it."""
    step = max(1, math.ceil(math.sqrt(img.size / (MEASURE_PIXELS // 4))))
    valid = img[::step, ::step][mask[::step, ::step]]
    valid = valid[np.isfinite(valid)]
    if valid.size == 0:
        return True
    lo, hi = np.percentile(valid, SPREAD_PERCENTILES)
    return bool(hi <= lo)


def _window(ds: Dataset, values: np.ndarray, ignored: list[str]) -> tuple[np.ndarray, str] | None:
    center, center_text = header_number(ds, "WindowCenter")
    width, width_text = header_number(ds, "WindowWidth")
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper() or "LINEAR"
    if center_text is None or width_text is None:
        missing = "WindowWidth" if width_text is None else "WindowCenter"
        ignored.append(f"{missing} missing")
        return None
    if center is None:
        ignored.append(f"WindowCenter {center_text} ignored")
        return None
    if width is None:
        ignored.append(f"WindowWidth {width_text} ignored")
        return None
    if function not in VOI_FUNCTIONS:
        ignored.append(f"VOILUTFunction {function[:16]!r} unknown, LINEAR used")
        function = "LINEAR"
    if (function == "LINEAR" and width < 1) or width <= 0:
        ignored.append(f"WindowWidth {width_text} ignored")
        return None
    img = _linear_window(values, center, width, function)
    return img, f"WindowCenter {center:g} / WindowWidth {width:g} {function}"


def decode_stored(ds: Dataset, resolution: Resolution | None = None) -> np.ndarray:
    """PixelData -> the stored values of the (first) frame, as a 2-D integer array.

    resolution: decode only as finely as that work needs (reduced.py); None: in full.
    """
    return _decode(ds, resolution).pixels


def _decode(ds: Dataset, resolution: Resolution | None) -> Stored:
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise PixelDataError(
            f"PhotometricInterpretation {photometric or '(missing)'!r} is not grey-scale "
            f"({' or '.join(SUPPORTED_PHOTOMETRIC)} expected)"
        )
    if "PixelData" not in ds:
        raise PixelDataError("PixelData (7FE0,0010) is missing")
    try:
        decoded = decode_pixels(ds, resolution)
    except Exception as exc:  # pydicom raises many types for broken/unsupported pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID") if "file_meta" in ds.__dict__ else None
        how = f" as {UID(syntax).name}" if syntax else ""
        # pydicom's and the codecs' ValueError / RuntimeError / NotImplementedError say what is
        # wrong in words; an internal error (AttributeError, KeyError, ...) would say nothing.
        plain = isinstance(exc, (ValueError, RuntimeError, NotImplementedError, EOFError))
        why = " ".join(str(exc).split())[:300] if plain else "the decoder failed on it"
        raise PixelDataError(f"PixelData cannot be decoded{how}: {why}") from exc
    stored = decoded.pixels
    if stored.ndim == 3:  # multi-frame: a radiograph has one frame; take the first
        stored = stored[0]
    if stored.ndim != 2:
        raise PixelDataError(f"PixelData has shape {stored.shape}; a single grey-scale frame is expected")
    return replace(decoded, pixels=stored)


def grey_from_stored(ds: Dataset, stored: np.ndarray) -> FloatImage:
    """Modality LUT, VOI (sequence, first window, or robust percentiles), polarity, padding mask."""
    notes: list[str] = []
    mask = _padding_mask(ds, stored, notes)
    values, header_voi = _modality(ds, stored, notes)
    img, window = _voi(ds, values, mask, header_voi, notes)
    if window == ROBUST_WINDOW and not notes:  # no VOI in the header at all: say whose window it is
        notes.append(f"window: {ROBUST_WINDOW} (the image has none)")

    # MONOCHROME1 and Presentation LUT Shape INVERSE both mean "minimum is white";
    # DX requires INVERSE with MONOCHROME1, so they mark the same inversion, not two.
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    inverse = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).strip() == "INVERSE"
    if inverse:
        img = 1.0 - img
    nonfinite = int(np.count_nonzero(~np.isfinite(img)))
    img = np.clip(np.nan_to_num(img, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0).astype(np.float32)
    img[~mask] = 0.0
    rows, cols = header_number(ds, "Rows")[0], header_number(ds, "Columns")[0]
    shape = (int(rows), int(cols)) if rows and cols else img.shape
    return FloatImage(img, mask, window, tuple(notes), measure(img, mask, shape, nonfinite))


def dataset_to_float(ds: Dataset, resolution: Resolution | None = None) -> FloatImage:
    """The whole grey-scale pipeline: decode the stored values, then apply the header to them.

    resolution: decode only as finely as that work needs (reduced.py); None: in full.
    The header applies unchanged: a reduced decode yields stored values, only fewer of them.
    """
    decoded = _decode(ds, resolution)
    return replace(grey_from_stored(ds, decoded.pixels), reduction=decoded.reduction)


def measure(pixels: np.ndarray, mask: np.ndarray, shape: tuple[int, int], nonfinite: int = 0) -> ImageInfo:
    """ImageInfo of a display image in [0, 1]; `shape` is the image's size as sent."""
    step = max(1, math.ceil(math.sqrt(pixels.size / MEASURE_PIXELS)))
    sub, valid_mask = pixels[::step, ::step], mask[::step, ::step]
    valid = sub[valid_mask]
    valid = valid[np.isfinite(valid)]
    if valid.size == 0:
        spread, levels = 0.0, 0
    else:
        lo, hi = np.percentile(valid, SPREAD_PERCENTILES)
        spread = float(hi - lo)
        scaled = np.rint(np.clip(valid, 0.0, 1.0) * (GREY_LEVELS - 1)).astype(np.int64)
        levels = int(np.count_nonzero(np.bincount(scaled, minlength=GREY_LEVELS)))
    return ImageInfo(
        rows=int(shape[0]),
        cols=int(shape[1]),
        valid_fraction=float(valid_mask.mean()) if valid_mask.size else 0.0,
        nonfinite=nonfinite,
        spread=spread,
        grey_levels=levels,
    )


def read_image(path: str | Path, resolution: Resolution | None = None) -> FloatImage:
    """Read a DICOM file or an 8/16-bit PNG/JPEG as a FloatImage (used by infer and training).

    resolution applies to DICOM files (reduced.py); image files are read in full.
    """
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
        img = raw.astype(np.float32) / scale
        nonfinite = int(np.count_nonzero(~np.isfinite(img)))  # float TIFFs can hold NaN
        img = np.clip(np.nan_to_num(img, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        mask = np.ones(img.shape, dtype=bool)
        return FloatImage(img, mask, "file values", (), measure(img, mask, img.shape, nonfinite))
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise PixelDataError(f"{path}: not a readable DICOM file: {exc}") from exc
    try:
        return dataset_to_float(ds, resolution)
    except (PixelDataError, NotAnalysable) as exc:
        raise type(exc)(*_with_path(exc, path)) from exc


def _with_path(exc: Exception, path: Path) -> tuple[str, ...]:
    if isinstance(exc, NotAnalysable):
        return exc.code, f"{path}: {exc.reason}"
    return (f"{path}: {exc}",)
