"""Decode a DICOM frame's stored values at the lowest resolution the work still needs.

The models see `model_side` px (224) and the Secondary Capture shows the radiograph with its
long side at `sc_max_side` px (960, results/sc_size.py; never enlarged); a 2k-4k radiograph
decoded in full costs 4-15 times more than one decoded at 1/2-1/8 of its size. So the decoder
reduces rows and columns by the largest power of two f that keeps the long side at least
  - model_side (the letterbox then still shrinks, never enlarges), and
  - sc_max_side (the SC's radiograph keeps every pixel it shows),
or the image's own long side where that is smaller; and decodes:
  - JPEG 2000 / HTJ2K: resolution level log2(f) of the wavelet pyramid (openjp2.py);
  - JPEG baseline / extended with 8-bit samples and one component: libjpeg's DCT scaling
    (1/2, 1/4, 1/8) through OpenCV's IMREAD_REDUCED_GRAYSCALE_*;
  - everything else (12-bit JPEG, JPEG lossless, JPEG-LS, RLE, native, deflated): in full,
    as before, through pydicom. No maintained Python binding scales 12-bit JPEG: Debian 12's
    libjpeg-turbo (2.1) has no 12-bit API, and imagecodecs' jpeg8_decode has no scale.

Either way the result is *stored values* (the pixel cell's integers, in the stored range),
smaller: the grey pipeline (Modality LUT, VOI LUT or window, polarity, padding) applies to
them unchanged. A reduced pixel is a low-pass average of the full ones, so Pixel Padding
Value still marks padded areas, with their edges blended over one reduced pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

from cxr_node.decoding import openjp2
from cxr_node.results.sc_size import SC_MAX_SIDE

J2K_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})
JPEG_DCT_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})
MAX_FACTOR = 8  # JPEG's DCT scaling stops at 1/8; J2K could go further, nothing needs it
DEFAULT_SC_MAX_SIDE = SC_MAX_SIDE  # NodeConfig.sc_max_side's default: what infer, training and evaluate assume
_CV2_REDUCED = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


@dataclass(frozen=True)
class Resolution:
    """What a decoded image must still resolve.

    model_side: the square model input (bundle input_size);
    sc_max_side: the long side of the radiograph in the SC (config results.sc_max_side), None
    when no SC is drawn from this decode.
    """

    model_side: int
    sc_max_side: int | None = None

    def __post_init__(self) -> None:
        if self.model_side < 1:
            raise ValueError(f"Resolution.model_side {self.model_side} must be >= 1")
        if self.sc_max_side is not None and self.sc_max_side < 1:
            raise ValueError(f"Resolution.sc_max_side {self.sc_max_side} must be >= 1")

    def allows(self, rows: int, cols: int, factor: int) -> bool:
        """Whether an image of rows x cols decoded at 1/factor (ceil per side) still resolves the work."""
        long_side = max(-(-rows // factor), -(-cols // factor))
        need = max(self.model_side, self.sc_max_side or 0)
        return long_side >= min(need, max(rows, cols))

    def factor(self, rows: int, cols: int, limit: int = MAX_FACTOR) -> int:
        """The largest power of two <= limit at which the image still resolves the work (1: full)."""
        f = 1
        while f * 2 <= limit and self.allows(rows, cols, f * 2):
            f *= 2
        return f

    @classmethod
    def serving(cls, model_side: int, sc_max_side: int = DEFAULT_SC_MAX_SIDE) -> Resolution:
        """What a node with this model and SC size decodes; training and evaluate use it too,
        so that a model learns from and is scored on the pixels serving will give it."""
        return cls(model_side, sc_max_side)


@dataclass(frozen=True)
class Stored:
    pixels: np.ndarray  # (rows, cols) or (frames, rows, cols) stored values
    reduction: int  # rows and cols are ceil(full / reduction); 1 = full resolution
    method: str  # how it was decoded, for logs and benchmarks


def decode_pixels(ds: Dataset, resolution: Resolution | None) -> Stored:
    """The stored values of `ds` (first frame when reduced), reduced as far as `resolution` allows.

    resolution None decodes in full (pydicom's pixel_array, as always). Errors of the full
    decode propagate unchanged (pixels.py turns them into PixelDataError); a reduced decode the
    library refuses is retried in full, so a codestream quirk costs time, never an answer.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    factor = resolution.factor(rows, cols) if resolution is not None and rows > 0 and cols > 0 else 1
    reduced: Stored | None = None
    if factor > 1 and syntax in J2K_SYNTAXES and openjp2.available():
        reduced = _j2k(ds, rows, cols, factor)
    elif factor > 1 and syntax in JPEG_DCT_SYNTAXES:
        reduced = _jpeg_dct(ds, rows, cols, factor)
    if reduced is not None:
        return reduced
    return Stored(ds.pixel_array, 1, "full")


def _first_frame(ds: Dataset) -> bytes:
    frames = int(ds.get("NumberOfFrames") or 1)
    return get_frame(ds.PixelData, 0, number_of_frames=frames)


def _j2k(ds: Dataset, rows: int, cols: int, factor: int) -> Stored | None:
    try:
        frame = openjp2.decode(_first_frame(ds), factor.bit_length() - 1)
    except (openjp2.OpenJpegError, ValueError):
        return None  # pydicom's full decode gives the authoritative answer
    bits = int(ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    # A codestream whose sign or precision disagrees with the header needs pydicom's corrections.
    if frame.signed != signed or frame.precision > bits or bits not in (8, 16):
        return None
    f = 1 << frame.factor
    if frame.pixels.shape != (-(-rows // f), -(-cols // f)):
        return None  # the codestream's size is not the header's: let the full decode judge
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
    return Stored(frame.pixels.astype(dtype), f, f"JPEG 2000 resolution level {frame.factor} (1/{f})")


def _jpeg_dct(ds: Dataset, rows: int, cols: int, factor: int) -> Stored | None:
    try:
        data = _first_frame(ds)
    except ValueError:
        return None  # broken encapsulation: pydicom's full decode gives the answer
    precision, components = _jpeg_sof(data)
    if precision != 8 or components != 1 or int(ds.get("BitsAllocated") or 8) != 8:
        return None  # 12-bit or colour: no DCT-scaling decoder for it here
    out = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_REDUCED[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
    if out is None or out.dtype != np.uint8 or out.shape != (-(-rows // factor), -(-cols // factor)):
        return None
    return Stored(out, factor, f"JPEG DCT scaling 1/{factor}")


_SOF_DCT = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended, progressive Huffman


def _jpeg_sof(data: bytes) -> tuple[int, int]:
    """(sample precision, components) of the first SOF of a DCT JPEG; (0, 0) if none."""
    i = 2 if data[:2] == b"\xff\xd8" else len(data)
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return 0, 0
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF_DCT and i + 10 <= len(data):
            return data[i + 4], data[i + 9]
        if marker in (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDA):
            return 0, 0  # lossless/hierarchical/arithmetic, or scan data before any DCT SOF
        i += 2 + length
    return 0, 0


__all__ = ["DEFAULT_SC_MAX_SIDE", "J2K_SYNTAXES", "JPEG_DCT_SYNTAXES", "Resolution", "Stored", "decode_pixels"]
