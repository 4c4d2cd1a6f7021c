"""Who made a result (the node as a device, the model bundle) and the result objects' UIDs.

Result UIDs are derived from the source image and the bundle, not drawn at random:
if the node crashes after sending and sends again, the PACS receives the same SOP
Instance UIDs and keeps one copy, so a study is never reported twice.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from functools import lru_cache

from pydicom.dataset import Dataset

from cxr_node import __version__
from cxr_node.results.wording import UNTRAINED_MODEL_TEXT, UNTRAINED_STATUS

MANUFACTURER = "cxr-node project"
MODEL_NAME = "cxr-node"
_NAMESPACE = uuid.UUID("6f0c4a59-5a47-4a3c-9d0b-2b7c2f6e0c11")

# Private coding scheme for concepts no public terminology has.
PRIVATE_SCHEME = "99CXRNODE"
PRIVATE_SCHEME_NAME = "cxr-node private concepts"


def derived_uid(*parts: str) -> str:
    """A 2.25 UID from a name-based (SHA-1) UUID: same inputs, same UID, no registered root needed."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(parts)).int}"


def no_illustration_sr_uid(sr_instance_uid: str) -> str:
    """SOP Instance UID of the report variant without the Grad-CAM reference (SC refused by the PACS).

    Different content needs its own UID; deriving it from the full report's UID lets the
    sender make the variant from the written report alone, and makes it again identically.
    """
    return derived_uid("sr-no-illustration", sr_instance_uid)


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
    trained_on: str | None = None  # ISO date the bundle was trained (manifest training.created)
    # (t_A, t_B) of the joint rule: stated in the SR next to each model's Present / Absent
    thresholds: tuple[float, float] | None = None

    @classmethod
    def from_bundle(cls, bundle) -> ModelIdentity:
        """The identity of a loaded analysis Bundle (duck-typed: results/ does not import analysis/)."""
        created = (bundle.training or {}).get("created")
        th = getattr(bundle, "thresholds", None)
        return cls(
            bundle.name,
            bundle.version,
            bundle.sha256.get("A", ""),
            bundle.sha256.get("B", ""),
            bundle.trained,
            str(created)[:10] if created else None,
            (float(th.a), float(th.b)) if th is not None else None,
        )

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def description(self) -> str:
        """The model in a radiologist's words: "cxr-covid v3, trained 2026-11-20", or the untrained warning."""
        if not self.trained:
            return UNTRAINED_MODEL_TEXT
        version = self.version if self.version[:1] in ("v", "V") else f"v{self.version}"
        trained = f", trained {self.trained_on}" if self.trained_on else ", training date not recorded"
        return f"{self.name} {version}{trained}"

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
    def for_source(cls, source_sop_uid: str, model: ModelIdentity) -> ResultUIDs:
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

    status = "trained" if model.trained else UNTRAINED_STATUS
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


# Modules of the Patient and Study IEs (PS3.3 A.1.4): a result filed in the source's study
# must carry them exactly as the source has them, or a PACS that keys patients by ID plus
# issuer (or compares study attributes) files it elsewhere.
PATIENT_STUDY_MODULES = ("patient", "clinical-trial-subject", "general-study", "patient-study", "clinical-trial-study")
# Not in those modules, but compared across a study's instances (dcentvfy, PACS): kept with them.
STUDY_COMPANIONS = ("SpecificCharacterSet", "TimezoneOffsetFromUTC")


@lru_cache(maxsize=1)
def patient_study_keywords() -> tuple[str, ...]:
    """Top-level keywords of the Patient and Study modules, from highdicom's copy of the standard."""
    from highdicom._standard_utils import get_module_attribute_map

    table = get_module_attribute_map()
    keywords: dict[str, None] = {}
    for module in PATIENT_STUDY_MODULES:
        for attribute in table[module]:
            if not attribute["path"]:
                keywords[attribute["keyword"]] = None
    return tuple(keywords)


# Type 2 in every image IOD, read unconditionally by highdicom's builders; some modalities leave them out.
_TYPE2_READ_BY_BUILDERS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def as_reference(source: Dataset) -> Dataset:
    """The source's header for highdicom's builders: the same elements, plus an empty one for
    each Type 2 patient/study attribute the source lacks (the builders fail on a missing one).
    The source itself is left alone; copy_patient_study then writes what the source says.
    """
    missing = [k for k in _TYPE2_READ_BY_BUILDERS if k not in source]
    if not missing:
        return source
    ref = Dataset()
    ref.update(source)
    if getattr(source, "file_meta", None) is not None:
        ref.file_meta = source.file_meta
    for keyword in missing:
        setattr(ref, keyword, None)
    return ref


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Give target the source's Patient and Study module attributes, element for element.

    Present in the source: copied (deep copy, same VR and value, replacing whatever the
    builder put there). Absent from the source: a value the builder made up is removed;
    an empty one stays (a Type 2 attribute the target's IOD requires, e.g. AccessionNumber).
    SpecificCharacterSet goes with them: the copied strings are encoded in it.
    """
    for keyword in (*STUDY_COMPANIONS, *patient_study_keywords()):
        if keyword in source:
            target[keyword] = copy.deepcopy(source[keyword])
        elif keyword in target and not target[keyword].is_empty:
            del target[keyword]
