"""`cxr-node serve` with several destinations: a DICOM Orthanc (--destination, "pacs"), a DICOMweb
Orthanc (STOW-RS through the Debian orthanc-dicomweb plugin) and one that is down. Both working
destinations get the SR and the SC; the dead one keeps its own rows pending."""

from __future__ import annotations

import sqlite3

import pydicom
import pytest

from tests import peers
from tests.test_end_to_end import ServeProcess, results_at, storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow]


@pytest.fixture
def orthanc_web(tmp_path):
    plugin = peers.orthanc_plugin("libOrthancDicomWeb", "orthanc-dicomweb")
    pacs = peers.start_orthanc(tmp_path / "orthanc-web", aet="WEB_PACS", plugins=(plugin,))
    yield pacs
    peers.stop_process(pacs.process)


def test_serve_sends_to_every_destination_and_a_dead_one_holds_back_none(tmp_path, orthanc, orthanc_web, fresh_uncr):
    config = tmp_path / "node.toml"
    config.write_text(f"""
[worker]
poll_interval_s = 0.2
[dispatcher]
retry_delays_s = [60.0]
timeout_s = 10.0
[[destinations]]
name = "web"
type = "dicomweb"
url = "{orthanc_web.url}/dicom-web"
[[destinations]]
name = "down"
type = "dicom"
ae_title = "NOBODY"
host = "127.0.0.1"
port = {peers.free_port()}
""")
    node = ServeProcess(tmp_path, orthanc, extra=["--config", str(config)]).start()
    try:
        assert storescu(node.port, node.ae_title, fresh_uncr).returncode == 0
        study = str(pydicom.dcmread(fresh_uncr, stop_before_pixels=True).StudyInstanceUID)
        by_dicom = results_at(orthanc, study, 2)
        by_web = results_at(orthanc_web, study, 2)
        uids = {i["Tags"]["SOPInstanceUID"] for i in by_dicom}
        assert uids == {i["Tags"]["SOPInstanceUID"] for i in by_web}
        assert sorted(i["Tags"]["Modality"] for i in by_web) == ["OT", "SR"]

        def rows():
            with sqlite3.connect(node.storage / "cxr-node.db") as conn:
                return conn.execute(
                    "select destination, kind, state, attempts from exports order by destination, kind"
                ).fetchall()

        peers.wait_until(
            lambda: (
                [r[2:] for r in rows()][:2] == [("pending", 1), ("pending", 0)]
                and [r[2] for r in rows()][2:] == ["sent"] * 4
            ),
            60,
            "4 rows sent, 1 attempt to the dead one",
        )
        found = rows()
        assert [(d, k, s) for d, k, s, _ in found if d != "down"] == [
            ("pacs", "sc", "sent"),
            ("pacs", "sr", "sent"),
            ("web", "sc", "sent"),
            ("web", "sr", "sent"),
        ]
        down = [r for r in found if r[0] == "down"]
        assert down == [("down", "sc", "pending", 1), ("down", "sr", "pending", 0)]  # its SR waits for its SC
        assert "results to pacs, web, down" in node.log()
        assert node.stop() == 0, node.log()
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
