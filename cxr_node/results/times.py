"""When a result was made, written in the offset the result states.

A DICOM date or time without its own offset is read in the object's TimezoneOffsetFromUTC
(PS3.3 C.12.1.1.8). The SR and SC are filed in the source's study and carry the source's
offset (identity.copy_patient_study), so their own times must be written in that offset:
a UTC host that wrote its clock next to a copied "+0100" stamped every result an hour
wrong (two in summer). Rules:

  the source states a valid offset   times converted into it; the offset stays as copied
  the source states none             the node's own zone (the host's, e.g. TZ=Europe/Madrid,
                                     or one given), and TimezoneOffsetFromUTC says which
  the source's offset is malformed   as if none, and a note says so (the value is replaced:
                                     a result must not state an offset its times are not in)

The clock is injectable (tests run a UTC host against +0100, +0200 and DST dates).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from pydicom.dataset import Dataset

Clock = Callable[[], datetime]

_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_offset(value: object) -> timezone | None:
    """ "+0100" -> UTC+01:00; None for an absent or malformed value (PS3.5: &ZZXX, -1200..+1400)."""
    match = _OFFSET.match(str(value).strip()) if value is not None else None
    if match is None:
        return None
    sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3))
    delta = timedelta(hours=hours, minutes=minutes)
    if minutes >= 60 or delta > timedelta(hours=14):
        return None
    return timezone(-delta if sign == "-" else delta)


def format_offset(delta: timedelta | None) -> str:
    minutes = round((delta or timedelta()).total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


@dataclass(frozen=True)
class ResultTime:
    """One instant, as the result writes it: DA, TM, the offset they are in, and a note if any."""

    local: datetime
    offset: str
    note: str | None = None

    @property
    def date(self) -> str:
        return self.local.strftime("%Y%m%d")

    @property
    def time(self) -> str:
        return self.local.strftime("%H%M%S.%f")

    @property
    def date_time(self) -> str:
        """DT with the offset stated, so that it reads right wherever it is copied."""
        return f"{self.date}{self.time}{self.offset}"


def result_time(source: Dataset, now: datetime, node_zone: tzinfo | None = None) -> ResultTime:
    """now (timezone-aware) in the zone the result will state (see the module docstring).

    node_zone: the node's zone where the source states none; None is the host's local zone.
    """
    if now.tzinfo is None:
        raise ValueError("result_time: the clock must return a timezone-aware datetime")
    stated = source.get("TimezoneOffsetFromUTC")
    zone = parse_offset(stated)
    if zone is not None:
        return ResultTime(now.astimezone(zone), format_offset(zone.utcoffset(None)))
    local = now.astimezone(node_zone) if node_zone is not None else now.astimezone()
    note = None
    if stated is not None and str(stated).strip():
        note = (
            f"source TimezoneOffsetFromUTC {str(stated).strip()!r} not understood: "
            f"times are in the node's zone ({format_offset(local.utcoffset())})"
        )
    return ResultTime(local, format_offset(local.utcoffset()), note)


# Times of the result object itself: made now. Study, acquisition and birth dates are the
# source's, copied unchanged (they are in the same offset, since the offset is the source's).
_MADE_NOW = (
    ("InstanceCreationDate", "InstanceCreationTime"),
    ("ContentDate", "ContentTime"),
    ("SeriesDate", "SeriesTime"),
)
_MADE_NOW_IF_PRESENT = (("DateOfSecondaryCapture", "TimeOfSecondaryCapture"),)


def stamp(ds: Dataset, when: ResultTime, contributor: str | None = None) -> None:
    """Write `when` into the result's own times and state its offset.

    contributor: Manufacturer of our ContributingEquipmentSequence item(s), whose
    ContributionDateTime is set to the same instant (DT with its offset). The source's
    acquisition equipment item keeps its own time.
    """
    present = [(d, t) for d, t in _MADE_NOW_IF_PRESENT if d in ds or t in ds]
    for date_kw, time_kw in (*_MADE_NOW, *present):
        setattr(ds, date_kw, when.date)
        setattr(ds, time_kw, when.time)
    ds.TimezoneOffsetFromUTC = when.offset
    if contributor is not None:
        for item in ds.get("ContributingEquipmentSequence", []):
            if item.get("Manufacturer") == contributor:
                item.ContributionDateTime = when.date_time
