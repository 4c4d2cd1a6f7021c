"""What `config check` warns about: an effective rule set that analyses images the models were
not made for. Found by deciding synthetic headers, so the warning holds whatever the rules
look like (site rules, switched-off defaults, a default action of analyse)."""

from __future__ import annotations

from datetime import date

from pydicom.dataset import Dataset

from cxr_node.selection.defaults import DX_FOR_PROCESSING
from cxr_node.selection.rules import Selection

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
STUDY_DATE = date(2026, 1, 15)


def frontal_adult_chest() -> Dataset:
    """The header the rules exist to analyse: an adult's frontal chest radiograph."""
    ds = Dataset()
    ds.SOPClassUID = CR
    ds.Modality = "CR"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientAge = "045Y"
    ds.StudyDate = STUDY_DATE.strftime("%Y%m%d")
    return ds


def _variant(**attrs) -> Dataset:
    ds = frontal_adult_chest()
    for keyword, value in attrs.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def unwanted() -> list[tuple[str, Dataset]]:
    ten_years_ago = STUDY_DATE.replace(year=STUDY_DATE.year - 10).strftime("%Y%m%d")
    return [
        (
            "a DX For Processing image (SOPClassUID For Processing)",
            _variant(SOPClassUID=DX_FOR_PROCESSING, Modality="DX"),
        ),
        (
            "a For Processing image (PresentationIntentType FOR PROCESSING)",
            _variant(SOPClassUID=DX, Modality="DX", PresentationIntentType="FOR PROCESSING"),
        ),
        ("a secondary image (ImageType DERIVED\\SECONDARY)", _variant(ImageType=["DERIVED", "SECONDARY"])),
        ("a lateral view (ViewPosition LL)", _variant(ViewPosition="LL")),
        (
            "a lateral view stated only in SeriesDescription ('Thorax lat')",
            _variant(ViewPosition="", SeriesDescription="Thorax lat"),
        ),
        ("an oblique view (ViewPosition RLO)", _variant(ViewPosition="RLO")),
        ("a child (PatientAge 010Y)", _variant(PatientAge="010Y")),
        (
            "a child (PatientBirthDate only, 10 years before StudyDate)",
            _variant(PatientAge=None, PatientBirthDate=ten_years_ago),
        ),
        ("another body part (BodyPartExamined ABDOMEN)", _variant(BodyPartExamined="ABDOMEN")),
    ]


def warnings(selection: Selection) -> list[str]:
    """One line per kind of image the effective rules would analyse, naming the deciding rule."""
    out = []
    decision = selection.decide(frontal_adult_chest())
    if not decision.analyse:
        out.append(
            f"selection: an adult frontal chest radiograph (CR, CHEST, PA, 045Y) is skipped by rule {decision.rule}"
        )
    for what, ds in unwanted():
        decision = selection.decide(ds)
        if decision.analyse:
            by = "no rule matched, default analyse" if decision.rule == "default" else f"rule {decision.rule}"
            out.append(f"selection: the effective rules analyse {what} ({by})")
    return out


__all__ = ["frontal_adult_chest", "unwanted", "warnings"]
