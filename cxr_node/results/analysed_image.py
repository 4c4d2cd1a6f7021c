"""The analysed radiograph in a reader's words: modality, series, instance and view.

The SR and the SC both say which image the result was computed from, so that a repeat
exposure or a second view of the same study can be told apart at a glance.

The view is ViewPosition (CR/DX), else the first View Code's meaning (DX). When neither is
there, it is what the selection read from the descriptions (cxr_node.selection.facts, the
same vocabulary and tiers that decided the image is a frontal view), named with the words
and the attribute it came from: "view AP (from SeriesDescription 'TORAX AP PORTATIL')".
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from cxr_node.selection.facts import CONFLICT, UNRECOGNISED, derive
from cxr_node.selection.vocabulary import Vocabulary, builtin

VIEW_NOT_STATED = "view not stated"


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed element names nothing (it never costs the image its result)
        return None
    text = "" if value is None else str(value).strip()
    return text or None


def _coded_view(ds: Dataset) -> str | None:
    """ViewPosition (CR/DX), else the meaning of the first View Code (DX), else None."""
    view = _text(ds, "ViewPosition")
    if view is None:
        try:
            codes = ds.get("ViewCodeSequence")
            view = _text(codes[0], "CodeMeaning") if codes else None
        except Exception:
            return None
    return view


def _described_view(ds: Dataset, vocabulary: Vocabulary) -> tuple[str, str] | None:
    """(the words naming the view, "Attribute 'value'") from the descriptions, as the
    selection reads them; None when they name no one view (silent, conflicting, unknown)."""
    fact = derive(ds, vocabulary, "view")
    if not fact.value or fact.value in (CONFLICT, UNRECOGNISED):
        return None
    for statement in fact.statements:  # the one that decided: its describe() is the fact's source
        if statement.describe() == fact.source:
            words = [m.phrase for m in statement.matches if m.meaning == fact.value]
            if words:
                return words[0], fact.source
    return None


@dataclass(frozen=True)
class AnalysedImage:
    modality: str | None
    series_number: str | None
    instance_number: str | None
    view: str | None
    view_source: str | None = None  # None: a coded view; else the description it was read from

    @classmethod
    def of(cls, source: Dataset, vocabulary: Vocabulary | None = None) -> AnalysedImage:
        """vocabulary: the node's word tables (the config's [selection] vocabulary); None: the
        built-in one. Read only when the header codes no view."""
        view, view_source = _coded_view(source), None
        if view is None:
            described = _described_view(source, vocabulary if vocabulary is not None else builtin())
            if described is not None:
                view, view_source = described
        return cls(
            _text(source, "Modality"),
            _text(source, "SeriesNumber"),
            _text(source, "InstanceNumber"),
            view,
            view_source,
        )

    @property
    def view_text(self) -> str:
        if not self.view:
            return VIEW_NOT_STATED
        return f"view {self.view} (from {self.view_source})" if self.view_source else f"view {self.view}"

    @property
    def text(self) -> str:
        """e.g. "CR series 1, instance 1, view AP", "DX series 3, instance 2, view not stated" or
        "CR series 1, instance 1, view AP (from SeriesDescription 'TORAX AP PORTATIL')"."""
        series = f"series {self.series_number}" if self.series_number else "series number not stated"
        instance = f"instance {self.instance_number}" if self.instance_number else "instance number not stated"
        return f"{self.modality or 'image'} {series}, {instance}, {self.view_text}"
