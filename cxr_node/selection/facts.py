"""What the header says about the body part, the view and the age, and which attribute said it.

Rules test these facts by name (`body_part`, `view`, `age`) as they test DICOM attributes.
Each fact is read from three tiers of attributes, in order:

  1. the coded values: BodyPartExamined / AnatomicRegionSequence, ViewPosition / ViewCodeSequence
  2. what describes this image or series: SeriesDescription, ProtocolName,
     AcquisitionDeviceProcessingDescription, PerformedProtocolCodeSequence meanings
     (and BodyPartExamined's own words for the view: "CHEST_AP", "Thorax lat")
  3. what describes the whole examination: StudyDescription, PerformedProcedureStepDescription,
     RequestedProcedureDescription, ProcedureCodeSequence / RequestedProcedureCodeSequence meanings

The first attribute of tiers 1-2 that names one meaning decides; tier 3 is read only when
tiers 1-2 are silent, because a study ("ABDOMEN AGUDO", "TORAX PA Y LAT") holds several
images. When two attributes of the tiers read name different meanings, the fact is
`conflict` and its source names both. An attribute naming several meanings at once
("TORAX Y ABDOMEN", "PA Y LATERAL") describes more than one image and decides nothing.
A coded value no table knows (BodyPartExamined "XYZ") makes the fact `unrecognised` when
nothing else speaks: not taken for the chest, and a site adds the word to its table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from cxr_node.selection.age import patient_age
from cxr_node.selection.vocabulary import IGNORE, Match, Vocabulary

# A meaning that is a kind of another: they do not conflict, and the narrower one is the fact.
REFINES = {"decubitus": "frontal"}
CONFLICT = "conflict"
UNRECOGNISED = "unrecognised"  # a coded value is there but no table knows it
FACTS = ("body_part", "view", "age")

_IMAGE_TEXT = ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription")
_STUDY_TEXT = (
    "StudyDescription",
    "PerformedProcedureStepDescription",
    "RequestedProcedureDescription",
    "ProcedureCodeSequence",
    "RequestedProcedureCodeSequence",
    "RequestAttributesSequence.RequestedProcedureDescription",
    "RequestAttributesSequence.RequestedProcedureCodeSequence",
)
TIERS: dict[str, tuple[tuple[str, ...], ...]] = {
    "body_part": (
        ("BodyPartExamined", "AnatomicRegionSequence"),
        (*_IMAGE_TEXT, "PerformedProtocolCodeSequence"),
        _STUDY_TEXT,
    ),
    "view": (
        ("ViewPosition", "ViewCodeSequence"),
        (*_IMAGE_TEXT, "PerformedProtocolCodeSequence", "BodyPartExamined"),
        _STUDY_TEXT,
    ),
}


@dataclass(frozen=True)
class Statement:
    """What one attribute says for one fact."""

    attribute: str
    text: str  # the value as read (a code as SCHEME:VALUE 'meaning')
    matches: tuple[Match, ...]
    tier: int

    @property
    def meanings(self) -> tuple[str, ...]:
        found = dict.fromkeys(m.meaning for m in self.matches if m.meaning != IGNORE)
        # "TORAX AP DECUBITO LATERAL": an AP projection lying on one side is one view, the decubitus
        return tuple(m for m in found if not any(REFINES.get(other) == m for other in found))

    def describe(self) -> str:
        return f"{self.attribute} {self.text!r}"


@dataclass(frozen=True)
class Fact:
    name: str
    value: str  # a meaning, "conflict", or "" when nothing says
    source: str  # the deciding attribute(s) and value(s), or why nothing did
    statements: tuple[Statement, ...] = ()
    years: float | None = None  # age only


def _items(ds: Dataset, path: str) -> list[Any]:
    """The items of a sequence at `path` (a nested path reads every item of the outer sequences)."""
    current: list[Any] = [ds]
    for keyword in path.split("."):
        nxt: list[Any] = []
        for item in current:
            value = item.get(keyword) if isinstance(item, Dataset) else None
            if value is None or value == "":
                continue
            nxt.extend(value if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value])
        current = nxt
    return current


def _statements(ds: Dataset, vocabulary: Vocabulary, kind: str, attribute: str, tier: int) -> list[Statement]:
    out = []
    for value in _items(ds, attribute):
        if isinstance(value, Dataset):  # a code item: its code first, else the words of its meaning
            scheme, code = str(value.get("CodingSchemeDesignator", "")), str(value.get("CodeValue", ""))
            meaning = str(value.get("CodeMeaning", "") or "")
            coded = vocabulary.code(kind, scheme, code) if code else None
            matches = [coded] if coded is not None else vocabulary.read(kind, meaning)
            text = f"{scheme}:{code} {meaning!r}" if code else meaning
            if matches or text.strip():
                out.append(Statement(attribute, text, tuple(matches), tier))
        else:
            text = str(value).strip()
            if text:
                out.append(Statement(attribute, text, tuple(vocabulary.read(kind, text)), tier))
    return out


def _compatible(a: str, b: str) -> bool:
    return a == b or REFINES.get(a) == b or REFINES.get(b) == a


def _decide(name: str, statements: list[Statement]) -> Fact:
    telling = [s for s in statements if len(s.meanings) == 1]
    for tiers in ((1, 2), (3,)):
        said = [s for s in telling if s.tier in tiers]
        if not said:
            continue
        first = said[0]
        others = [s for s in said if not _compatible(s.meanings[0], first.meanings[0])]
        narrower = [s for s in said if REFINES.get(s.meanings[0]) == first.meanings[0]]
        if narrower and not others:
            first = narrower[0]
        if others:
            other = others[0]
            source = f"{first.describe()} says {first.meanings[0]} but {other.describe()} says {other.meanings[0]}"
            return Fact(name, CONFLICT, source, tuple(statements))
        return Fact(name, first.meanings[0], first.describe(), tuple(statements))
    unknown = [s for s in statements if s.tier == 1 and not s.matches]
    if unknown:
        return Fact(name, UNRECOGNISED, f"{unknown[0].describe()} is in no vocabulary table", tuple(statements))
    mixed = [s for s in statements if len(s.meanings) > 1]
    if mixed:
        why = "; ".join(f"{s.describe()} names {' and '.join(s.meanings)}" for s in mixed)
        return Fact(name, "", f"not stated for this image ({why})", tuple(statements))
    return Fact(name, "", "not stated", tuple(statements))


def derive(ds: Dataset, vocabulary: Vocabulary, name: str) -> Fact:
    if name == "age":
        try:
            age = patient_age(ds)
        except Exception as exc:  # a malformed value must not cost the image its acknowledgement
            return Fact("age", "", f"age not readable: {' '.join(str(exc).split())[:120]}")
        return Fact("age", age.text(), age.source, (), age.years)
    statements: list[Statement] = []
    for tier, attributes in enumerate(TIERS[name], start=1):
        for attribute in attributes:
            try:
                statements.extend(_statements(ds, vocabulary, name, attribute, tier))
            except Exception:  # an attribute that cannot be read says nothing (the others still do)
                continue
    return _decide(name, statements)


__all__ = ["CONFLICT", "UNRECOGNISED", "FACTS", "TIERS", "Fact", "Statement", "derive"]
