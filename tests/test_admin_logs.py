"""Logs: JSON lines with identifiers as keys, and one audit line per association (real DCMTK peers)."""

from __future__ import annotations

import io
import json
import logging
import subprocess

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

from cxr_node.audit import AssociationAudit, notice_sent, result_sent
from cxr_node.logs import setup_logging
from cxr_node.queue.states import ExportKind
from tests import peers


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    yield
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])


def test_json_format_carries_extra_fields(restore_logging):
    stream = io.StringIO()
    setup_logging(fmt="json", stream=stream)
    logging.getLogger("cxr_node.worker").info("job %d done", 7, extra={"job_id": 7, "sop_instance_uid": "1.2.3"})
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["msg"] == "job 7 done"
    assert line["level"] == "INFO" and line["logger"] == "cxr_node.worker"
    assert line["job_id"] == 7 and line["sop_instance_uid"] == "1.2.3"


def test_audit_lines_in_json_name_the_export_kind_as_stored(restore_logging):
    stream = io.StringIO()
    setup_logging(fmt="json", stream=stream)
    result_sent(ExportKind.SC, "1.2.3.5", "pacs", 0x0000)
    notice_sent("1.2.3.4", "ris", "AA", accepted=True)
    sent, notice = (json.loads(line) for line in stream.getvalue().strip().splitlines()[-2:])
    assert (sent["event"], sent["kind"]) == ("result_sent", "sc")
    assert (notice["event"], notice["kind"], notice["answer"]) == ("notice_sent", "notice", "AA")
    assert notice["msg"] == "result NOTICE of 1.2.3.4 to ris: AA (accepted)"


def test_unknown_log_format_names_the_option():
    with pytest.raises(ValueError, match="--log-format"):
        setup_logging(fmt="xml")


def test_libraries_are_quiet_unless_verbose(restore_logging):
    setup_logging(verbose=False, stream=io.StringIO())
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.WARNING
    setup_logging(verbose=True, stream=io.StringIO())
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.INFO


def test_result_sent_line(caplog):
    caplog.set_level(logging.INFO, logger="cxr_node.audit")
    result_sent(ExportKind.SR, "1.2.3.4", "pacs", 0x0000, job_id=3)
    result_sent(ExportKind.SC, "1.2.3.5", "pacs", 0xA700)
    first, second = caplog.records[-2:]
    assert "SR 1.2.3.4 to pacs: status 0x0000 (stored)" in first.getMessage() and first.job_id == 3
    assert "(refused)" in second.getMessage()


@pytest.mark.peers
def test_one_audit_line_per_association(rg1_uncr, tmp_path, caplog):
    """storescu sends two images (one refused), echoscu echoes, and a wrong called AE is rejected."""
    storescu, echoscu = peers.find_program("storescu"), peers.find_program("echoscu")
    calls = []

    def on_store(event):
        calls.append(1)
        if len(calls) == 2:
            status = event.dataset.__class__()
            status.Status = 0xA900
            status.ErrorComment = "test refusal"
            return status
        return 0x0000

    ae = AE(ae_title="AUDITED")
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    ae.add_supported_context(ComputedRadiographyImageStorage)
    port = peers.free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store), *AssociationAudit().handlers()]
    )
    caplog.set_level(logging.INFO, logger="cxr_node.audit")
    try:
        second = tmp_path / "second.dcm"
        second.write_bytes(rg1_uncr.read_bytes())
        subprocess.run(
            [storescu, "-aet", "MOBILE_DR", "-aec", "AUDITED", "127.0.0.1", str(port), str(rg1_uncr), str(second)],
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [echoscu, "-aet", "ECHOER", "-aec", "AUDITED", "127.0.0.1", str(port)], capture_output=True, timeout=60
        )
        subprocess.run(
            [echoscu, "-aet", "ECHOER", "-aec", "WRONG", "127.0.0.1", str(port)], capture_output=True, timeout=60
        )
        lines = peers.wait_until(
            lambda: (lambda found: found if len(found) >= 3 else None)(
                [r for r in caplog.records if getattr(r, "event", None) == "association"]
            ),
            30,
            "three audit lines",
        )
    finally:
        server.shutdown()
    store, echo, rejected = lines[:3]
    assert (store.calling_aet, store.outcome, store.stored, store.refused) == ("MOBILE_DR", "released", 1, 1)
    assert store.address.startswith("127.0.0.1:")
    assert "0xA900 test refusal" in store.getMessage()
    assert (echo.calling_aet, echo.echoes, echo.outcome) == ("ECHOER", 1, "released")
    assert rejected.outcome == "rejected" and rejected.stored == 0
