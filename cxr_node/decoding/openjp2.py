"""JPEG 2000 decoding at a reduced resolution level through the system's libopenjp2.

A JPEG 2000 codestream stores a wavelet pyramid: decoding with resolution factor r skips
the r finest DWT levels and yields the LL band, an image 2**r times smaller on each side
(ceil(size / 2**r)) holding samples in the stored range. For a 2k chest radiograph r = 2
decodes in about 1/15 of the time of the full image.

Why a ctypes binding of our own: pylibjpeg-openjpeg (pydicom's plug-in) and imagecodecs'
jpeg2k_decode expose no resolution factor; Pillow's `reduce` computes the reduced size
by rounding where OpenJPEG takes the ceiling, so a 1841 px side fails at 1/4 ("broken data
stream"), and it rescales 12-bit samples to 16 bits; glymur reads files only (a temporary
file per image) and needs lxml and Pillow. libopenjp2 (Debian's libopenjp2-7, security-
maintained, C ABI stable since 2.0, soname 7; 2.5 also decodes HTJ2K) is what all of them
wrap; the dozen calls below read a codestream from memory, in the calling process, so the
decode pool's address-space limit applies to it like to any other decoder.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from functools import cache

import numpy as np

OPJ_CODEC_J2K = 0
OPJ_CODEC_JP2 = 2
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_LIBRARY_NAMES = ("libopenjp2.so.7", "openjp2")


class OpenJpegError(RuntimeError):
    """libopenjp2 refused the codestream; the message carries the library's own words."""


class OpenJpegUnavailable(RuntimeError):
    """No libopenjp2 on this machine (Debian: apt-get install libopenjp2-7)."""


class _ImageComp(ctypes.Structure):
    # opj_image_comp_t of OpenJPEG 2.x (bpp is deprecated but still in the struct)
    _fields_ = [
        ("dx", ctypes.c_uint32),
        ("dy", ctypes.c_uint32),
        ("w", ctypes.c_uint32),
        ("h", ctypes.c_uint32),
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("prec", ctypes.c_uint32),
        ("bpp", ctypes.c_uint32),
        ("sgnd", ctypes.c_uint32),
        ("resno_decoded", ctypes.c_uint32),
        ("factor", ctypes.c_uint32),
        ("data", ctypes.POINTER(ctypes.c_int32)),
        ("alpha", ctypes.c_uint16),
    ]


class _Image(ctypes.Structure):
    _fields_ = [
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("x1", ctypes.c_uint32),
        ("y1", ctypes.c_uint32),
        ("numcomps", ctypes.c_uint32),
        ("color_space", ctypes.c_int),
        ("comps", ctypes.POINTER(_ImageComp)),
        ("icc_profile_buf", ctypes.c_void_p),
        ("icc_profile_len", ctypes.c_uint32),
    ]


_READ_FN = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_SKIP_FN = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_SEEK_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_void_p)
_MSG_FN = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)
# opj_dparameters_t is about 8.3 kB in 2.x; room to spare, filled by opj_set_default_decoder_parameters.
_DPARAMETERS_BYTES = 16384
_STREAM_CHUNK = 1 << 20  # OpenJPEG's own default read size


@cache
def _library() -> ctypes.CDLL:
    for name in _LIBRARY_NAMES:
        path = name if name.endswith(".7") else ctypes.util.find_library(name)
        if not path:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        _declare(lib)
        return lib
    raise OpenJpegUnavailable("libopenjp2 not found (install the libopenjp2-7 package)")


