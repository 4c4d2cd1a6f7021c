"""Who made a result (the node as a device, the model bundle) and the result objects' UIDs.

Result UIDs are derived from the source image and the bundle, not drawn at random:
if the node crashes after sending and sends again, the PACS receives the same SOP
Instance UIDs and keeps one copy, so a study is never reported twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from cxr_node import __version__

MANUFACTURER = "cxr-node project"
MODEL_NAME = "cxr-node"
_NAMESPACE = uuid.UUID("6f0c4a59-5a47-4a3c-9d0b-2b7c2f6e0c11")

# Private coding scheme for concepts no public terminology has.
PRIVATE_SCHEME = "99CXRNODE"
PRIVATE_SCHEME_NAME = "cxr-node private concepts"


def derived_uid(*parts: str) -> str:
    """A 2.25 UID from a name-based (SHA-1) UUID: same inputs, same UID, no registered root needed."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(parts)).int}"


def fallback_sr_uid(sr_instance_uid: str) -> str:
    """SOP Instance UID of the Comprehensive SR twin of a Comprehensive 3D SR.

    A different SOP class needs its own SOP Instance UID (one UID, one object); deriving
    it from the 3D SR's UID lets the sender make the twin from the 3D SR file alone.
    """
    return derived_uid("sr-comprehensive", sr_instance_uid)


@dataclass(frozen=True)
class NodeIdentity:
    ae_title: str
    institution_name: str | None = None

    @property
    def device_uid(self) -> str:
        return derived_uid("device", self.ae_title)

    software_version: str = __version__


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    sha256_a: str
    sha256_b: str
    trained: bool

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def fingerprint(self) -> str:
        return f"{self.sha256_a[:16]}{self.sha256_b[:16]}"

    @property
    def device_uid(self) -> str:
        """UID of the model bundle as contributing equipment (same bundle, same UID)."""
        return derived_uid("model", self.name, self.version, self.sha256_a, self.sha256_b)


@dataclass(frozen=True)
class ResultUIDs:
    sr_series: str
    sc_series: str
    sr_instance: str
    sc_instance: str
    sr_fallback_instance: str  # the same report as Comprehensive SR, for a PACS that refuses 3D SR

    @classmethod
    def for_source(cls, source_sop_uid: str, model: ModelIdentity) -> "ResultUIDs":
        key = (source_sop_uid, model.name, model.version, model.fingerprint)
        sr_instance = derived_uid("sr", *key)
        return cls(
            sr_series=derived_uid("sr-series", *key),
            sc_series=derived_uid("sc-series", *key),
            sr_instance=sr_instance,
            sc_instance=derived_uid("sc", *key),
            sr_fallback_instance=fallback_sr_uid(sr_instance),
        )


def model_equipment(node: NodeIdentity, model: ModelIdentity):
    """ContributingEquipmentSequence item naming the model bundle (as MONAI Deploy does).

    Purpose DCM 109102 "Processing Equipment": the bundle processed the source image
    into this object. The weights' sha256 sit in ContributionDescription (DeviceUID
    would fit, but dciodvfy does not know it inside this sequence and warns).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    status = "trained" if model.trained else "UNTRAINED (random weights) - not for clinical use"
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name[:64],
        software_versions=[model.version[:64], node.software_version[:64]],
        contribution_description=(
            f"AI model bundle {model.label} ({status}) run by {MODEL_NAME} {node.software_version}; "
            f"weights sha256 A={model.sha256_a} B={model.sha256_b}; model UID {model.device_uid}"
        )[:1024],
    )
    return item
