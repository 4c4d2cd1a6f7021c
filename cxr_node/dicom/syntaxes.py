"""Which transfer syntaxes the node may accept: only those pydicom can decode here.

A syntax is offered in association negotiation only when pydicom has a pixel-data
decoder for it whose plug-in is installed. A modality offering JPEG Lossless to a node
without a JPEG plug-in is then refused that context and falls back to an uncompressed
one, instead of getting 0x0000 for an image the worker can never decode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydicom.pixels import get_decoder
from pynetdicom import ALL_TRANSFER_SYNTAXES


def decoder_available(uid: str) -> bool:
    """True when pydicom can decode pixel data in transfer syntax `uid` with what is installed."""
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:  # pydicom knows no decoder for this syntax at all (MPEG, JPIP, ...)
        return False


def decodable_transfer_syntaxes(
    candidates: Iterable[str] = ALL_TRANSFER_SYNTAXES,
    available: Callable[[str], bool] = decoder_available,
) -> list[str]:
    """The candidates, in order, that `available` accepts."""
    return [uid for uid in candidates if available(uid)]


__all__ = ["decodable_transfer_syntaxes", "decoder_available"]
