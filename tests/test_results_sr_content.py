"""What a reader of the SR sees first: the answer, the model, the analysed image and its view,
the not-for-diagnosis statement; dsr2html's rendering; the report without the Grad-CAM SC."""

from __future__ import annotations

import re
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from cxr_node.analysis.fusion import JointClass
from cxr_node.results.identity import ResultUIDs, no_illustration_sr_uid
from cxr_node.results.sr import (
    AI_MODEL,
    ANALYSED_IMAGE,
    CLASS_CODES,
    COMPREHENSIVE_SR,
    ILLUSTRATION,
    ILLUSTRATION_NOT_STORED,
    ILLUSTRATION_NOTE,
    INTENDED_USE,
    MODEL_STATUS,
    NOTE,
    OVERALL_CLASS,
    QUALITATIVE_EVALUATIONS,
    TRACKING_A,
    TRACKING_B,
    TRACKING_SUMMARY,
    as_comprehensive_sr,
    build_structured_report,
    without_illustration,
)
from cxr_node.results.wording import NOT_FOR_DIAGNOSIS, UNTRAINED_MODEL_TEXT
from tests import peers
from tests.test_results_support import (
    CASES,
    NODE,
    TRAINED,
    UNTRAINED,
    make_results,
    pixelmed_errors,
    pixelmed_sr_validate,
    pixelmed_unexpected,
    source_copy,
)

CLASS_WORDS = {
    JointClass.NORMAL: "Normal",
    JointClass.PATHOLOGICAL: "Pathological (non-COVID-19)",
    JointClass.COVID: "COVID-19",
}


def _name(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodeValue, code.CodingSchemeDesignator


def _key(concept) -> tuple[str, str]:
    return concept.value, concept.scheme_designator


def _containers(sr: Dataset) -> list[Dataset]:
    return [i for i in sr.ContentSequence if i.RelationshipType == "CONTAINS"]


def _groups(sr: Dataset) -> list[Dataset]:
    (measurements,) = [i for i in _containers(sr) if i.ValueType == "CONTAINER" and _name(i) == ("126010", "DCM")]
    return list(measurements.ContentSequence)


def _tracking(group: Dataset) -> str:
    return next(i.TextValue for i in group.ContentSequence if _name(i) == ("112039", "DCM"))


def _items(group: Dataset, concept) -> list[Dataset]:
    return [i for i in group.ContentSequence if _name(i) == _key(concept)]


def _text_of(group: Dataset, concept) -> str:
    (item,) = _items(group, concept)
    return item.TextValue


def _all_text(items) -> list[str]:
    out = []
    for item in items:
        for keyword in ("TextValue",):
            if keyword in item:
                out.append(str(item[keyword].value))
        if "ConceptCodeSequence" in item:
            out.append(item.ConceptCodeSequence[0].CodeMeaning)
        out += _all_text(item.get("ContentSequence", []))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_report_leads_with_the_overall_class(case, rg1_uncr, tmp_path):
    _, files = make_results(rg1_uncr, tmp_path, case, model=TRAINED)
    sr = pydicom.dcmread(files.sr_path)
    # The first CONTAINS item of the document is Imaging Measurements, and its first group the summary.
    assert _name(_containers(sr)[0]) == ("126010", "DCM")
    groups = _groups(sr)
    assert [_tracking(g) for g in groups] == [TRACKING_SUMMARY, TRACKING_A, TRACKING_B]
    summary = groups[0]
    assert summary.ContinuityOfContent == "SEPARATE"  # renderers print each item with its name
    contains = [i for i in summary.ContentSequence if i.RelationshipType == "CONTAINS"]
    # Finding = the class, then the labelled class, before any other statement of the group.
    assert _name(contains[0]) == ("121071", "DCM")
    label = CASES[case].label
    assert contains[0].ConceptCodeSequence[0].CodeValue == CLASS_CODES[label].value
    (overall,) = _items(summary, OVERALL_CLASS)
    assert overall.ConceptCodeSequence[0].CodeValue == CLASS_CODES[label].value
    assert overall.ConceptCodeSequence[0].CodeMeaning == CLASS_WORDS[label]
    order = [_name(i) for i in contains]
    assert order.index(_key(OVERALL_CLASS)) < order.index(_key(AI_MODEL)) < order.index(_key(ANALYSED_IMAGE))
    assert _text_of(summary, AI_MODEL) == "cxr-covid-moura2020 v3, trained 2026-11-20"
    assert _text_of(summary, INTENDED_USE) == NOT_FOR_DIAGNOSIS
    assert not any("UNTRAINED" in t.upper() for t in _all_text(sr.ContentSequence))
    # Document-level conclusion at TID 1500 row 12, for programs.
    (top,) = [i for i in _containers(sr) if _name(i) == _key(QUALITATIVE_EVALUATIONS)]
    (top_class,) = _items(top, OVERALL_CLASS)
    assert top_class.ConceptCodeSequence[0].CodeValue == CLASS_CODES[label].value


def test_untrained_statement_is_in_the_content(rg1_uncr, tmp_path):
    _, files = make_results(rg1_uncr, tmp_path, "normal", model=UNTRAINED)
    summary = _groups(pydicom.dcmread(files.sr_path))[0]
    assert _text_of(summary, AI_MODEL) == UNTRAINED_MODEL_TEXT
    assert _text_of(summary, INTENDED_USE) == f"{UNTRAINED_MODEL_TEXT}; {NOT_FOR_DIAGNOSIS}"
    (status,) = _items(summary, MODEL_STATUS)
    assert status.ConceptCodeSequence[0].CodeMeaning == "Untrained model - not for clinical use"


def _view_code(meaning: str) -> list[Dataset]:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "R-10214", "SRT", meaning
    return [item]


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"ViewPosition": "AP", "SeriesNumber": 7, "InstanceNumber": 3}, "CR series 7, instance 3, view AP"),
        ({"ViewPosition": "", "SeriesNumber": 2, "InstanceNumber": 1}, "CR series 2, instance 1, view not stated"),
        (
            {"ViewPosition": "", "ViewCodeSequence": _view_code("antero-posterior")},
            "CR series 1, instance 1, view antero-posterior",
        ),
    ],
)
def test_report_names_the_analysed_image_and_its_view(changes, expected, rg1_uncr, tmp_path):
    source = source_copy(rg1_uncr, **changes)
    _, files = make_results(rg1_uncr, tmp_path, "covid", model=TRAINED, source=source)
    summary = _groups(pydicom.dcmread(files.sr_path))[0]
    assert _text_of(summary, ANALYSED_IMAGE) == expected
    # ...and references that very image.
    refs = [
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in summary.ContentSequence if i.ValueType == "IMAGE"
    ]
    assert source.SOPInstanceUID in refs
    assert expected in pydicom.dcmread(files.sc_path).DerivationDescription


