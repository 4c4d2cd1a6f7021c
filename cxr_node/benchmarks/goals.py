"""The inference benchmark's acceptance goals, as data: which figure, which comparison, which limit.

The runtime knows nothing of them; a result is checked here, and `goals` in the JSON says
met (true), not met (false) or not measured (null).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Goal:
    name: str  # key in the result's "goals"
    figure: tuple[str, ...]  # path of the figure in the result, e.g. ("worker_peak_rss_mb", "peak_mb")
    compare: str  # "<=" or ">="
    limit: float
    why: str


GOALS: tuple[Goal, ...] = (
    Goal(
        "analysis_le_1.15x_floor",
        ("analysis_over_floor",),
        "<=",
        1.15,
        "the served analysis (models + CAMs) costs at most 15 % over two bare forwards",
    ),
    Goal(
        "naive_ge_3x_analysis",
        ("naive_over_analysis",),
        ">=",
        3.0,
        "at least 3 x faster than per-model autograd Grad-CAM",
    ),
    Goal(
        "worker_rss_le_1.5GB",
        ("worker_peak_rss_mb", "peak_mb"),
        "<=",
        1500.0,
        "a CPU worker (both models, a batch of 4, SR + SC) fits in 1.5 GB",
    ),
)

_COMPARE: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


def _figure(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return float(value)


def check(result: dict[str, Any], goals: tuple[Goal, ...] = GOALS) -> dict[str, bool | None]:
    """Each goal's verdict on `result`: None where its figure was not measured."""
    verdicts: dict[str, bool | None] = {}
    for goal in goals:
        value = _figure(result, goal.figure)
        verdicts[goal.name] = None if value is None else _COMPARE[goal.compare](value, goal.limit)
    return verdicts


__all__ = ["GOALS", "Goal", "check"]
