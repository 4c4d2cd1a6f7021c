"""The SR and the SC carry the source's Patient and Study modules exactly (issuers, qualifiers,
age, size, weight, ...), so a PACS that keys patients by ID plus issuer files them together."""

from __future__ import annotations

import subprocess

import pydicom
import pytest
from pydicom.dataset import Dataset

from cxr_node.results.identity import STUDY_COMPANIONS, copy_patient_study, patient_study_keywords
from tests import peers
from tests.test_results_support import TRAINED, make_results, source_copy

# What issue 12 found missing from the SC; each must be in the copied modules and in the test source.
MUST_COPY = (
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "IssuerOfAccessionNumberSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "TypeOfPatientID",
    "OtherPatientIDsSequence",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
    "PatientComments",
    "ReferringPhysicianName",
)


def _item(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def hospital_source(rg1) -> Dataset:
    """RG1 with the identity attributes a hospital's RIS puts on a radiograph."""
    return source_copy(
        rg1,
        SpecificCharacterSet="ISO_IR 192",
        PatientName="Müller^Jürgen",
        IssuerOfPatientID="HOSP-A",
        TypeOfPatientID="TEXT",
        IssuerOfPatientIDQualifiersSequence=[
            _item(
                UniversalEntityID="1.2.826.0.1.3680043.10.1234",
                UniversalEntityIDType="ISO",
                IdentifierTypeCode="MR",
                AssigningFacilitySequence=[_item(LocalNamespaceEntityID="HOSP-A")],
            )
        ],
        OtherPatientIDsSequence=[_item(PatientID="NHS-943 476 5919", IssuerOfPatientID="NHS", TypeOfPatientID="TEXT")],
        IssuerOfAccessionNumberSequence=[
            _item(LocalNamespaceEntityID="RIS-A", UniversalEntityID="1.2.3.4.5", UniversalEntityIDType="ISO")
        ],
        PatientAge="064Y",
        PatientSize="1.72",
        PatientWeight="81.5",
        AdmissionID="ADM-7781",
        IssuerOfAdmissionIDSequence=[_item(LocalNamespaceEntityID="ADT-A")],
        PatientComments="portable, ICU bed 4",
        ReferringPhysicianName="Smith^Anna^^Dr.",
        ProcedureCodeSequence=[_item(CodeValue="36643-5", CodingSchemeDesignator="LN", CodeMeaning="XR Chest 1V")],
    )


def _compare(source: Dataset, result: Dataset) -> list[str]:
    problems = []
    for keyword in (*STUDY_COMPANIONS, *patient_study_keywords()):
        if keyword in source:
            if keyword not in result:
                problems.append(f"{keyword}: missing")
            elif result[keyword].value != source[keyword].value or result[keyword].VR != source[keyword].VR:
                problems.append(f"{keyword}: {result[keyword].value!r} != {source[keyword].value!r}")
        elif keyword in result and not result[keyword].is_empty:
            problems.append(f"{keyword}: {result[keyword].value!r} not in the source")
    return problems


def test_every_patient_and_study_attribute_is_copied_to_sr_and_sc(rg1_uncr, tmp_path):
    keywords = set(patient_study_keywords())
    assert set(MUST_COPY) <= keywords and {"StudyInstanceUID", "PatientID", "AccessionNumber"} <= keywords
    source = hospital_source(rg1_uncr)
    assert all(k in source for k in MUST_COPY)
    _, files = make_results(rg1_uncr, tmp_path, "covid", model=TRAINED, source=source)
    for path in (files.sr_path, files.sc_path):
        result = pydicom.dcmread(path)
        assert _compare(source, result) == [], path.name
    # The same copy on a bare dataset: one helper for both objects.
    bare = Dataset()
    copy_patient_study(source, bare)
    assert _compare(source, bare) == []


def test_attributes_the_source_lacks_are_not_made_up(rg1_uncr, tmp_path):
    source = source_copy(rg1_uncr)
    for keyword in ("AccessionNumber", "ReferringPhysicianName", "StudyDescription"):
        del source[keyword]
    _, files = make_results(rg1_uncr, tmp_path, "normal", source=source)
    for path in (files.sr_path, files.sc_path):
        result = pydicom.dcmread(path)
        assert _compare(source, result) == [], path.name


@pytest.mark.peers
def test_validators_accept_the_hospital_identity(rg1_uncr, tmp_path):
    source = hospital_source(rg1_uncr)
    source_path = tmp_path / "source.dcm"
    source.save_as(source_path, enforce_file_format=True)
    _, files = make_results(rg1_uncr, tmp_path / "out", "pathological", model=TRAINED, source=source)
    for path in (files.sr_path, files.sc_path):
        errors, warnings = peers.dciodvfy(path)
        assert errors == [], "\n".join(errors)
        # Only our declared private coding scheme (docs/results.md).
        assert [w for w in warnings if "<99CXRNODE>" not in w] == [], path.name
    exe = peers.find_program("dcentvfy")
    out = subprocess.run(
        [exe, str(source_path), str(files.sr_path), str(files.sc_path)], capture_output=True, text=True, timeout=120
    )
    lines = (out.stdout + out.stderr).splitlines()
    assert out.returncode == 0 and [line for line in lines if line.startswith("Error")] == [], "\n".join(lines)
    # dicom3tools files AccessionNumber and its issuer under different IEs for SR and SC; the values
    # agree (a different value would be an Error above).
    quirk = (
        "Different information entities for attribute - Element=<AccessionNumber>",
        "Different information entities for attribute - Element=<IssuerOfAccessionNumberSequence>",
    )
    assert [line for line in lines if line.startswith("Warning") and not any(q in line for q in quirk)] == [], (
        "\n".join(lines)
    )


class _Bundle:
    """The attributes of analysis.bundle.Bundle that ModelIdentity.from_bundle reads."""

    def __init__(self, version: str, trained: bool, training: dict):
        self.name, self.version, self.trained, self.training = "cxr-covid-moura2020", version, trained, training
        self.sha256 = {"A": "a" * 64, "B": "b" * 64}


@pytest.mark.parametrize(
    "version, trained, training, expected",
    [
        ("3", True, {"created": "2026-11-20T09:14:03+00:00"}, "cxr-covid-moura2020 v3, trained 2026-11-20"),
        ("v3", True, {"created": "2026-11-20T09:14:03+00:00"}, "cxr-covid-moura2020 v3, trained 2026-11-20"),
        ("3", True, {}, "cxr-covid-moura2020 v3, training date not recorded"),
        ("0", False, {}, "UNTRAINED MODEL - NOT FOR CLINICAL USE"),
    ],
)
def test_model_in_a_radiologists_words(version, trained, training, expected):
    from cxr_node.results.identity import ModelIdentity

    model = ModelIdentity.from_bundle(_Bundle(version, trained, training))
    assert model.description == expected
    # The training date is a label, not part of the identity the result UIDs derive from.
    assert model.device_uid == ModelIdentity.from_bundle(_Bundle(version, trained, {})).device_uid