def _rendered_text(path) -> str:
    exe = peers.find_program("dsr2html")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", out.stdout))


@pytest.mark.peers  # dciodvfy / dsr2html
def test_dsr2html_shows_the_answer_before_the_model_details(rg1_uncr, tmp_path):
    _, files = make_results(rg1_uncr, tmp_path, "covid-disagree", model=UNTRAINED)
    text = _rendered_text(files.sr_path)
    statements = (
        "AI overall class: COVID-19",
        f"AI model: {UNTRAINED_MODEL_TEXT}",
        "Analysed image: CR series 1, instance 1, view PA",
        f"Intended use: {UNTRAINED_MODEL_TEXT}; {NOT_FOR_DIAGNOSIS}",
        "Illustration of ROI: SC image",
    )
    first = {s: text.find(s) for s in (*statements, TRACKING_A, TRACKING_B)}
    assert all(pos >= 0 for pos in first.values()), first
    for statement in statements:
        assert first[statement] < first[TRACKING_A] < first[TRACKING_B], (statement, first)
    # The per-model probabilities and answers come labelled, in their groups.
    assert first[TRACKING_A] < text.find("Probability of abnormality: 30.03 %") < first[TRACKING_B]
    assert first[TRACKING_A] < text.find("Abnormal: Absent (272519000, SCT)") < first[TRACKING_B]
    assert text.find("Probability of COVID-19: 81.23 %") > first[TRACKING_B]
    assert text.find("COVID-19: Present (52101004, SCT)") > first[TRACKING_B]
    # The answer is in the header too, before the observer context: SeriesDescription.
    assert text.find("AI UNTRAINED: COVID-19, not for diagnosis") < text.find("Observer Type")


# -- the report for a PACS that refused the Grad-CAM SC ------------------------------------


def _image_refs(items) -> list[str]:
    out = []
    for item in items:
        if item.get("ValueType") == "IMAGE":
            out.append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        out += _image_refs(item.get("ContentSequence", []))
    return out


