"""`cxr-node serve` with notice destinations: DCMTK storescu -> node -> Orthanc (SR + SC), an MLLP
listener (ORU^R01, ACK AA) and a FHIR endpoint (DiagnosticReport), each as configured: the
untrained model's result reaches only the notice destinations that say `untrained = true`, and
one with `when` only if the result's class is in it."""

from __future__ import annotations

import sqlite3

import pydicom
import pytest

from tests import peers
from tests.notify_peers import FhirServer, MllpListener
from tests.test_end_to_end import ServeProcess, results_at, storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow]


@pytest.fixture
def listeners():
    mllp, fhir = MllpListener(), FhirServer()
    yield mllp, fhir
    mllp.close()
    fhir.close()


def test_serve_notifies_the_configured_destinations(tmp_path, orthanc, fresh_uncr, listeners):
    mllp, fhir = listeners
    config = tmp_path / "node.toml"
    config.write_text(f"""
[worker]
poll_interval_s = 0.2
[dispatcher]
retry_delays_s = [60.0]
timeout_s = 10.0
[[destinations]]
name = "ris"
type = "hl7"
host = "127.0.0.1"
port = {mllp.port}
untrained = true
[[destinations]]
name = "ehr"
type = "fhir"
url = "{fhir.url}"
untrained = true
patient_id_system = "urn:oid:1.2.826.0.1.3680043.10.1234"
[[destinations]]
name = "quiet"
type = "hl7"
host = "127.0.0.1"
port = {mllp.port}
[[destinations]]
name = "covid-only"
type = "hl7"
host = "127.0.0.1"
port = {mllp.port}
untrained = true
when = ["COVID-19"]
""")
    node = ServeProcess(tmp_path, orthanc, extra=["--config", str(config)]).start()
    try:
        assert storescu(node.port, node.ae_title, fresh_uncr).returncode == 0
        source = pydicom.dcmread(fresh_uncr, stop_before_pixels=True)
        results_at(orthanc, source.StudyInstanceUID, 2)

        def rows():
            with sqlite3.connect(node.storage / "cxr-node.db") as conn:
                return conn.execute(
                    "select e.destination, e.kind, e.state, r.label from exports e join results r on r.id = e.result_id"
                    " order by e.destination, e.kind"
                ).fetchall()

        found = peers.wait_until(
            lambda: (lambda r: r if r and all(state == "sent" for _, _, state, _ in r) else None)(rows()),
            120,
            "every export sent",
        )
        label = found[0][3]
        expected = [("ehr", "notice"), ("pacs", "sc"), ("pacs", "sr"), ("ris", "notice")]
        if label == "COVID-19":
            expected.insert(0, ("covid-only", "notice"))
        assert [(d, k) for d, k, _, _ in found] == expected  # "quiet" takes no untrained result
        assert len(mllp.received) == len(expected) - 3
        got = mllp.received[0]
        assert got.error == "", got.error
        assert got.segments("PID")[0][3].split("^")[0] == source.PatientID
        assert got.obx()["110180"][5] == source.StudyInstanceUID
        assert got.obx()["CXR005"][5].split("^")[1].startswith(label.split(" ")[0])
        assert fhir.store.invalid == []
        (report,) = fhir.store.resources["DiagnosticReport"]
        assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{source.StudyInstanceUID}"
        assert "UNTRAINED" in report["conclusion"]
        assert node.stop() == 0, node.log()
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
