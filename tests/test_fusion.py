"""The joint Normal / Pathological / COVID-19 rule."""

from __future__ import annotations

import pytest

from cxr_node.analysis.fusion import JointClass, Thresholds, joint_rule

T = Thresholds(a=0.4, b=0.6)


@pytest.mark.parametrize(
    "p_abn,p_cov,label,disagree",
    [
        (0.10, 0.10, JointClass.NORMAL, False),
        (0.39, 0.59, JointClass.NORMAL, False),
        (0.40, 0.10, JointClass.PATHOLOGICAL, False),  # threshold is inclusive
        (0.90, 0.59, JointClass.PATHOLOGICAL, False),
        (0.90, 0.60, JointClass.COVID, False),
        (0.10, 0.95, JointClass.COVID, True),  # B says COVID, A says normal: flagged, B wins
    ],
)
def test_rule_table(p_abn, p_cov, label, disagree):
    r = joint_rule(p_abn, p_cov, T)
    assert r.label is label
    assert r.models_disagree is disagree
    assert (r.p_abnormal, r.p_covid) == (p_abn, p_cov)


def test_labels_are_the_three_reported_classes():
    assert [c.value for c in JointClass] == ["Normal", "Pathological", "COVID-19"]


@pytest.mark.parametrize("a,b", [(0.0, 0.5), (0.5, 1.0), (-0.1, 0.5), (0.5, 1.5)])
def test_thresholds_must_be_open_unit_interval(a, b):
    with pytest.raises(ValueError, match="between 0 and 1"):
        Thresholds(a, b)