def _evidence(sr) -> set[str]:
    return {
        i.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for i in se.ReferencedSOPSequence
    }


@pytest.mark.peers  # dciodvfy / dsr2html
def test_without_illustration_drops_the_sc_and_says_so(rg1_uncr, tmp_path):
    source, files = make_results(rg1_uncr, tmp_path, "pathological", model=TRAINED)
    full = pydicom.dcmread(files.sr_path)
    assert files.sc_uid in _image_refs(full.ContentSequence) and files.sc_uid in _evidence(full)
    bare = without_illustration(full)
    assert isinstance(bare, hd.sr.Comprehensive3DSR)
    assert files.sc_uid not in _image_refs(bare.ContentSequence)
    assert _evidence(bare) == {source.SOPInstanceUID}
    summary = _groups(bare)[0]
    assert _items(summary, ILLUSTRATION) == []
    assert _text_of(summary, ILLUSTRATION_NOTE) == ILLUSTRATION_NOT_STORED
    assert "not stored" in ILLUSTRATION_NOT_STORED
    assert bare.SOPInstanceUID == no_illustration_sr_uid(files.sr_uid) != files.sr_uid
    assert bare.SeriesInstanceUID == full.SeriesInstanceUID
    assert without_illustration(full).SOPInstanceUID == bare.SOPInstanceUID  # same call, same object
    # The written report is untouched.
    assert files.sc_uid in _image_refs(full.ContentSequence)
    # Built directly, without an SC: the same content and UID.
    built = build_structured_report(
        source, CASES["pathological"], ResultUIDs.for_source(source.SOPInstanceUID, TRAINED), NODE, TRAINED, sc=None
    )
    assert built.SOPInstanceUID == bare.SOPInstanceUID and built.InstanceNumber == bare.InstanceNumber
    assert built.ContentSequence == bare.ContentSequence
    # A PACS without 3D SR: convert after leaving the illustration out.
    comprehensive = as_comprehensive_sr(bare)
    assert comprehensive.SOPClassUID == COMPREHENSIVE_SR and comprehensive.ContentSequence == bare.ContentSequence
    path = tmp_path / "bare.dcm"
    bare.save_as(path, enforce_file_format=True)
    errors, _ = peers.dciodvfy(path)
    assert errors == [], "\n".join(errors)
    assert pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID == bare.SOPInstanceUID


def test_without_illustration_refuses_what_it_cannot_do(rg1_uncr, tmp_path):
    _, files = make_results(rg1_uncr, tmp_path, "normal")
    full = pydicom.dcmread(files.sr_path)
    with pytest.raises(ValueError, match="Comprehensive 3D SR"):
        without_illustration(as_comprehensive_sr(full))
    with pytest.raises(ValueError, match="references no Secondary Capture"):
        without_illustration(without_illustration(full))


@pytest.mark.slow
@pytest.mark.peers
def test_pixelmed_accepts_the_report_without_illustration(rg1_uncr, tmp_path):
    _, files = make_results(rg1_uncr, tmp_path, "covid-disagree", model=UNTRAINED)
    path = tmp_path / "bare.dcm"
    without_illustration(pydicom.dcmread(files.sr_path)).save_as(path, enforce_file_format=True)
    report = pixelmed_sr_validate(path)
    assert pixelmed_errors(report) == []
    # Only our private statements, as extensions of the extensible TID 1501 (docs/results.md).
    assert pixelmed_unexpected(report[str(path)]) == []


def test_notes_reach_the_sr_and_the_sc(rg1_uncr, tmp_path):
    """The node's notes on how it read the image: a Comment each in the overall result, and in the SC."""
    notes = [
        "window: node's robust window (WindowWidth 0 ignored)",
        "patient age not stated",
        "  ",
        "patient age not stated",
    ]
    _, files = make_results(rg1_uncr, tmp_path, "normal", model=TRAINED, notes=notes)
    summary = _groups(pydicom.dcmread(files.sr_path))[0]
    assert [i.TextValue for i in _items(summary, NOTE)] == notes[:2]  # blanks and repeats dropped, order kept
    description = pydicom.dcmread(files.sc_path).DerivationDescription
    assert all(f"note: {n}" in description for n in notes[:2])
    _, plain = make_results(rg1_uncr, tmp_path / "plain", "normal", model=TRAINED)
    assert _items(_groups(pydicom.dcmread(plain.sr_path))[0], NOTE) == []
    assert not np.array_equal(plain.rgb, files.rgb)  # the notes are drawn
