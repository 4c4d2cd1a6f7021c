"""The dispatcher with the real queue (SQLite) and pynetdicom / TCP peers: every export ends
(sent, refused for good, or given up) with the last real reason; an SR whose SC was refused goes
without the illustration; one destination that is down or hangs never holds back another."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
)

from cxr_node.config import Destination
from cxr_node.destinations.dicom import DicomDestination
from cxr_node.dicom.sender import Sender
from cxr_node.dispatcher import Dispatcher, ExportPolicy
from cxr_node.queue.exports import ExportQueue
from cxr_node.queue.jobs import ExportItem, JobQueue, ReceivedInstance, ResultRecord
from cxr_node.queue.schema import open_database
from cxr_node.queue.states import ExportState
from cxr_node.results.identity import fallback_sr_uid, no_illustration_sr_uid
from tests import peers, test_destinations_dicom
from tests.test_results_support import make_results

scp = test_destinations_dicom.scp  # the pynetdicom SCP fixture
RECORD = ResultRecord("Normal", 0.1, 0.05, False, "untrained-densenet161 0", False)


class FakeClock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def queue(tmp_path):
    return JobQueue(open_database(f"sqlite:///{tmp_path / 'q.db'}"), FakeClock())


def export_queue(queue: JobQueue) -> ExportQueue:
    """The export rows of `queue`'s database, on its clock (what the dispatcher works on)."""
    return ExportQueue(queue.engine, queue.clock)


@pytest.fixture
def result(queue, rg1_uncr, tmp_path):
    """Returns add(destinations) -> ResultFiles: one analysed image with its SR and SC queued."""

    def add(destinations, case="normal"):
        source, files = make_results(rg1_uncr, tmp_path / f"r{len(list(tmp_path.iterdir()))}", case)
        uid = pydicom.uid.generate_uid()
        queue.enqueue(
            ReceivedInstance(uid, str(source.SOPClassUID), str(source.StudyInstanceUID), "MODALITY", str(rg1_uncr))
        )
        (job,) = queue.claim("w", 60)
        items = [ExportItem("sc", str(files.sc_path), files.sc_uid), ExportItem("sr", str(files.sr_path), files.sr_uid)]
        assert queue.complete(job, RECORD, items, destinations)
        return files

    return add


def rows(queue) -> dict[tuple[str, str], dict]:
    """(destination, kind) -> export row of the only result."""
    with queue.engine.connect() as conn:
        from cxr_node.queue.tables import exports

        found = [dict(r._mapping) for r in conn.execute(exports.select())]
    return {(r["destination"], r["kind"]): r for r in found}


def _values(ds, keyword) -> list[str]:
    """Every value of `keyword` anywhere in the data set, sequences included."""
    found = []
    for elem in ds.iterall():
        if elem.keyword == keyword:
            found.append(str(elem.value))
    return found


def dicom(scp_or_port, name="pacs", timeout_s=10) -> DicomDestination:
    port = scp_or_port if isinstance(scp_or_port, int) else scp_or_port.port
    return DicomDestination(name, Destination("TEST_PACS", "127.0.0.1", port), Sender("CXR_NODE", timeout_s))


def drain(dispatcher, rounds=5):
    return sum(dispatcher.run_once() for _ in range(rounds))


