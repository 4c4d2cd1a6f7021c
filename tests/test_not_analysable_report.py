"""[results] not_analysable_report: the short SR of an image that holds too little for an answer.

Its content (no class, no finding, no probability; the reason and the not-for-diagnosis words),
its UIDs (from the source and the bundle, the same when made again), and its path through the
worker, the queue and the dispatcher: one export row per DICOM/DICOMweb destination that takes
SRs of every class (never a notice destination, never one restricted by `when`), the same
retries and end states as any SR, no results row (no class anywhere), nothing when the option is off.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from cxr_node.config import ConfigErrors, parse_config
from cxr_node.destinations.base import Delivery, ExportDestination, Outgoing, Verdict
from cxr_node.destinations.routing import Route
from cxr_node.dispatcher import Dispatcher, ExportPolicy
from cxr_node.queue.exports import ExportQueue
from cxr_node.queue.reports import Reports
from cxr_node.queue.states import ExportKind, ExportState, JobState
from cxr_node.results.identity import ModelIdentity
from cxr_node.results.no_result_sr import (
    FILE_NAME,
    NO_AI_RESULT,
    NO_RESULT_TEXT,
    REASON,
    build_no_result_report,
    no_result_uids,
    write_no_result_report,
)
from cxr_node.results.wording import NOT_FOR_DIAGNOSIS, UNTRAINED_MODEL_TEXT
from cxr_node.worker import Worker, WorkerSettings
from tests import peers, test_not_analysable
from tests.dicom_factory import gradient, make_radiograph
from tests.test_results_support import NODE, TRAINED, UNTRAINED
from tests.test_worker_faults import receive

# a worker whose decoder declares marked files not analysable, on a real SQLite queue
analyzer, rig = test_not_analysable.analyzer, test_not_analysable.rig

REASON_TEXT = "every pixel shows the same grey (99th - 1st percentile 0.000 < image_check.min_spread 0.05)"
FINDING = ("121071", "DCM")


def _header(rg1_uncr: Path) -> Dataset:
    return pydicom.dcmread(rg1_uncr, stop_before_pixels=True)


def _items(ds: Dataset) -> list[Dataset]:
    """Every content item of the tree, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_items(item))
    return out


def _texts(ds: Dataset) -> dict[tuple[str, str], str]:
    return {
        (i.ConceptNameCodeSequence[0].CodeValue, i.ConceptNameCodeSequence[0].CodingSchemeDesignator): i.TextValue
        for i in _items(ds)
        if i.ValueType == "TEXT"
    }


@pytest.mark.parametrize("model", [TRAINED, UNTRAINED], ids=["trained", "untrained"])
def test_report_says_no_result_and_why_and_codes_no_class_nor_finding(model, rg1_uncr):
    source = _header(rg1_uncr)
    sr = build_no_result_report(source, "no-contrast", REASON_TEXT, NODE, model)
    items = _items(sr)
    # Nothing a reader or an indexer could take for an answer: no finding, no number, no code
    # item at all (no class, no Present / Absent, no "Models disagree").
    assert not any(
        (c.CodeValue, c.CodingSchemeDesignator) == FINDING for i in items for c in i.get("ConceptNameCodeSequence", [])
    )
    assert {i.ValueType for i in items if i.RelationshipType == "CONTAINS"} <= {"CONTAINER", "TEXT", "IMAGE"}
    assert not [i for i in items if i.ValueType in ("NUM", "CODE") and i.RelationshipType == "CONTAINS"]
    texts = _texts(sr)
    assert texts[(NO_AI_RESULT.value, NO_AI_RESULT.scheme_designator)] == NO_RESULT_TEXT
    assert texts[(REASON.value, REASON.scheme_designator)] == REASON_TEXT
    assert NOT_FOR_DIAGNOSIS in texts[("CXR009", "99CXRNODE")]
    assert texts[("CXR008", "99CXRNODE")] == "CR series 1, instance 1, view PA"
    if model.trained:
        assert sr.SeriesDescription == "AI: no result, image not analysable"
    else:
        assert sr.SeriesDescription == "AI UNTRAINED: no result, image not analysable"
        assert texts[("CXR007", "99CXRNODE")] == UNTRAINED_MODEL_TEXT
    assert len(sr.SeriesDescription) <= 64
    # In the source's study, about the source image.
    assert (sr.StudyInstanceUID, sr.PatientID) == (source.StudyInstanceUID, source.PatientID)
    refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items if "ReferencedSOPSequence" in i]
    assert str(source.SOPInstanceUID) in refs
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR, like the result report


