"""Result times agree with the offset the objects state: the source's when it states one (times
converted into it), else the node's own zone, stated. A UTC clock stands in for a UTC host."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pydicom
import pytest

from cxr_node.analysis.engine import Analysis
from cxr_node.config import ConfigError, parse_config
from cxr_node.decoding.pixels import dataset_to_float
from cxr_node.decoding.pool import Decoded
from cxr_node.processing import process_batch
from cxr_node.results.sr import NOTE
from cxr_node.results.times import format_offset, parse_offset, result_time
from tests import peers
from tests.test_results_support import CASES, NODE, TRAINED, blob, make_results, source_copy

WINTER = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)
SUMMER = datetime(2026, 7, 15, 12, 0, 0, tzinfo=UTC)  # Europe/Madrid is on summer time (+0200)


def _clock(instant: datetime):
    return lambda: instant


def _results(rg1_uncr, tmp_path, instant, offset, zone=None):
    changes = {} if offset is None else {"TimezoneOffsetFromUTC": offset}
    source = source_copy(rg1_uncr, **changes)
    if offset is None:
        del source.TimezoneOffsetFromUTC  # RG1 states -0400
    _, files = make_results(
        rg1_uncr, tmp_path, "pathological", model=TRAINED, source=source, clock=_clock(instant), zone=zone
    )
    return source, pydicom.dcmread(files.sr_path), pydicom.dcmread(files.sc_path), files


def _times(ds) -> dict[str, str]:
    out = {
        k: str(ds.get(k))
        for k in (
            "InstanceCreationDate",
            "InstanceCreationTime",
            "ContentDate",
            "ContentTime",
            "SeriesDate",
            "SeriesTime",
            "TimezoneOffsetFromUTC",
        )
    }
    if "DateOfSecondaryCapture" in ds:
        out.update(DateOfSecondaryCapture=ds.DateOfSecondaryCapture, TimeOfSecondaryCapture=ds.TimeOfSecondaryCapture)
    ours = [e for e in ds.ContributingEquipmentSequence if e.get("Manufacturer") == "cxr-node project"]
    out["ContributionDateTime"] = str(ours[0].ContributionDateTime)
    return out


def _expected(date: str, hhmmss: str, offset: str, sc: bool) -> dict[str, str]:
    t = f"{hhmmss}.000000"
    out = {
        "InstanceCreationDate": date,
        "InstanceCreationTime": t,
        "ContentDate": date,
        "ContentTime": t,
        "SeriesDate": date,
        "SeriesTime": t,
        "TimezoneOffsetFromUTC": offset,
        "ContributionDateTime": f"{date}{t}{offset}",
    }
    if sc:
        out.update(DateOfSecondaryCapture=date, TimeOfSecondaryCapture=t)
    return out


@pytest.mark.parametrize(
    "instant, offset, date, hhmmss",
    [
        (WINTER, "+0100", "20260115", "130000"),  # the case: a UTC host, a +0100 source
        (SUMMER, "+0200", "20260715", "140000"),  # summer time at the source
        (WINTER, "-0400", "20260115", "080000"),
        (datetime(2026, 1, 15, 23, 30, tzinfo=UTC), "+0100", "20260116", "003000"),  # past midnight there
    ],
)
def test_times_are_in_the_source_offset(instant, offset, date, hhmmss, rg1_uncr, tmp_path):
    source, sr, sc, _ = _results(rg1_uncr, tmp_path, instant, offset)
    assert _times(sr) == _expected(date, hhmmss, offset, sc=False)
    assert _times(sc) == _expected(date, hhmmss, offset, sc=True)
    # The source's own times are untouched.
    assert (sr.StudyDate, sr.StudyTime) == (source.StudyDate, source.StudyTime)


@pytest.mark.parametrize(
    "instant, date, hhmmss, offset", [(WINTER, "20260115", "130000", "+0100"), (SUMMER, "20260715", "140000", "+0200")]
)
def test_no_source_offset_uses_the_node_zone_and_states_it(instant, date, hhmmss, offset, rg1_uncr, tmp_path):
    _, sr, sc, _ = _results(rg1_uncr, tmp_path, instant, None, zone=ZoneInfo("Europe/Madrid"))
    assert _times(sr) == _expected(date, hhmmss, offset, sc=False)
    assert _times(sc) == _expected(date, hhmmss, offset, sc=True)


def test_node_zone_defaults_to_the_host_zone(rg1_uncr, tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Madrid")
    time.tzset()
    try:
        _, sr, _, _ = _results(rg1_uncr, tmp_path, SUMMER, None)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert (sr.ContentTime, sr.TimezoneOffsetFromUTC) == ("140000.000000", "+0200")
    assert os.environ.get("TZ") != "Europe/Madrid"


def test_a_malformed_source_offset_is_replaced_and_said(rg1_uncr, tmp_path):
    _, sr, sc, _ = _results(rg1_uncr, tmp_path, WINTER, "CET", zone=ZoneInfo("Europe/Madrid"))
    for ds in (sr, sc):
        assert (ds.ContentTime, ds.TimezoneOffsetFromUTC) == ("130000.000000", "+0100")
    note = "source TimezoneOffsetFromUTC 'CET' not understood: times are in the node's zone (+0100)"
    comments = [
        i.TextValue
        for g in sr.ContentSequence
        if "ContentSequence" in g
        for i in _walk(g.ContentSequence)
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == NOTE.value
    ]
    assert comments == [note]
    assert note in sc.DerivationDescription


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


@pytest.mark.parametrize(
    "value, minutes",
    [
        ("+0100", 60),
        ("-0400", -240),
        ("+0545", 345),
        ("+0000", 0),
        ("CET", None),
        ("+1", None),
        ("+2500", None),
        ("+0160", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_offset(value, minutes):
    zone = parse_offset(value)
    assert (None if zone is None else zone.utcoffset(None) // timedelta(minutes=1)) == minutes
    if zone is not None:
        assert format_offset(zone.utcoffset(None)) == value


def test_the_clock_must_say_its_zone(rg1_uncr):
    with pytest.raises(ValueError, match="timezone-aware"):
        result_time(source_copy(rg1_uncr), datetime(2026, 1, 15, 12, 0))


@pytest.mark.peers
def test_validators_accept_the_stated_offset(rg1_uncr, tmp_path):
    """A source without an offset and results that state the node's: dciodvfy and dcentvfy agree."""
    source, sr, sc, files = _results(rg1_uncr, tmp_path, SUMMER, None, zone=ZoneInfo("Europe/Madrid"))
    source_path = tmp_path / "source.dcm"
    source.save_as(source_path, enforce_file_format=True)
    for path in (files.sr_path, files.sc_path):
        assert peers.dciodvfy(path)[0] == []
    out = subprocess.run(
        [peers.find_program("dcentvfy"), str(source_path), str(files.sr_path), str(files.sc_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = (out.stdout + out.stderr).splitlines()
    assert out.returncode == 0 and [line for line in lines if line.startswith("Error")] == [], "\n".join(lines)


def test_the_node_zone_is_config_data():
    assert parse_config({"results": {"time_zone": "Europe/Madrid"}}).time_zone == "Europe/Madrid"
    assert parse_config({}).time_zone == ""  # the server's zone
    for bad in ("Europe/Madird", "CET+1", "../etc/passwd", 1):
        with pytest.raises(ConfigError, match=r"^results\.time_zone: "):
            parse_config({"results": {"time_zone": bad}})


class _Analyser:
    """Stands in for the models: the test is about where the result's times come from."""

    domain_note = "out-of-domain check off (stand-in models)"

    def analyse(self, images):
        return [Analysis(CASES["normal"], blob(g.shape, 0.45, 0.3), blob(g.shape, 0.55, 0.7)) for g in images]


def test_process_batch_writes_in_the_configured_zone(rg1_uncr, tmp_path):
    source = source_copy(rg1_uncr)
    del source.TimezoneOffsetFromUTC
    path = tmp_path / "source.dcm"
    source.save_as(path, enforce_file_format=True)
    decoded = [Decoded(str(path), dataset_to_float(source), 0.01)]
    (outcome,) = process_batch(
        [path],
        _Analyser(),
        NODE,
        TRAINED,
        lambda i, h: tmp_path / "out",
        None,
        decoded=decoded,
        zone=ZoneInfo("Asia/Kathmandu"),
    )  # +0545 all year
    assert outcome.ok, outcome.error
    for result in (outcome.files.sr_path, outcome.files.sc_path):
        assert pydicom.dcmread(result).TimezoneOffsetFromUTC == "+0545"