def _declare(lib: ctypes.CDLL) -> None:
    p = ctypes.c_void_p
    sigs = {
        "opj_version": ([], ctypes.c_char_p),
        "opj_stream_create": ([ctypes.c_size_t, ctypes.c_int], p),
        "opj_stream_set_read_function": ([p, _READ_FN], None),
        "opj_stream_set_skip_function": ([p, _SKIP_FN], None),
        "opj_stream_set_seek_function": ([p, _SEEK_FN], None),
        "opj_stream_set_user_data_length": ([p, ctypes.c_uint64], None),
        "opj_stream_destroy": ([p], None),
        "opj_create_decompress": ([ctypes.c_int], p),
        "opj_destroy_codec": ([p], None),
        "opj_set_default_decoder_parameters": ([p], None),
        "opj_setup_decoder": ([p, p], ctypes.c_int),
        "opj_set_error_handler": ([p, _MSG_FN, p], ctypes.c_int),
        "opj_read_header": ([p, p, ctypes.POINTER(ctypes.POINTER(_Image))], ctypes.c_int),
        "opj_set_decoded_resolution_factor": ([p, ctypes.c_uint32], ctypes.c_int),
        "opj_decode": ([p, p, ctypes.POINTER(_Image)], ctypes.c_int),
        "opj_end_decompress": ([p, p], ctypes.c_int),
        "opj_image_destroy": ([ctypes.POINTER(_Image)], None),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


def available() -> bool:
    try:
        _library()
    except OpenJpegUnavailable:
        return False
    return True


def version() -> str:
    return _library().opj_version().decode()


@dataclass(frozen=True)
class J2kFrame:
    pixels: np.ndarray  # (rows, cols) int32 samples as stored (signed if the codestream says so)
    factor: int  # the resolution factor applied: rows = ceil(full rows / 2**factor)
    precision: int  # bits per sample of the codestream
    signed: bool


class _MemoryStream:
    """The read/skip/seek callbacks of an opj_stream_t over a bytes object."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.read = _READ_FN(self._read)
        self.skip = _SKIP_FN(self._skip)
        self.seek = _SEEK_FN(self._seek)

    def _read(self, buffer, nbytes, _user) -> int:
        if self.pos >= len(self.data):
            return ctypes.c_size_t(-1).value  # OpenJPEG's end-of-stream marker
        chunk = self.data[self.pos : self.pos + nbytes]
        ctypes.memmove(buffer, chunk, len(chunk))
        self.pos += len(chunk)
        return len(chunk)

    def _skip(self, nbytes, _user) -> int:
        step = max(-self.pos, min(nbytes, len(self.data) - self.pos))
        self.pos += step
        return step

    def _seek(self, offset, _user) -> int:
        if not 0 <= offset <= len(self.data):
            return 0
        self.pos = offset
        return 1


def decode(codestream: bytes, factor: int = 0) -> J2kFrame:
    """Decode the first component of a J2K codestream (or JP2 file) at resolution `factor`.

    The factor is lowered to the codestream's number of DWT levels if it asks for more.
    Raises OpenJpegError with libopenjp2's messages when the data cannot be decoded.
    """
    lib = _library()
    messages: list[str] = []
    on_error = _MSG_FN(lambda msg, _: messages.append(msg.decode(errors="replace").strip()))
    fmt = OPJ_CODEC_JP2 if codestream.startswith(_JP2_SIGNATURE) else OPJ_CODEC_J2K
    source = _MemoryStream(bytes(codestream))
    stream = lib.opj_stream_create(_STREAM_CHUNK, 1)
    codec = lib.opj_create_decompress(fmt)
    image = ctypes.POINTER(_Image)()
    if not stream or not codec:
        raise MemoryError("libopenjp2 could not allocate a decoder")
    try:
        lib.opj_stream_set_read_function(stream, source.read)
        lib.opj_stream_set_skip_function(stream, source.skip)
        lib.opj_stream_set_seek_function(stream, source.seek)
        lib.opj_stream_set_user_data_length(stream, len(source.data))
        lib.opj_set_error_handler(codec, on_error, None)
        params = ctypes.create_string_buffer(_DPARAMETERS_BYTES)
        lib.opj_set_default_decoder_parameters(params)
        if not lib.opj_setup_decoder(codec, params) or not lib.opj_read_header(stream, codec, ctypes.byref(image)):
            raise OpenJpegError(_why("cannot read the JPEG 2000 header", messages))
        applied = max(0, factor)
        # The library refuses a factor >= the number of resolutions; fewer levels is still correct.
        while applied > 0 and not lib.opj_set_decoded_resolution_factor(codec, applied):
            applied -= 1
        messages.clear()
        if not lib.opj_decode(codec, stream, image) or not lib.opj_end_decompress(codec, stream):
            raise OpenJpegError(_why("cannot decode the JPEG 2000 data", messages))
        img = image.contents
        if img.numcomps < 1:
            raise OpenJpegError("the JPEG 2000 codestream has no component")
        comp = img.comps[0]
        if not comp.data or comp.w == 0 or comp.h == 0:
            raise OpenJpegError("the JPEG 2000 decoder returned no samples")
        expected = (-(-(img.x1 - img.x0) // (1 << applied)), -(-(img.y1 - img.y0) // (1 << applied)))
        if (comp.w, comp.h) != expected and comp.dx == comp.dy == 1:
            raise OpenJpegError(f"decoded {comp.w} x {comp.h}, expected {expected[0]} x {expected[1]}")
        pixels = np.ctypeslib.as_array(comp.data, shape=(comp.h, comp.w)).copy()
        return J2kFrame(pixels, applied, int(comp.prec), bool(comp.sgnd))
    finally:
        if image:
            lib.opj_image_destroy(image)
        lib.opj_destroy_codec(codec)
        lib.opj_stream_destroy(stream)


def _why(what: str, messages: list[str]) -> str:
    return f"{what}: {'; '.join(m for m in messages if m)}" if messages else what


__all__ = ["J2kFrame", "OpenJpegError", "OpenJpegUnavailable", "available", "decode", "version"]
