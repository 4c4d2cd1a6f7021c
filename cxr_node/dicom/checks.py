"""Cheap checks of a received radiograph, before it is acknowledged: header only, no decode.

Each check returns a one-line reason that names the attribute (it becomes the Error
Comment of a 0xA900 status), or None. They catch what would otherwise be acknowledged
and then fail in the worker: UIDs outside the DICOM grammar, multi-frame or colour
images, pixel data shorter or longer than Rows x Columns says, a JPEG / JPEG 2000
codestream whose own size disagrees with Rows/Columns or that is cut short, an unknown
character set. Reading a SIZ or SOF marker costs microseconds; decoding costs seconds.
"""

from __future__ import annotations

import re
import struct

from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.uid import UID

# PS3.5 9.1: components of digits separated by dots, no leading zero in a multi-digit component.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
UID_MAX_LEN = 64

REQUIRED = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns", "PixelData")
DATASET_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def is_valid_uid(text: str) -> bool:
    return isinstance(text, str) and len(text) <= UID_MAX_LEN and bool(_UID.match(text))


def _uid_problem(keyword: str, value) -> str | None:
    text = "" if value is None else str(value)
    if not is_valid_uid(text):
        why = f"longer than {UID_MAX_LEN}" if len(text) > UID_MAX_LEN else "not a valid UID"
        return f"{keyword} {why}: {text[:24]!r}"
    return None


def check_uids(ds: Dataset, command_sop_uid: str | None) -> str | None:
    """The command's AffectedSOPInstanceUID and the data set's Study/Series/SOP Instance UIDs."""
    problem = _uid_problem("AffectedSOPInstanceUID", command_sop_uid)
    if problem:
        return problem
    for keyword in DATASET_UIDS:
        if keyword not in ds:
            return f"{keyword} missing"
        problem = _uid_problem(keyword, ds[keyword].value)
        if problem:
            return problem
    if str(ds.SOPInstanceUID) != str(command_sop_uid):
        return "SOPInstanceUID differs from AffectedSOPInstanceUID"
    return None


def check_radiograph(ds: Dataset, context_sop_class: str) -> str | None:
    """Required attributes present, SOP class as negotiated, grey photometric interpretation."""
    for keyword in REQUIRED:
        if keyword not in ds or ds[keyword].value in (None, "", b""):
            return f"{keyword} missing"
    if str(ds.SOPClassUID) != str(context_sop_class):
        return "SOPClassUID differs from the presentation context"
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return f"PhotometricInterpretation {photometric or 'missing'} not grey"
    return None


def header_int(ds: Dataset, keyword: str) -> int | None:
    """An integer attribute as an int; None when absent, empty or not a number (the caller names it)."""
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def check_header(ds: Dataset, transfer_syntax: str) -> str | None:
    """Image Pixel module consistent with itself and with the pixel data it carries."""
    problem = _check_charset(ds)
    if problem:
        return problem
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and header_int(ds, "NumberOfFrames") != 1:
        return f"NumberOfFrames {frames} (one frame expected)"
    spp = header_int(ds, "SamplesPerPixel")
    if spp != 1:
        return f"SamplesPerPixel {ds.get('SamplesPerPixel', 'missing')} (1 expected)"
    allocated, stored = header_int(ds, "BitsAllocated"), header_int(ds, "BitsStored")
    if allocated not in (8, 16):
        return f"BitsAllocated {ds.get('BitsAllocated', 'missing')} (8 or 16 expected)"
    if stored is None or not 1 <= stored <= allocated:
        return f"BitsStored {ds.get('BitsStored', 'missing')} not in 1..BitsAllocated {allocated}"
    if header_int(ds, "PixelRepresentation") not in (0, 1):
        return f"PixelRepresentation {ds.get('PixelRepresentation', 'missing')} (0 or 1 expected)"
    rows, cols = header_int(ds, "Rows"), header_int(ds, "Columns")
    if not rows or not cols:
        return "Rows or Columns zero"
    syntax = UID(transfer_syntax)
    if not syntax.is_encapsulated:
        expected = rows * cols * allocated // 8
        have = len(ds.PixelData)
        if have not in (expected, expected + 1):  # one pad byte keeps an odd length even
            return f"PixelData {have} bytes, Rows x Columns x {allocated // 8} = {expected}"
        return None
    return _check_encapsulated(ds.PixelData, syntax, rows, cols, allocated)