def test_uids_derive_from_the_image_and_the_bundle(rg1_uncr, tmp_path):
    source = _header(rg1_uncr)
    a = build_no_result_report(source, "too-small", "x", NODE, TRAINED)
    b = build_no_result_report(source, "too-small", "x", NODE, TRAINED)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    other = ModelIdentity("cxr-covid-moura2020", "4", "c" * 64, "d" * 64, trained=True)
    assert build_no_result_report(source, "too-small", "x", NODE, other).SOPInstanceUID != a.SOPInstanceUID
    assert (str(a.SeriesInstanceUID), str(a.SOPInstanceUID)) == no_result_uids(str(source.SOPInstanceUID), TRAINED)
    # Written once: made again (a crash before it was recorded, `jobs retry`), the object stands as it was.
    first = write_no_result_report(source, "too-small", "first reason", tmp_path, NODE, TRAINED)
    data = first.path.read_bytes()
    again = write_no_result_report(source, "no-contrast", "second reason", tmp_path, NODE, TRAINED)
    assert (again.path, again.sop_instance_uid, again.path.read_bytes()) == (first.path, first.sop_instance_uid, data)


@pytest.mark.peers  # dciodvfy
def test_dciodvfy_finds_no_error_in_the_report(rg1_uncr, tmp_path):
    report = write_no_result_report(_header(rg1_uncr), "no-contrast", REASON_TEXT, tmp_path, NODE, UNTRAINED)
    errors, _ = peers.dciodvfy(report.path)
    assert errors == []


def test_config_key_defaults_off_and_is_checked():
    assert parse_config({}).not_analysable_report is False
    assert parse_config({"results": {"not_analysable_report": True}}).not_analysable_report is True
    with pytest.raises(ConfigErrors, match=r"results\.not_analysable_report"):
        parse_config({"results": {"not_analysable_report": "yes"}})


ROUTES = (
    Route("pacs"),  # DICOM: SR and SC of every class
    Route("web", ("sc", "sr")),  # DICOMweb
    Route("urgent", ("sc", "sr"), frozenset({"COVID-19"})),  # only COVID-19 results
    Route("ris", (ExportKind.NOTICE,)),  # HL7 / FHIR: notices of classes
)


def _worker(rig, report: bool) -> Worker:
    queue, layout, worker, _ = rig
    settings = WorkerSettings(max_attempts=3, batch_size=4, destinations=ROUTES, not_analysable_report=report)
    return Worker(queue, worker.analyzer, layout, worker.node, settings, worker.decode, name="host:2")


def _flat(rig) -> tuple[str, Dataset]:
    queue, layout, _, blank = rig
    ds = make_radiograph(gradient())
    sop = receive(queue, layout, ds)
    blank.add(str(layout.instance_path(ds.StudyInstanceUID, sop)))
    return sop, ds


