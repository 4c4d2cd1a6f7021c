"""What a machine reading the SR concludes: no absent finding coded as present, each model's
probability with a unit and its Present / Absent answer, consistent with the class and thresholds."""

from __future__ import annotations

from dataclasses import replace

import pydicom
import pytest
from pydicom.dataset import Dataset

from cxr_node.analysis.fusion import JointClass, JointResult, Thresholds, joint_rule
from cxr_node.results.sr import ABNORMAL, ABSENT, CLASS_CODES, COVID_19, P_ABNORMAL, P_COVID, PRESENT, model_answers
from tests.test_results_support import CASES, TRAINED, make_results

FINDING = ("121071", "DCM")
WITH_THRESHOLDS = replace(TRAINED, thresholds=(0.5, 0.5))


def _key(concept) -> tuple[str, str]:
    return concept.value, concept.scheme_designator


def _code(item: Dataset, keyword: str) -> tuple[str, str]:
    code = item[keyword][0]
    return code.CodeValue, code.CodingSchemeDesignator


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _read(path) -> tuple[set, dict, dict]:
    """Every coded Finding, every Present / Absent statement, every NUM (value, unit) in the whole tree."""
    findings, presence, numbers = set(), {}, {}
    for item in _walk(pydicom.dcmread(path).ContentSequence):
        if item.ValueType == "CODE" and _code(item, "ConceptNameCodeSequence") == FINDING:
            findings.add(_code(item, "ConceptCodeSequence"))
        elif item.ValueType == "CODE" and _code(item, "ConceptCodeSequence") in (_key(PRESENT), _key(ABSENT)):
            name = _code(item, "ConceptNameCodeSequence")
            assert name not in presence, f"{name} stated twice"
            presence[name] = _code(item, "ConceptCodeSequence") == _key(PRESENT)
        elif item.ValueType == "NUM":
            (value,) = item.MeasuredValueSequence
            unit = value.MeasurementUnitsCodeSequence[0]
            numbers[_code(item, "ConceptNameCodeSequence")] = (
                float(value.NumericValue),
                unit.CodingSchemeDesignator,
                unit.CodeValue,
            )
    return findings, presence, numbers


# What each result may code as a Finding, and each model's answer (A abnormal, B COVID-19).
EXPECTED = {
    "normal": ({CLASS_CODES[JointClass.NORMAL]}, False, False),
    "pathological": ({CLASS_CODES[JointClass.PATHOLOGICAL], ABNORMAL}, True, False),
    "covid": ({COVID_19, ABNORMAL}, True, True),
    "covid-disagree": ({COVID_19}, False, True),  # B says COVID-19, A says normal: flagged, A's answer kept
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_no_absent_finding_is_coded_as_present(case, rg1_uncr, tmp_path):
    _, files = make_results(rg1_uncr, tmp_path, case, model=WITH_THRESHOLDS)
    findings, presence, numbers = _read(files.sr_path)
    allowed, a_present, b_present = EXPECTED[case]
    assert findings == {_key(c) for c in allowed}, findings
    # The absent findings are never a Finding anywhere in the tree...
    if not b_present:
        assert _key(COVID_19) not in findings
    if not a_present:
        assert _key(ABNORMAL) not in findings
    # ...and are stated as Absent, each model's answer once.
    assert presence == {_key(ABNORMAL): a_present, _key(COVID_19): b_present}
    # Each model's output is a probability with a UCUM unit, on the side of the threshold its answer says.
    p_abn, p_cov = numbers[_key(P_ABNORMAL)], numbers[_key(P_COVID)]
    assert p_abn[1:] == p_cov[1:] == ("UCUM", "%")
    assert (p_abn[0] >= 50) == a_present and (p_cov[0] >= 50) == b_present
    assert set(numbers) == {_key(P_ABNORMAL), _key(P_COVID)}  # no certainty number without its finding


@pytest.mark.parametrize("p_abnormal, p_covid", [(0.1, 0.2), (0.7, 0.2), (0.7, 0.9), (0.2, 0.9), (0.5, 0.5)])
def test_model_answers_agree_with_the_joint_rule(p_abnormal, p_covid):
    thresholds = Thresholds(0.5, 0.5)
    result = joint_rule(p_abnormal, p_covid, thresholds)
    model = replace(TRAINED, thresholds=(thresholds.a, thresholds.b))
    assert model_answers(result, model) == (p_abnormal >= 0.5, p_covid >= 0.5)


@pytest.mark.parametrize(
    "result",
    [
        JointResult(JointClass.NORMAL, 0.9, 0.1, False),  # A above its threshold, yet Normal
        JointResult(JointClass.PATHOLOGICAL, 0.9, 0.7, False),  # B above its threshold, yet not COVID-19
        JointResult(JointClass.PATHOLOGICAL, 0.9, 0.1, True),  # disagreement without COVID-19
    ],
)
def test_a_result_that_contradicts_its_rule_is_refused(result, rg1_uncr, tmp_path):
    with pytest.raises(ValueError, match="inconsistent result"):
        model_answers(result, WITH_THRESHOLDS)
    CASES["broken"] = result
    try:
        with pytest.raises(ValueError, match="inconsistent result"):
            make_results(rg1_uncr, tmp_path, "broken", model=WITH_THRESHOLDS)
    finally:
        del CASES["broken"]
    assert not (tmp_path / "report-sr.dcm").exists()


def test_thresholds_are_stated_with_each_model(rg1_uncr, tmp_path):
    _, files = make_results(rg1_uncr, tmp_path, "pathological", model=replace(TRAINED, thresholds=(0.42, 0.6)))
    parameters = [
        i.TextValue
        for i in _walk(pydicom.dcmread(files.sr_path).ContentSequence)
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"
    ]
    assert any(p.startswith("decision threshold 42 %: Abnormal present") for p in parameters), parameters
    assert any(p.startswith("decision threshold 60 %: COVID-19 present") for p in parameters), parameters
