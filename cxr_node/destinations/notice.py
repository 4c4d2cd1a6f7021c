"""What a notification says, gathered once for HL7 v2 and FHIR: the patient and study as the
SR header carries them (copied element for element from the analysed image, so the RIS hears
of the same patient and accession the PACS holds), and the class and probabilities from the
result row (what the SR states). Only Patient and General Study module attributes of the SR
are read, never its content tree, whose layout is the report's own business.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom import Dataset, dcmread

from cxr_node.destinations.base import Outgoing
from cxr_node.queue.jobs import ResultRecord

# HL7 table 0396 / FHIR system of the concepts the SR codes the classes with.
PRIVATE_HL7 = "99CXRNODE"
PRIVATE_FHIR = "tag:cxr-node,2026:concepts"  # RFC 4151 tag URI: a private system needs no registry
SYSTEMS = {"SCT": "http://snomed.info/sct", "DCM": "http://dicom.nema.org/resources/ontology/DCM"}


class NoticeError(ValueError):
    """The notice cannot be made from what the report holds (the message says what is missing)."""


@dataclass(frozen=True)
class Concept:
    code: str
    scheme: str  # HL7 v2 coding system (table 0396 name or 99xxx local)
    meaning: str

    @property
    def system(self) -> str:
        """The FHIR system URI."""
        return SYSTEMS.get(self.scheme, PRIVATE_FHIR if self.scheme == PRIVATE_HL7 else self.scheme)


# Observation identifiers of the notices: the SR's own concepts where the SR has one (the same
# code for the same fact in the PACS and the RIS; a test holds them equal to results.sr's), the
# class codes read from results.sr.CLASS_CODES by class_concept. CXR1xx are the notices' own,
# kept apart from the SR's CXR0xx.
OVERALL_CLASS = Concept("CXR005", PRIVATE_HL7, "AI overall class")
P_ABNORMAL = Concept("CXR011", PRIVATE_HL7, "Probability of abnormality")
P_COVID = Concept("CXR012", PRIVATE_HL7, "Probability of COVID-19")
AI_MODEL = Concept("CXR007", PRIVATE_HL7, "AI model")
MODELS_DISAGREE = Concept("CXR002", PRIVATE_HL7, "Models disagree")
INTENDED_USE = Concept("CXR009", PRIVATE_HL7, "Intended use")
STUDY_UID = Concept("110180", "DCM", "Study Instance UID")
SERVICE = Concept("CXR100", PRIVATE_HL7, "AI chest radiograph classification")
REPORT_UID = Concept("CXR101", PRIVATE_HL7, "AI report SOP Instance UID")


def class_concept(label: str) -> Concept:
    from cxr_node.results.sr import CLASS_CODES  # highdicom: imported only when a notice is made

    for joint, coded in CLASS_CODES.items():
        if joint.value == label:
            return Concept(coded.value, coded.scheme_designator, coded.meaning)
    raise NoticeError(f"result class {label!r} has no code in the report")


@dataclass(frozen=True)
class Issuer:
    """Who assigned an identifier: a local namespace and/or a universal ID (ISO OID, UUID, URI)."""

    namespace: str = ""
    universal_id: str = ""
    universal_id_type: str = ""  # "ISO", "UUID", "URI", ...
    type_code: str = ""  # HL7 table 0203 identifier type (MR, PI, ...) when the image states it

    @property
    def system(self) -> str:
        """The FHIR identifier system, or "" when no universal ID names the issuer."""
        if not self.universal_id:
            return ""
        if self.universal_id_type == "ISO":
            return f"urn:oid:{self.universal_id}"
        if self.universal_id_type == "UUID":
            return f"urn:uuid:{self.universal_id.lower()}"
        return self.universal_id if self.universal_id_type in ("URI", "URL") else ""


@dataclass(frozen=True)
class PersonName:
    family: str = ""
    given: str = ""
    middle: str = ""
    prefix: str = ""
    suffix: str = ""


@dataclass(frozen=True)
class Notice:
    report_uid: str  # the SR this notice announces
    study_uid: str
    accession: str
    accession_issuer: Issuer
    patient_id: str
    patient_issuer: Issuer
    patient_name: PersonName
    birth_date: str  # YYYYMMDD or ""
    sex: str  # M / F / O or ""
    study_time: datetime | None  # StudyDate/Time in the offset the header states, else naive
    result: ResultRecord
    made_at: datetime  # when the result was recorded (UTC)

    @property
    def concept(self) -> Concept:
        return class_concept(self.result.label)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _issuer(namespace: str, qualifiers: Dataset | None) -> Issuer:
    if qualifiers is None:
        return Issuer(namespace)
    return Issuer(
        namespace or _text(qualifiers, "LocalNamespaceEntityID"),
        _text(qualifiers, "UniversalEntityID"),
        _text(qualifiers, "UniversalEntityIDType"),
        _text(qualifiers, "IdentifierTypeCode"),
    )


def _first(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _study_time(ds: Dataset) -> datetime | None:
    date, time = _text(ds, "StudyDate"), _text(ds, "StudyTime")
    if len(date) != 8 or not date.isdigit():
        return None
    digits = time.split(".")[0]
    digits = (digits + "000000")[:6] if digits.isdigit() else "000000"
    try:
        naive = datetime.strptime(date + digits, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    offset = _text(ds, "TimezoneOffsetFromUTC")
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        return datetime.strptime(f"{date}{digits}{offset}", "%Y%m%d%H%M%S%z")
    return naive  # local time of the modality, zone unstated: sent without an offset


def read_notice(item: Outgoing) -> Notice:
    """The notice of the result whose SR `item.path` is. OSError / InvalidDicomError propagate."""
    if item.result is None or item.result_created_at is None:
        raise NoticeError(f"export of {item.sop_instance_uid}: no result row")
    ds = dcmread(item.path, stop_before_pixels=True)
    name = ds.get("PatientName")
    person = (
        PersonName(name.family_name, name.given_name, name.middle_name, name.name_prefix, name.name_suffix)
        if name
        else PersonName()
    )
    accession_issuer = _first(ds, "IssuerOfAccessionNumberSequence")
    return Notice(
        report_uid=str(ds.SOPInstanceUID),
        study_uid=_text(ds, "StudyInstanceUID"),
        accession=_text(ds, "AccessionNumber"),
        accession_issuer=_issuer("", accession_issuer),
        patient_id=_text(ds, "PatientID"),
        patient_issuer=_issuer(_text(ds, "IssuerOfPatientID"), _first(ds, "IssuerOfPatientIDQualifiersSequence")),
        patient_name=person,
        birth_date=_text(ds, "PatientBirthDate")[:8],
        sex=_text(ds, "PatientSex").upper()[:1],
        study_time=_study_time(ds),
        result=item.result,
        made_at=item.result_created_at.astimezone(UTC),
    )
