"""Where each image comes from, metrics per source, and what source confounding does to them.

public-cxr-plus mixes sources: every COVID-19 image comes from ieee8023 / Actualmed (figure
crops, PNG), most normals and pneumonias from NIH ChestX-ray14 (one US hospital, JPEG). A
model can then separate the labels by recognising the source. Metrics on one source, where
the labels share acquisition and processing (model A on NIH images: normal vs pneumonia), are
the fairer test; the source is read from the file name (`nih-00001.jpg` -> `nih`).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import PurePath
from typing import Any

import numpy as np

from cxr_node.analysis.fusion import Thresholds
from training.metrics import binary_metrics, joint_metrics, target_a, target_b

_PREFIX = re.compile(r"([a-z][a-z0-9]*)[-_]")


def source_of(name: str) -> str:
    """The file name's leading word (`ieee8023-0001.png` -> `ieee8023`); `unknown` without one
    (a DICOM set keyed by SOP Instance UID)."""
    m = _PREFIX.match(PurePath(name).name.lower())
    return m.group(1) if m else "unknown"


def per_source_metrics(
    names: list[str], labels: np.ndarray, p_abn: np.ndarray, p_cov: np.ndarray, in_b: np.ndarray, thresholds: Thresholds
) -> dict[str, dict[str, Any]]:
    """Test metrics of A, B (on its test subset) and the joint answer, restricted to each source."""
    sources = np.array([source_of(n) for n in names])
    out = {}
    for src in sorted(set(sources.tolist())):
        m = sources == src
        mb = m & in_b
        out[src] = {
            "n": int(m.sum()),
            "counts": {lab: int(np.sum(labels[m] == lab)) for lab in ("normal", "pathological", "covid")},
            "A": binary_metrics(target_a(labels[m]), p_abn[m], "A"),
            "B": binary_metrics(target_b(labels[mb]), p_cov[mb], "B"),
            "joint": joint_metrics(labels[m], p_abn[m], p_cov[m], thresholds),
        }
    return out


def label_sources(names: list[str], labels: np.ndarray) -> dict[str, dict[str, int]]:
    """label -> {source: images}."""
    table: dict[str, Counter] = {}
    for n, lab in zip(names, labels, strict=True):
        table.setdefault(str(lab), Counter())[source_of(n)] += 1
    return {lab: dict(sorted(c.items())) for lab, c in sorted(table.items())}


def confounding_statement(by_label: dict[str, dict[str, int]]) -> str | None:
    """A plain sentence on what the source mix means for the COVID-19 figures; None for one source."""
    sources = {s for c in by_label.values() for s in c}
    if len(sources) < 2 or "covid" not in by_label:
        return None
    covid = by_label["covid"]
    rest: Counter[str] = Counter()
    for lab, c in by_label.items():
        if lab != "covid":
            rest.update(c)
    n_cov, n_rest = sum(covid.values()), sum(rest.values())
    shared = sum(n for s, n in covid.items() if rest.get(s, 0) > 0)
    rest_in_covid_sources = sum(n for s, n in rest.items() if s in covid)
    where = ", ".join(f"{s} {n}" for s, n in covid.items())
    text = (
        f"Source confounding: the {n_cov} COVID-19 images come from {where}; of the {n_rest} normal and "
        f"pathological images {rest_in_covid_sources} come from those sources and "
        f"{n_rest - rest_in_covid_sources} from others ({', '.join(f'{s} {n}' for s, n in rest.items() if s not in covid)}). "
    )
    if rest_in_covid_sources < 0.5 * n_rest:
        text += (
            "A model can therefore tell COVID-19 from the rest by recognising where an image comes from "
            "(format, cropping, annotations, hospital), without seeing any disease: model B's figures and "
            "the joint COVID-19 row measure source recognition at least as much as COVID-19, and say "
            "nothing about how the model would do on COVID-19 radiographs from the normal and pathological "
            "images' sources. Read model A on a single source (normal and abnormal images from the same "
            "hospital) as the fairer figure."
        )
    else:
        text += (
            f"{shared} of the COVID-19 images share a source with other labels; per-source figures below "
            "show whether the result holds within one source."
        )
    return text
