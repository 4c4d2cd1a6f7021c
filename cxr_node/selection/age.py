"""The patient's age from what the header holds.

PatientAge in its DICOM form (Age String nnnD/W/M/Y: 017Y, 006M, 010W, 003D) and the forms
seen in practice ("17Y", "017", "17", "17 years", "17 años", "6 meses", "3 Jahre"); a bare
number is years. Without a usable PatientAge, PatientBirthDate against the date of the
examination (StudyDate, else AcquisitionDate, SeriesDate, ContentDate). None when neither
says: the selection then follows its stated policy ([selection] unknown_age).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from pydicom.dataset import Dataset

from cxr_node.selection.vocabulary import normalise

MAX_YEARS = 130  # beyond this a value is a typo or a filler, not an age

_YEARS_PER = {"D": 1 / 365.2425, "W": 7 / 365.2425, "M": 1 / 12, "Y": 1.0}
# Unit words (normalised: no accents, upper case) in en, es, pt, it, fr, de -> AS unit letter.
# "J" is left out on purpose: German Jahre (years) but French jours (days).
_UNITS = {
    **dict.fromkeys(
        ["Y", "YR", "YRS", "YEAR", "YEARS", "A", "ANO", "ANOS", "ANNO", "ANNI", "AN", "ANS", "JAHR", "JAHRE"], "Y"
    ),
    **dict.fromkeys(
        ["M", "MO", "MOS", "MONTH", "MONTHS", "MES", "MESES", "MESE", "MESI", "MOIS", "MONAT", "MONATE"], "M"
    ),
    **dict.fromkeys(
        ["W", "WK", "WKS", "WEEK", "WEEKS", "SEMANA", "SEMANAS", "SETTIMANA", "SETTIMANE", "SEMAINE", "SEMAINES"]
        + ["WOCHE", "WOCHEN"],
        "W",
    ),
    **dict.fromkeys(["D", "DAY", "DAYS", "DIA", "DIAS", "GIORNO", "GIORNI", "JOUR", "JOURS", "TAG", "TAGE"], "D"),
}
_AGE = re.compile(r"^(\d{1,3})(?: ?([A-Z]+))?$")
_DATE = re.compile(r"^(\d{4})-?\.?(\d{2})-?\.?(\d{2})$")  # DA, and the YYYY.MM.DD / YYYY-MM-DD of old ACR-NEMA
DATE_ATTRIBUTES = ("StudyDate", "AcquisitionDate", "SeriesDate", "ContentDate")


def parse_age(text: str) -> float | None:
    """Years from a PatientAge value in any of the forms above, or None when it is none of them."""
    m = _AGE.match(normalise(text))
    if not m or "-" in text:  # a negative number is no age
        return None
    unit = _UNITS.get(m.group(2) or "Y")
    if unit is None:
        return None
    years = int(m.group(1)) * _YEARS_PER[unit]
    return years if years <= MAX_YEARS else None


def parse_date(text: str) -> date | None:
    m = _DATE.match(text.strip())
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def years_between(born: date, on: date) -> float | None:
    """Whole years lived on `on` (the 18th birthday is 18), days as a fraction under one year."""
    if on < born:
        return None
    whole = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    years = float(whole) if whole >= 1 else (on - born).days / 365.2425
    return years if years <= MAX_YEARS else None


@dataclass(frozen=True)
class Age:
    years: float | None
    source: str  # which attributes said so, with their values; or why it is unknown

    @property
    def known(self) -> bool:
        return self.years is not None

    def text(self) -> str:
        """ "17" for years, "0.5" for half a year; "" when unknown (value operators then do not hold)."""
        return "" if self.years is None else f"{self.years:.4g}"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def patient_age(ds: Dataset) -> Age:
    stated = _text(ds, "PatientAge")
    if stated:
        years = parse_age(stated)
        if years is not None:
            return Age(years, f"PatientAge {stated!r}")
    born_text = _text(ds, "PatientBirthDate")
    born = parse_date(born_text) if born_text else None
    if born is not None:
        for keyword in DATE_ATTRIBUTES:
            on_text = _text(ds, keyword)
            on = parse_date(on_text) if on_text else None
            if on is not None:
                years = years_between(born, on)
                if years is not None:
                    return Age(years, f"PatientBirthDate {born_text} and {keyword} {on_text}")
    said = [f"PatientAge {stated!r}" if stated else "no PatientAge"]
    said.append(f"PatientBirthDate {born_text!r}" if born_text else "no PatientBirthDate")
    if born is not None:
        said.append("no examination date after it (StudyDate, AcquisitionDate, SeriesDate, ContentDate)")
    return Age(None, "age not stated: " + ", ".join(said))


AGE_NOT_STATED_NOTE = (
    "Patient age not stated in the image header (no usable PatientAge or PatientBirthDate); "
    "the models were trained on adult radiographs."
)


def age_note(ds: Dataset) -> str | None:
    """The sentence a result carries when the image was analysed without a known age
    ([selection] unknown_age = "analyse"), for write_results(notes=...); None when the age is known."""
    return None if patient_age(ds).known else AGE_NOT_STATED_NOTE


def selection_notes(ds: Dataset) -> list[str]:
    """What the selection has to tell the reader of an analysed image's result (write_results(notes=...))."""
    note = age_note(ds)
    return [note] if note else []


__all__ = [
    "AGE_NOT_STATED_NOTE",
    "selection_notes",
    "Age",
    "age_note",
    "parse_age",
    "parse_date",
    "patient_age",
    "years_between",
]
