"""The decoding budget: what one received image may cost to decode, checked at receipt.

Header-only (Rows, Columns, frames, samples, bits), plus a bounded inflate of a Deflated data
set before pynetdicom inflates it whole; an image over budget is refused with 0xA900 and a
one-line reason naming the [decoding] key. The decoder processes (pool.py) bound what is left.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from cxr_node.dicom.checks import header_int

# The decoding budget. The largest CR/DX detectors in clinical use are 43 x 43 cm flat panels and
# CR plates read at 100 um (e.g. 35 x 43 cm plates at 100 um: 3480 x 4240; 43 x 43 cm at 100 um:
# 4300 x 4300, 16 bits allocated: 37 MB). The defaults leave room above that: 8192 rows or columns
# (stitched long-length images are ~2 x 43 cm long), 64 MiB of decoded pixels (5792 x 5792 at 16
# bits). A J2K/RLE/Deflated "bomb" claims far more in a few kilobytes and is refused at receipt.
MAX_ROWS = 8192
MAX_COLUMNS = 8192
MAX_PIXEL_BYTES = 64 * 2**20
# A Deflated data set may inflate to the pixels plus this much of everything else (overlays,
# private tags, icon images); beyond that it is refused before pynetdicom inflates it whole.
MAX_INFLATED_BYTES = MAX_PIXEL_BYTES + 8 * 2**20


@dataclass(frozen=True)
class PixelBudget:
    """What one received image may cost to decode ([decoding] in the config)."""

    max_rows: int = MAX_ROWS
    max_columns: int = MAX_COLUMNS
    max_pixel_bytes: int = MAX_PIXEL_BYTES
    max_inflated_bytes: int = MAX_INFLATED_BYTES


DEFAULT_BUDGET = PixelBudget()


def check_budget(ds: Dataset, budget: PixelBudget = DEFAULT_BUDGET) -> str | None:
    """Rows, Columns and Rows x Columns x frames x samples x bytes within the decoding budget."""
    rows, cols = header_int(ds, "Rows") or 0, header_int(ds, "Columns") or 0
    if rows > budget.max_rows:
        return f"Rows {rows} over decoding.max_rows {budget.max_rows}"
    if cols > budget.max_columns:
        return f"Columns {cols} over decoding.max_columns {budget.max_columns}"
    frames = max(1, header_int(ds, "NumberOfFrames") or 1)
    samples = max(1, header_int(ds, "SamplesPerPixel") or 1)
    per_sample = max(1, (header_int(ds, "BitsAllocated") or 16) // 8)
    size = rows * cols * frames * samples * per_sample
    if size > budget.max_pixel_bytes:
        return (
            f"Rows*Columns*{frames * samples * per_sample} bytes {size / 2**20:.0f} MiB over decoding.max_pixel_bytes"
        )[:64]
    return None


INFLATE_CHUNK = 1 << 20


def deflated_size_over(encoded: bytes, limit: int) -> int | None:
    """Inflate a Deflated Explicit VR data set as a stream, keeping nothing: None when it inflates to
    at most `limit` bytes, else the bytes inflated when it went past (it stops there).

    pynetdicom inflates a received Deflated data set whole (zlib.decompress), so a 0.5 MB stream of
    zeros becomes 2 GB in memory before any check runs; this runs first, in 1 MiB pieces.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, view = 0, memoryview(encoded)
    for start in range(0, len(view), INFLATE_CHUNK):
        pending = bytes(view[start : start + INFLATE_CHUNK])
        while pending:
            total += len(inflater.decompress(pending, INFLATE_CHUNK))
            if total > limit:
                return total
            pending = inflater.unconsumed_tail
        if inflater.eof:
            break
    total += len(inflater.flush())
    return total if total > limit else None


def check_deflated(encoded: bytes, transfer_syntax: str, budget: PixelBudget = DEFAULT_BUDGET) -> str | None:
    """For a Deflated data set, a reason when it inflates past decoding.max_inflated_bytes, else None."""
    if not UID(transfer_syntax).is_deflated:
        return None
    try:
        over = deflated_size_over(encoded, budget.max_inflated_bytes)
    except zlib.error as exc:
        return f"Deflated data set broken: {exc}"[:64]
    if over is not None:
        return "Deflated data set inflates past decoding.max_inflated_bytes"
    return None


__all__ = [
    "DEFAULT_BUDGET",
    "MAX_COLUMNS",
    "MAX_INFLATED_BYTES",
    "MAX_PIXEL_BYTES",
    "MAX_ROWS",
    "PixelBudget",
    "check_budget",
    "check_deflated",
    "deflated_size_over",
]