def _check_charset(ds: Dataset) -> str | None:
    value = ds.get("SpecificCharacterSet")
    if value in (None, ""):
        return None
    terms = [value] if isinstance(value, str) else list(value)
    for term in terms:
        if str(term).strip() not in python_encoding:
            return f"SpecificCharacterSet {str(term)[:32]!r} unknown"
    return None


JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
}
J2K_SYNTAXES = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def _check_encapsulated(pixel_data: bytes, syntax: UID, rows: int, cols: int, allocated: int) -> str | None:
    try:
        fragments = list(generate_fragments(_after_offset_table(pixel_data)))
    except (ValueError, struct.error) as exc:
        return f"PixelData encapsulation broken: {exc}"[:64]
    if not fragments or not fragments[0]:
        return "PixelData has no fragments"
    first, last = fragments[0], fragments[-1].rstrip(b"\x00")
    if syntax in JPEG_SYNTAXES:
        size = jpeg_frame_size(first)
        name = "JPEG SOF"
    elif syntax in J2K_SYNTAXES:
        size = j2k_image_size(first)
        name = "J2K SIZ"
    elif syntax == RLE_LOSSLESS:
        if len(first) < 64:
            return "PixelData RLE header cut short"
        segments = struct.unpack_from("<I", first)[0]
        if segments != allocated // 8:
            return f"PixelData RLE {segments} segments, BitsAllocated wants {allocated // 8}"
        return None
    else:
        return None  # a syntax without a cheap header check: the worker's decode decides
    if size is None:
        return f"PixelData: no {name} marker in the codestream"
    if size != (rows, cols):
        return f"Rows/Columns {rows}x{cols} but {name} says {size[0]}x{size[1]}"
    components = j2k_components(first) if syntax in J2K_SYNTAXES else 1
    if components != 1:  # each component decodes to a full plane: the budget assumes one
        return f"SamplesPerPixel 1 but J2K SIZ says {components} components"
    if not last.endswith(b"\xff\xd9"):  # EOI (JPEG) and EOC (J2K) are both FFD9
        return "PixelData codestream cut short (no end marker)"
    return None


def _after_offset_table(pixel_data: bytes) -> bytes:
    """The fragments after the Basic Offset Table item."""
    if len(pixel_data) < 8 or pixel_data[:4] != b"\xfe\xff\x00\xe0":
        raise ValueError("no Basic Offset Table item")
    length = struct.unpack_from("<I", pixel_data, 4)[0]
    if 8 + length > len(pixel_data):
        raise ValueError("Basic Offset Table longer than PixelData")
    return pixel_data[8 + length :]


# SOFn markers carry the frame size; C4 (DHT), C8 (JPG), CC (DAC) are not SOF. F7 is JPEG-LS SOF55.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def jpeg_frame_size(stream: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the first SOF segment of a JPEG / JPEG-LS stream, or None."""
    if stream[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            return None
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", stream, pos + 2)
        if marker in _SOF:
            if pos + 9 > len(stream):
                return None
            rows, cols = struct.unpack_from(">HH", stream, pos + 5)
            return rows, cols
        if marker in (0xDA, 0xD9):  # scan data or end before any SOF
            return None
        pos += 2 + length
    return None


def j2k_image_size(stream: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the SIZ segment of a JPEG 2000 codestream (or a JP2 file), or None."""
    start = stream.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC then SIZ; JP2 boxes may come first
    if start < 0 or start + 4 + 2 + 2 + 16 > len(stream):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", stream, start + 8)
    return ysiz - yosiz, xsiz - xosiz


def j2k_components(stream: bytes) -> int | None:
    """Csiz, the number of components, from the SIZ segment of a JPEG 2000 codestream, or None."""
    start = stream.find(b"\xff\x4f\xff\x51", 0, 4096)
    if start < 0 or start + 42 > len(stream):
        return None
    return int(struct.unpack_from(">H", stream, start + 40)[0])


__all__ = [
    "UID_MAX_LEN",
    "check_header",
    "check_radiograph",
    "check_uids",
    "header_int",
    "is_valid_uid",
    "j2k_image_size",
    "jpeg_frame_size",
]
