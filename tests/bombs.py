"""Decompression bombs: tiny, valid DICOM radiographs whose pixels decode to gigabytes.

Used by the hostile-pixels tests and deploy/soak.py. Each is a correct encoding of a blank image
(every decoder accepts it), with Rows/Columns equal to the codestream's own size, so only the
pixel budget (or the decoder's memory limit) can stop it.

- J2K: a hand-built JPEG 2000 codestream (SOC, SIZ, COD, QCD, one tile whose packets are all
  empty, EOC) of a blank rows x cols 16-bit image: about 100 bytes whatever the size.
- RLE: one PackBits run of 128 bytes repeated per segment: 2 bytes per 128 pixels per byte plane
  (a 20000^2 16-bit image is ~12 MB; 5000^2 ~0.8 MB).
- Deflated: an uncompressed blank image sent with Deflated Explicit VR Little Endian: zeros
  deflate about 1000:1 (a 15000^2 16-bit image is ~0.45 MB on the wire).
"""

from __future__ import annotations

import struct

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from tests.dicom_factory import make_radiograph


def j2k_blank_codestream(rows: int, cols: int, levels: int = 5) -> bytes:
    """A valid J2K codestream (ISO 15444-1 Annex A) of a blank unsigned 16-bit rows x cols image."""
    siz = struct.pack(">HIIIIIIIIH", 0, cols, rows, 0, 0, cols, rows, 0, 0, 1) + bytes([15, 1, 1])
    # Scod 0; LRCP, 1 layer, no MCT; `levels` decompositions, 64 x 64 code-blocks, style 0, 5/3 reversible
    cod = bytes([0, 0]) + struct.pack(">H", 1) + bytes([0, levels, 4, 4, 0, 1])
    # No quantisation, 2 guard bits; exponents 16 (LL), 17 (HL, LH), 18 (HH) for 16-bit reversible
    exponents = [16] + [e for _ in range(levels) for e in (17, 17, 18)]
    qcd = bytes([0x40] + [e << 3 for e in exponents])
    packets = bytes(levels + 1)  # one empty packet per resolution: a single 0 bit, padded
    sot_len = 12 + 2 + len(packets)
    tile = b"\xff\x90" + struct.pack(">HHIBB", 10, 0, sot_len, 0, 1) + b"\xff\x93" + packets

    def segment(marker: bytes, body: bytes) -> bytes:
        return marker + struct.pack(">H", len(body) + 2) + body

    return (
        b"\xff\x4f"
        + segment(b"\xff\x51", siz)
        + segment(b"\xff\x52", cod)
        + segment(b"\xff\x5c", qcd)
        + tile
        + b"\xff\xd9"
    )


def rle_blank_frame(rows: int, cols: int, bytes_per_pixel: int = 2) -> bytes:
    """A DICOM RLE frame (PS3.5 G): 64-byte header, one PackBits segment of zeros per byte plane."""
    n = rows * cols
    runs, rest = divmod(n, 128)
    segment = b"\x81\x00" * runs  # -127: repeat the next byte 128 times
    if rest:
        segment += bytes([(257 - rest) & 0xFF, 0]) if rest > 1 else b"\x00\x00"
    if len(segment) % 2:
        segment += b"\x00"
    offsets, pos = [], 64
    for _ in range(bytes_per_pixel):
        offsets.append(pos)
        pos += len(segment)
    header = struct.pack("<I", bytes_per_pixel) + b"".join(struct.pack("<I", o) for o in offsets)
    header += bytes(64 - len(header))
    return header + segment * bytes_per_pixel


def _header(rows: int, cols: int, **attrs) -> Dataset:
    ds = make_radiograph(np.zeros((1, 1), np.uint16), bits_stored=16, **attrs)
    ds.Rows, ds.Columns = rows, cols
    return ds


def j2k_bomb(rows: int = 20000, cols: int = 20000, **attrs) -> Dataset:
    ds = _header(rows, cols, **attrs)
    ds.PixelData = encapsulate([j2k_blank_codestream(rows, cols)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return ds


def rle_bomb(rows: int = 20000, cols: int = 20000, **attrs) -> Dataset:
    ds = _header(rows, cols, **attrs)
    ds.PixelData = encapsulate([rle_blank_frame(rows, cols)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return ds


def deflated_bomb(rows: int = 15000, cols: int = 15000, **attrs) -> Dataset:
    """A blank native image to be sent as Deflated Explicit VR Little Endian (pynetdicom deflates it)."""
    ds = _header(rows, cols, **attrs)
    ds.PixelData = bytes(rows * cols * 2)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


__all__ = ["deflated_bomb", "j2k_blank_codestream", "j2k_bomb", "rle_blank_frame", "rle_bomb"]