def test_worker_sends_the_report_only_where_srs_of_every_class_go(rig):
    queue, layout, _, _ = rig
    worker = _worker(rig, report=True)
    sop, ds = _flat(rig)
    assert worker.run_once() == 1
    job = queue.job_for_instance(sop)
    assert (job["state"], job["reason_code"], job["error"]) == ("not_analysable", "no-contrast", None)
    assert queue.result_for_instance(sop) is None  # no results row: no class anywhere

    reports = Reports(queue.engine)
    rows = reports.list_exports(job_id=job["id"])
    assert sorted((r.destination, r.kind, r.state, r.result_id) for r in rows) == [
        ("pacs", "sr", "pending", None),
        ("web", "sr", "pending", None),
    ]
    _, uid = no_result_uids(sop, worker.model)
    path = layout.image_result_dir(ds.StudyInstanceUID, sop) / FILE_NAME
    assert {(r.sop_instance_uid, r.path) for r in rows} == {(uid, str(path))}
    sr = pydicom.dcmread(path)
    assert _texts(sr)[(REASON.value, REASON.scheme_designator)] == "every pixel has the same value"
    assert reports.totals()["analysed"] == 0 and reports.totals()["not_analysable"] == 1
    # The PACS routing the study back: the node knows its own object and the image it speaks of.
    assert queue.own_result(uid) == {"kind": "sr", "source_sop_instance_uid": sop}
    exports = ExportQueue(queue.engine, queue.clock)
    due = exports.due("pacs")
    assert [(e.sop_instance_uid, e.result, e.created_at is not None) for e in due] == [(uid, None, True)]
    assert exports.due("ris") == [] and exports.due("urgent") == []

    # `jobs retry`, and the image is again not analysable: no second object, no second row.
    assert queue.retry_job(job["id"]) == JobState.NOT_ANALYSABLE
    assert worker.run_once() == 1
    assert len(reports.list_exports(job_id=job["id"])) == 2
    # Purged only once the report has reached its end at every destination.
    assert queue.purgeable_studies(queue.clock() + _days(1)) == []


def _days(n: int):
    from datetime import timedelta

    return timedelta(days=n)


def test_without_the_option_nothing_is_made_or_queued(rig):
    queue, layout, _, _ = rig
    worker = _worker(rig, report=False)
    sop, ds = _flat(rig)
    assert worker.run_once() == 1
    job = queue.job_for_instance(sop)
    assert job["state"] == "not_analysable"
    assert Reports(queue.engine).list_exports(job_id=job["id"]) == []
    assert not layout.image_result_dir(ds.StudyInstanceUID, sop).exists()


class Flaky(ExportDestination):
    """A destination answering from a script: RETRY, then its last verdict for ever."""

    type_name = "flaky"

    def __init__(self, name: str, verdicts: list[Verdict]):
        super().__init__(name)
        self.verdicts = verdicts
        self.got: list[Outgoing] = []

    @classmethod
    def from_spec(cls, spec, node):  # pragma: no cover - not built from config here
        raise NotImplementedError

    def send(self, objects):
        self.got += objects
        verdict = self.verdicts.pop(0) if len(self.verdicts) > 1 else self.verdicts[0]
        return [Delivery(verdict, "" if verdict == Verdict.STORED else f"{verdict} by script", True) for _ in objects]

    def describe(self):
        return self.name


def test_dispatcher_retries_and_ends_the_report_like_any_sr(rig):
    queue, _, _, _ = rig
    worker = _worker(rig, report=True)
    sop, _ = _flat(rig)
    worker.run_once()
    pacs = Flaky("pacs", [Verdict.RETRY, Verdict.STORED])
    web = Flaky("web", [Verdict.REFUSED])
    dispatcher = Dispatcher(
        ExportQueue(queue.engine, queue.clock), {"pacs": pacs, "web": web}, ExportPolicy(retry_delays_s=(5.0,))
    )
    assert dispatcher.run_once() == 2
    queue.clock.advance(5)
    assert dispatcher.run_once() == 1
    rows = {r.destination: r for r in Reports(queue.engine).list_exports(job_id=queue.job_for_instance(sop)["id"])}
    assert (rows["pacs"].state, rows["pacs"].attempts) == (ExportState.SENT, 2)
    assert rows["web"].state == ExportState.FAILED and "refused by script" in rows["web"].last_error
    assert [o.kind for o in pacs.got] == ["sr", "sr"] and all(o.result is None for o in pacs.got)
    assert queue.purgeable_studies(queue.clock() + _days(1)) != []  # settled everywhere: retention may go
