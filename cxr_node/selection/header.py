"""The header bits an operator needs to recognise an image in the jobs list and on the status
page (accession number, modality, study and series description), read once at receipt."""

from __future__ import annotations

from pydicom.dataset import Dataset

from cxr_node.queue.jobs import InstanceHeader

LIMIT = 64  # the columns' width; LO is 64 characters, a longer (non-conformant) value is cut


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed element must not cost the image its acknowledgement
        return None
    text = " ".join(str(value).split()) if value is not None else ""
    return text[:LIMIT] or None


def header_summary(ds: Dataset) -> InstanceHeader:
    return InstanceHeader(
        accession_number=_text(ds, "AccessionNumber"),
        modality=_text(ds, "Modality"),
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
    )


__all__ = ["header_summary"]