def test_refused_sc_fails_at_once_and_the_sr_goes_without_it(queue, result, scp):
    pacs = scp(classes=(Comprehensive3DSRStorage,))
    files = result(["pacs"])
    dispatcher = Dispatcher(export_queue(queue), {"pacs": dicom(pacs)})
    assert dispatcher.run_once() == 1  # the SR waits for the SC's end
    assert [c for c, _, _ in pacs.received] == []
    sc = rows(queue)[("pacs", "sc")]
    assert (sc["state"], sc["attempts"]) == (ExportState.FAILED, 1)
    assert sc["last_error"].startswith("refused SC: 0x0122 Refused: SOP Class Not Supported"), sc["last_error"]
    assert "Secondary Capture Image Storage" in sc["last_error"]

    assert dispatcher.run_once() == 1
    sr = rows(queue)[("pacs", "sr")]
    assert sr["state"] == ExportState.SENT and sr["last_error"] is None
    ((sop_class, _, got),) = pacs.received
    assert sop_class == Comprehensive3DSRStorage
    # The PACS holds the report without the SC: other UID, no reference to the SC anywhere.
    assert str(got.SOPInstanceUID) == sr["sop_instance_uid"] == no_illustration_sr_uid(files.sr_uid)
    assert files.sc_uid not in _values(got, "ReferencedSOPInstanceUID")
    assert files.sc_uid in _values(pydicom.dcmread(files.sr_path), "ReferencedSOPInstanceUID")  # the check can fail
    assert any("not stored" in text for text in _values(got, "TextValue"))
    # The row names exactly what went, kept beside the original.
    kept = pydicom.dcmread(sr["path"])
    assert Path(sr["path"]) != files.sr_path and kept.SOPInstanceUID == got.SOPInstanceUID
    assert kept.ContentSequence == got.ContentSequence
    assert dispatcher.run_once() == 0


def test_no_sr_class_at_all_fails_the_sr_with_the_refusal(queue, result, scp):
    pacs = scp(classes=(SecondaryCaptureImageStorage,))
    result(["pacs"])
    dispatcher = Dispatcher(export_queue(queue), {"pacs": dicom(pacs)})
    assert drain(dispatcher) == 2
    found = rows(queue)
    assert found[("pacs", "sc")]["state"] == ExportState.SENT
    sr = found[("pacs", "sr")]
    assert sr["state"] == ExportState.FAILED
    assert sr["last_error"].startswith("refused SR: 0x0122") and "Comprehensive SR" in sr["last_error"]


def test_comprehensive_sr_form_is_recorded_as_sent(queue, result, scp):
    pacs = scp(classes=(SecondaryCaptureImageStorage, ComprehensiveSRStorage))
    files = result(["pacs"], "covid")
    assert drain(Dispatcher(export_queue(queue), {"pacs": dicom(pacs)})) == 2
    sr = rows(queue)[("pacs", "sr")]
    assert (sr["state"], sr["sop_instance_uid"]) == (ExportState.SENT, fallback_sr_uid(files.sr_uid))
    assert str(pydicom.dcmread(sr["path"]).SOPClassUID) == ComprehensiveSRStorage
    assert sorted(c for c, _, _ in pacs.received) == sorted([SecondaryCaptureImageStorage, ComprehensiveSRStorage])


def test_transient_refusal_then_outage_ends_failed_with_the_refusal(queue, result, scp):
    pacs = scp(status=0xA700)
    result(["pacs"])
    clock = queue.clock
    dispatcher = Dispatcher(
        export_queue(queue), {"pacs": dicom(pacs)}, ExportPolicy((5.0, 30.0), max_attempts=3, give_up_after_s=0)
    )
    assert dispatcher.run_once() == 1
    sc = rows(queue)[("pacs", "sc")]
    assert (sc["state"], sc["attempts"]) == (ExportState.PENDING, 1)
    assert sc["last_error"] == "refused SC: 0xA700 Refused: Out of Resources"
    assert dispatcher.run_once() == 0  # back-off: 5 s
    clock.advance(6)
    # The PACS goes away: the transport error does not hide why it refused.
    down = peers.free_port()
    dispatcher.destinations["pacs"] = dicom(down)
    assert dispatcher.run_once() == 1
    sc = rows(queue)[("pacs", "sc")]
    assert sc["attempts"] == 2 and sc["last_error"].startswith("refused SC: 0xA700 Refused: Out of Resources; later: ")
    assert "TEST_PACS@127.0.0.1" in sc["last_error"]
    clock.advance(31)
    assert dispatcher.run_once() == 1
    sc = rows(queue)[("pacs", "sc")]
    assert (sc["state"], sc["attempts"]) == (ExportState.FAILED, 3)
    assert sc["last_error"].startswith("refused SC: 0xA700 Refused: Out of Resources; later: ")
    assert sc["last_error"].endswith("(gave up after 3 attempts)")
    # The SC failed, so the SR now goes (when the PACS is back) without the illustration.
    dispatcher.destinations["pacs"] = dicom(scp())
    clock.advance(600)
    assert dispatcher.run_once() == 1
    assert rows(queue)[("pacs", "sr")]["state"] == ExportState.SENT


