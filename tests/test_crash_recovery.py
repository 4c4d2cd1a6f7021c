"""Nothing acknowledged is lost: kill -9 the node while the PACS is down, restart, results arrive once."""

from __future__ import annotations

import signal
import sqlite3

import pydicom
import pytest

from tests import peers
from tests.test_end_to_end import ServeProcess, results_at, storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow]


@pytest.fixture
def reaper():
    """Kills every node a test started, whatever the test's outcome."""
    nodes = []
    yield nodes.append
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


def db_rows(storage, sql):
    with sqlite3.connect(storage / "cxr-node.db") as conn:
        return conn.execute(sql).fetchall()


def test_kill_during_pacs_outage_then_restart_delivers_once(tmp_path, fresh_uncr, reaper):
    pacs_port = peers.free_port()  # nothing listens here yet: the PACS is down
    config = tmp_path / "node.toml"
    # max_attempts = 0: fast retries must not use up the attempts before the PACS is back.
    config.write_text("[dispatcher]\nretry_delays_s = [0.5]\nmax_attempts = 0\n[worker]\npoll_interval_s = 0.2\n")
    down = peers.Orthanc("ORTHANC", pacs_port, 0, None, tmp_path / "none.log")
    node = ServeProcess(tmp_path, down, extra=["--config", str(config)])
    reaper(node)
    node.start()

    source = pydicom.dcmread(fresh_uncr, stop_before_pixels=True)
    sent = storescu(node.port, node.ae_title, fresh_uncr)
    assert sent.returncode == 0, sent.stderr
    # Acknowledged: from here on the image must survive anything.
    assert db_rows(node.storage, "select count(*) from instances") == [(1,)]
    peers.wait_until(
        # The SR waits for its SC, which the dispatcher keeps trying.
        lambda: (
            db_rows(node.storage, "select kind, attempts >= 1 from exports order by kind") == [("sc", 1), ("sr", 0)]
        ),
        120,
        "the dispatcher to fail at least once against the absent PACS",
    )
    assert node.stop(signal.SIGKILL) == -signal.SIGKILL  # no clean shutdown

    pacs = peers.start_orthanc(tmp_path / "orthanc", dicom_port=pacs_port)
    try:
        restarted = ServeProcess(tmp_path, pacs, extra=["--config", str(config)])
        restarted.port = node.port
        restarted.args[restarted.args.index("--port") + 1] = str(node.port)
        reaper(restarted)
        restarted.start()
        found = results_at(pacs, source.StudyInstanceUID, 2)
        assert sorted(i["Tags"]["Modality"] for i in found) == ["OT", "SR"]
        peers.wait_until(
            lambda: db_rows(node.storage, "select state from exports") == [("sent",), ("sent",)],
            60,
            "both exports marked sent",
        )
        # Analysed once, reported once.
        assert db_rows(node.storage, "select count(*) from results") == [(1,)]
        assert len(pacs.instances_in_study(source.StudyInstanceUID)) == 2
        restarted.stop()
    finally:
        peers.stop_process(pacs.process)


def test_kill_right_after_acknowledgement_then_restart_processes_it(tmp_path, orthanc, fresh_j2kr, reaper):
    node = ServeProcess(tmp_path, orthanc)
    reaper(node)
    node.start()
    source = pydicom.dcmread(fresh_j2kr, stop_before_pixels=True)
    assert storescu(node.port, node.ae_title, fresh_j2kr).returncode == 0
    node.stop(signal.SIGKILL)  # most likely mid-decode or mid-analysis
    state = db_rows(node.storage, "select state from jobs")
    assert len(state) == 1, state

    again = ServeProcess(tmp_path, orthanc)
    again.args[again.args.index("--port") + 1] = str(again.port)
    reaper(again)
    again.start()
    found = results_at(orthanc, source.StudyInstanceUID, 2)
    assert sorted(i["Tags"]["Modality"] for i in found) == ["OT", "SR"]
    assert db_rows(node.storage, "select count(*) from results") == [(1,)]
    again.stop()


def test_kill_during_analysis_then_restart_reprocesses_at_once(tmp_path, orthanc, fresh_uncr, reaper):
    # A large untrained input makes the analysis last seconds, so the kill lands mid-analysis.
    config = tmp_path / "node.toml"
    config.write_text("[analysis]\ninput_size = 1536\n[worker]\npoll_interval_s = 0.1\n")
    node = ServeProcess(tmp_path, orthanc, extra=["--config", str(config)])
    reaper(node)
    node.start()
    source = pydicom.dcmread(fresh_uncr, stop_before_pixels=True)
    assert storescu(node.port, node.ae_title, fresh_uncr).returncode == 0
    peers.wait_until(lambda: db_rows(node.storage, "select state from jobs") == [("running",)], 60, "job running", 0.02)
    node.stop(signal.SIGKILL)
    assert db_rows(node.storage, "select state from jobs") == [("running",)]  # lease is 600 s by default

    config.write_text("[worker]\npoll_interval_s = 0.1\n")
    again = ServeProcess(tmp_path, orthanc, extra=["--config", str(config)])
    reaper(again)
    again.start()
    found = results_at(orthanc, source.StudyInstanceUID, 2, timeout_s=120)  # well before the lease ends
    assert sorted(i["Tags"]["Modality"] for i in found) == ["OT", "SR"]
    assert db_rows(node.storage, "select state, attempts from jobs") == [("done", 2)]
    assert db_rows(node.storage, "select count(*) from results") == [(1,)]
    again.stop()
