"""A real Orthanc routes a whole study back to a real `cxr-node serve` (issue 20, item 4).

The study in the PACS holds the radiograph the node analysed, the node's own SR and Secondary
Capture, and a repeat exposure that reached only the PACS. Orthanc's C-STORE job of the whole
study must succeed; the repeat exposure gets exactly one result; nothing already analysed gets a
second one; the audit line counts what became of each instance. Then Orthanc re-sends the
analysed image transcoded to another transfer syntax, as a router does: success, nothing new.
"""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEGLosslessSV1, generate_uid

from cxr_node.queue.jobs import JobQueue
from cxr_node.queue.tables import make_engine
from tests import peers
from tests.test_end_to_end import ServeProcess, results_at, storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow]


@pytest.fixture
def node(tmp_path, orthanc):
    started = ServeProcess(tmp_path, orthanc).start()
    # The node as a DICOM peer of the PACS, as a PACS admin adds it for a routing rule.
    body = {"AET": started.ae_title, "Host": "127.0.0.1", "Port": started.port}
    req = urllib.request.Request(f"{orthanc.url}/modalities/cxrnode", data=_json(body), method="PUT")
    urllib.request.urlopen(req, timeout=30).read()
    yield started
    if started.proc.poll() is None:
        started.stop(signal.SIGKILL)


def _json(body) -> bytes:
    import json

    return json.dumps(body).encode()


def dcmsend(port: int, aec: str, path: Path) -> None:
    exe = peers.find_program("dcmsend")
    out = __import__("subprocess").run(
        [exe, "-aet", "MOBILE_DR", "-aec", aec, "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def route(orthanc: peers.Orthanc, resources: list[str], **options) -> dict:
    """Orthanc's C-STORE of `resources` to the node, as a job; its final state and content."""
    job = orthanc.post_json("/modalities/cxrnode/store", {"Resources": resources, "Synchronous": False, **options})
    done = peers.wait_until(
        lambda: (lambda j: j if j["State"] in ("Success", "Failure") else None)(orthanc.get_json(f"/jobs/{job['ID']}")),
        180,
        "Orthanc's store job",
        interval_s=0.5,
    )
    return done


def node_results(node: ServeProcess, study_uid: str) -> list[dict]:
    engine = make_engine(f"sqlite:///{node.storage / 'cxr-node.db'}")
    try:
        return JobQueue(engine).results_for_study(study_uid)
    finally:
        engine.dispose()


def audit_totals(node: ServeProcess) -> dict[str, int]:
    """The audit lines of the associations from Orthanc, added up."""
    totals = {"stored": 0, "refused": 0}
    for line in node.log_path.read_text(errors="replace").splitlines():
        m = re.search(r"association from ORTHANC .*: (\d+) instance\(s\) stored(?: \(([^)]*)\))?, (\d+) refused", line)
        if m:
            totals["stored"] += int(m.group(1))
            totals["refused"] += int(m.group(3))
            for part in filter(None, (m.group(2) or "").split(", ")):
                n, kind = part.split(" ", 1)
                totals[kind] = totals.get(kind, 0) + int(n)
    return totals


def test_orthanc_routes_a_study_with_the_nodes_results_back_and_only_the_repeat_is_analysed(
    node, orthanc, fresh_uncr, tmp_path
):
    first = pydicom.dcmread(fresh_uncr, stop_before_pixels=True)
    study = first.StudyInstanceUID
    # The modality sends the radiograph to the PACS and to the node; the node's SR and SC follow.
    dcmsend(orthanc.dicom_port, orthanc.aet, fresh_uncr)
    assert storescu(node.port, node.ae_title, fresh_uncr).returncode == 0
    results_at(orthanc, study, 3)
    # A repeat exposure reaches only the PACS.
    repeat = pydicom.dcmread(fresh_uncr)
    repeat.SeriesInstanceUID = generate_uid()
    repeat.SOPInstanceUID = repeat.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    repeat_path = tmp_path / "repeat.dcm"
    repeat.save_as(repeat_path, enforce_file_format=True)
    dcmsend(orthanc.dicom_port, orthanc.aet, repeat_path)
    (study_id,) = orthanc.post_json("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study}})
    assert len(orthanc.instances_in_study(study)) == 4

    job = route(orthanc, [study_id])  # the PACS's routing rule sends the whole study to the node
    assert job["State"] == "Success", job
    assert job["Content"]["FailedInstancesCount"] == 0 and job["Content"]["InstancesCount"] == 4, job

    found = results_at(orthanc, study, 6)  # the repeat's SR and SC
    assert sorted(i["Tags"]["Modality"] for i in found) == ["CR", "CR", "OT", "OT", "SR", "SR"]
    analysed = sorted(r["sop_instance_uid"] for r in node_results(node, study))
    assert analysed == sorted([first.SOPInstanceUID, repeat.SOPInstanceUID])  # one each, no second one
    # Orthanc opens a new association when the next instance needs another SOP class: add them up.
    assert audit_totals(node) == {"stored": 4, "already received": 1, "not analysed": 2, "queued": 1, "refused": 0}

    # A router re-sends the analysed image transcoded: success, nothing new.
    (image_id,) = [i["ID"] for i in found if i["Tags"]["SOPInstanceUID"] == first.SOPInstanceUID]
    job = route(orthanc, [image_id], Transcode=JPEGLosslessSV1)
    assert job["State"] == "Success" and job["Content"]["FailedInstancesCount"] == 0, job
    log = node.log_path.read_text(errors="replace")
    assert re.search(
        rf"{re.escape(first.SOPInstanceUID)} from ORTHANC: already received \(the same instance in another", log
    )
    assert len(node_results(node, study)) == 2 and len(orthanc.instances_in_study(study)) == 6
    assert node.stop() == 0, node.log()