def test_time_limit_ends_an_export(queue, result):
    result(["pacs"])
    policy = ExportPolicy((60.0,), max_attempts=0, give_up_after_s=3600)
    dispatcher = Dispatcher(export_queue(queue), {"pacs": dicom(peers.free_port(), timeout_s=5)}, policy)
    assert dispatcher.run_once() == 1
    queue.clock.advance(1800)
    assert dispatcher.run_once() == 1
    assert rows(queue)[("pacs", "sc")]["state"] == ExportState.PENDING
    queue.clock.advance(1801)
    assert dispatcher.run_once() == 1
    sc = rows(queue)[("pacs", "sc")]
    assert sc["state"] == ExportState.FAILED and "gave up after 1.0 h (3 attempts)" in sc["last_error"]
    assert "TEST_PACS@127.0.0.1" in sc["last_error"]


@pytest.fixture
def silent_peer():
    """A TCP port that accepts connections and never answers (a hung PACS)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted, stop = [], threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


@pytest.mark.slow  # waits out a hung peer's timeout
def test_a_hung_and_a_dead_destination_hold_back_no_other(queue, result, scp, silent_peer):
    pacs = scp()
    result(["hung", "dead", "pacs"])
    dispatcher = Dispatcher(
        export_queue(queue),
        {
            "hung": dicom(silent_peer, "hung", timeout_s=8),
            "dead": dicom(peers.free_port(), "dead"),
            "pacs": dicom(pacs),
        },
        poll_interval_s=0.1,
    )
    dispatcher.start()
    try:
        # Both objects reach the working PACS while the hung one is still waiting for an answer.
        # Each destination has its own worker, so the refused attempt at "dead" may be recorded just after pacs is done.
        peers.wait_until(lambda: rows(queue)[("pacs", "sr")]["state"] == ExportState.SENT, 30, "the SR at pacs")
        peers.wait_until(lambda: rows(queue)[("dead", "sc")]["attempts"] >= 1, 5, "a refused attempt at dead")
        found = rows(queue)
        assert found[("pacs", "sc")]["state"] == ExportState.SENT
        assert found[("dead", "sc")]["state"] == ExportState.PENDING
        assert found[("hung", "sc")]["attempts"] == 0  # still in its first attempt
        assert found[("dead", "sr")]["attempts"] == found[("hung", "sr")]["attempts"] == 0  # waiting for their SC
    finally:
        dispatcher.stop()  # waits for the hung destination's timeout
    assert len(pacs.received) == 2
    hung = rows(queue)[("hung", "sc")]
    assert hung["attempts"] == 1 and "TEST_PACS@127.0.0.1" in hung["last_error"], hung


def test_rows_for_an_unconfigured_destination_wait_and_are_named(queue, result, scp, caplog):
    pacs = scp()
    result(["pacs", "old-archive"])
    dispatcher = Dispatcher(export_queue(queue), {"pacs": dicom(pacs)})
    dispatcher.start()
    try:
        peers.wait_until(lambda: rows(queue)[("pacs", "sr")]["state"] == ExportState.SENT, 30, "the SR at pacs")
    finally:
        dispatcher.stop()
    assert "2 pending export(s) name destination 'old-archive', which is not configured" in caplog.text
    assert {k: r["state"] for k, r in rows(queue).items() if k[0] == "old-archive"} == {
        ("old-archive", "sc"): ExportState.PENDING,
        ("old-archive", "sr"): ExportState.PENDING,
    }
