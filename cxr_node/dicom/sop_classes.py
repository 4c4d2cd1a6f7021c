"""Which storage SOP classes the node accepts, and which of them it analyses.

A PACS that routes a whole study sends whatever the study holds: the radiographs, the
node's own SR and Secondary Capture from an earlier run, key object selections, presentation
states, other modalities' images. Refusing any of them in negotiation fails the whole
route, and the image the node was waiting for never arrives. So every storage SOP class
pynetdicom knows is accepted (with the transfer syntaxes the node can decode, see
dicom/syntaxes.py: every native syntax and the compressed ones with an installed decoder),
and only the radiograph classes below are analysed; the rest is acknowledged and recorded
as not analysed, or discarded ([receiver] non_radiographs).
"""

from __future__ import annotations

from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
from pynetdicom.presentation import AllStoragePresentationContexts

# The classes chest radiographs arrive in: the only ones checked against the radiograph rules,
# selected, and analysed.
RADIOGRAPH_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows (PS3.4 Annex B), radiographs first."""
    others = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return [*RADIOGRAPH_SOP_CLASSES, *(uid for uid in others if uid not in RADIOGRAPH_SOP_CLASSES)]


def is_radiograph(sop_class_uid: str) -> bool:
    return str(sop_class_uid) in RADIOGRAPH_SOP_CLASSES


def sop_class_name(sop_class_uid: str) -> str:
    """ "Basic Text SR Storage" for 1.2.840.10008.5.1.4.1.1.88.11; the UID itself when unknown."""
    name = UID(str(sop_class_uid)).name
    return name or str(sop_class_uid)


__all__ = ["RADIOGRAPH_SOP_CLASSES", "is_radiograph", "sop_class_name", "storage_sop_classes"]
