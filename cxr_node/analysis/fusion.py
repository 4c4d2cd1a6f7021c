"""The joint Normal / Pathological / COVID-19 answer from model A and model B.

Rule (de Moura et al. 2020 run both binary models; this fixes how their answers combine):

    p_abn = P(abnormal) from model A (normal vs pathological-or-COVID)
    p_cov = P(COVID-19) from model B (COVID-19 vs not-COVID)

    COVID-19      if p_cov >= t_B
    Pathological  elif p_abn >= t_A
    Normal        otherwise

B decides first because it is the more specific model. When B says COVID-19
while A says normal (p_abn < t_A) the models disagree; the answer stays
COVID-19 and the disagreement is flagged for the reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JointClass(StrEnum):
    NORMAL = "Normal"
    PATHOLOGICAL = "Pathological"
    COVID = "COVID-19"


@dataclass(frozen=True)
class Thresholds:
    a: float = 0.5
    b: float = 0.5

    def __post_init__(self) -> None:
        for key, value in (("a", self.a), ("b", self.b)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"threshold {key} = {value} must lie strictly between 0 and 1")


@dataclass(frozen=True)
class JointResult:
    label: JointClass
    p_abnormal: float
    p_covid: float
    models_disagree: bool


def joint_rule(p_abnormal: float, p_covid: float, thresholds: Thresholds) -> JointResult:
    a_positive = p_abnormal >= thresholds.a
    b_positive = p_covid >= thresholds.b
    if b_positive:
        label = JointClass.COVID
    elif a_positive:
        label = JointClass.PATHOLOGICAL
    else:
        label = JointClass.NORMAL
    return JointResult(label, float(p_abnormal), float(p_covid), models_disagree=b_positive and not a_positive)
