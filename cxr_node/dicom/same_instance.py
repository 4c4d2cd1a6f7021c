"""Is an instance received under a known SOP Instance UID the one already stored?

Routers re-send: a PACS forwarding a study again, a router that transcodes (JPEG 2000 to
Explicit VR Little Endian, or back). Those are the same instance in other bytes, and the
sender must get success or it keeps the "failure" in its queue forever. Another image under
a UID the node already holds is a different matter: it is refused and the first file,
the one analysed, is kept. The rule, from what the header says (no decode, no second read
of the stored file):

  the same data set bytes                                       -> the same instance
  another transfer syntax, with the same identity (SOP class,
  study, series, patient) and the same Image Pixel module header -> the same instance
  anything else                                                 -> other content (refused)

Pixels cannot be compared across syntaxes without decoding both; a router that re-encodes
keeps Rows, Columns, bits and photometric interpretation, which is what is compared.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydicom.dataset import Dataset

IDENTITY = ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID")
PIXEL_MODULE = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "NumberOfFrames",
    "PlanarConfiguration",
)
# Lossless and lossy colour codecs store RGB as YBR (J2K: YBR_RCT / YBR_ICT, JPEG: YBR_FULL_422):
# one colour image re-encoded changes its photometric interpretation, not its content.
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420"}


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def instance_identity(ds: Dataset) -> dict[str, str | None]:
    """The attributes compared, as text (None: absent or empty); stored with the instance."""
    out = {keyword: _text(ds.get(keyword)) for keyword in (*IDENTITY, *PIXEL_MODULE)}
    if out["PhotometricInterpretation"] in _COLOUR:
        out["PhotometricInterpretation"] = "RGB"
    if out["NumberOfFrames"] == "1":  # absent and 1 say the same
        out["NumberOfFrames"] = None
    return out


def differences(stored: Mapping[str, str | None], new: Mapping[str, str | None]) -> list[str]:
    """Keywords whose values differ, in the order of IDENTITY then PIXEL_MODULE."""
    return [k for k in (*IDENTITY, *PIXEL_MODULE) if stored.get(k) != new.get(k)]


def same_instance(
    stored_sha256: str | None,
    stored_syntax: str | None,
    stored_identity: Mapping[str, str | None] | None,
    new_sha256: str,
    new_syntax: str,
    new_identity: Mapping[str, str | None],
) -> tuple[bool, str]:
    """(same instance?, why in words) for a known SOP Instance UID received again."""
    if stored_sha256 is not None and stored_sha256 == new_sha256:
        return True, "the same bytes"
    if stored_identity is None or stored_syntax is None:
        return False, "other bytes (the stored copy predates identity records)"
    if str(stored_syntax) == str(new_syntax):
        return False, f"other bytes in the same transfer syntax {new_syntax}"
    differ = differences(stored_identity, new_identity)
    if differ:
        return False, f"{', '.join(differ)} differ"
    return True, f"the same instance in another transfer syntax ({stored_syntax} stored, {new_syntax} now)"


__all__ = ["IDENTITY", "PIXEL_MODULE", "differences", "instance_identity", "same_instance"]
