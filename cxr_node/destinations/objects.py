"""The data set a destination sends for an export row: the written file, or the report in the
form without the illustration when the SC never reached that destination."""

from __future__ import annotations

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian

from cxr_node.destinations.base import Outgoing


def load(item: Outgoing) -> Dataset:
    """Read the object; OSError / InvalidDicomError / ValueError propagate (the dispatcher retries them)."""
    ds: Dataset = dcmread(item.path)
    if item.omit_illustration:
        from cxr_node.results.sr import (
            without_illustration,  # highdicom: imported only when needed
        )

        ds = with_file_meta(without_illustration(ds))
    return ds


def with_file_meta(ds: Dataset) -> Dataset:
    """File meta that names the data set (a built variant may lack it); uncompressed when unset."""
    ds.ensure_file_meta()
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds
