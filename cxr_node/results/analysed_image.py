"""The analysed radiograph in a reader's words: modality, series, instance and view.

The SR and the SC both say which image the result was computed from, so that a repeat
exposure or a second view of the same study can be told apart at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

VIEW_NOT_STATED = "view not stated"


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = "" if value is None else str(value).strip()
    return text or None


def _view(ds: Dataset) -> str | None:
    """ViewPosition (CR/DX), else the meaning of the first View Code (DX), else None."""
    view = _text(ds, "ViewPosition")
    if view is None:
        codes = ds.get("ViewCodeSequence")
        if codes:
            view = _text(codes[0], "CodeMeaning")
    return view


@dataclass(frozen=True)
class AnalysedImage:
    modality: str | None
    series_number: str | None
    instance_number: str | None
    view: str | None

    @classmethod
    def of(cls, source: Dataset) -> AnalysedImage:
        return cls(
            _text(source, "Modality"), _text(source, "SeriesNumber"), _text(source, "InstanceNumber"), _view(source)
        )

    @property
    def view_text(self) -> str:
        return f"view {self.view}" if self.view else VIEW_NOT_STATED

    @property
    def text(self) -> str:
        """e.g. "CR series 1, instance 1, view AP" or "DX series 3, instance 2, view not stated"."""
        series = f"series {self.series_number}" if self.series_number else "series number not stated"
        instance = f"instance {self.instance_number}" if self.instance_number else "instance number not stated"
        return f"{self.modality or 'image'} {series}, {instance}, {self.view_text}"
