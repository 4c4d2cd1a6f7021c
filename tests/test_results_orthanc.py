"""SR + SC with real peers: Orthanc stores and renders them, dcentvfy checks the study,
and a PACS that refuses Comprehensive 3D SR gets the Comprehensive SR fallback."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    SecondaryCaptureImageStorage,
)

from cxr_node.config import Destination
from cxr_node.dicom.sender import SOP_CLASS_NOT_SUPPORTED, Sender, status_ok
from cxr_node.dispatcher import Dispatcher
from cxr_node.results.identity import fallback_sr_uid
from tests import peers
from tests.test_results_support import UNTRAINED, make_results, source_copy

pytestmark = [pytest.mark.peers]


def _send(orthanc, *paths):
    outcomes = Sender("CXR_NODE").send_files(Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port), [str(p) for p in paths])
    assert all(status_ok(o.status) for o in outcomes), outcomes
    return outcomes


def test_orthanc_stores_both_and_previews_the_heatmap(orthanc, rg1_uncr, tmp_path):
    source, files = make_results(rg1_uncr, tmp_path, "covid-disagree", model=UNTRAINED)
    _send(orthanc, rg1_uncr, files.sc_path, files.sr_path)
    found = {i["Tags"]["SOPInstanceUID"]: i for i in orthanc.instances_in_study(source.StudyInstanceUID)}
    assert {source.SOPInstanceUID, files.sr_uid, files.sc_uid} <= set(found)
    sr_tags, sc_tags = found[files.sr_uid]["Tags"], found[files.sc_uid]["Tags"]
    assert sr_tags["SOPClassUID"] == Comprehensive3DSRStorage
    assert sc_tags["SOPClassUID"] == SecondaryCaptureImageStorage
    assert sr_tags["PatientID"] == sc_tags["PatientID"] == source.PatientID

    png = orthanc.get(f"/instances/{found[files.sc_uid]['ID']}/preview")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    preview = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert preview.shape[:2] == files.rgb.shape[:2]
    hsv = cv2.cvtColor(preview, cv2.COLOR_BGR2HSV)
    rows, cols = hsv.shape[0] - 200, hsv.shape[1] // 2  # panels above the legend; A on the left
    # The heatmap of A is centred at 45 % height, 30 % width of its panel: coloured there...
    hot = hsv[int(0.35 * rows):int(0.55 * rows), int(0.2 * cols):int(0.4 * cols)]
    assert hot[..., 1].mean() > 60, hot[..., 1].mean()
    assert hot[..., 2].mean() > 60  # and not black
    # ...and the radiograph stays grey where A's CAM is cold.
    cold = hsv[int(0.1 * rows):int(0.8 * rows), int(0.85 * cols):cols - 5]
    assert cold[..., 1].mean() < 20, cold[..., 1].mean()


def test_orthanc_keeps_non_ascii_names(orthanc, rg1_uncr, tmp_path):
    name = "Núñez^José"
    for charset in ("ISO_IR 100", "ISO_IR 192"):
        study = pydicom.uid.generate_uid()
        source = source_copy(rg1_uncr, SpecificCharacterSet=charset, PatientName=name, PatientID=f"NZ-{charset[-3:]}",
                             StudyInstanceUID=study, SOPInstanceUID=pydicom.uid.generate_uid())
        _, files = make_results(rg1_uncr, tmp_path / charset.replace(" ", "_"), "normal", source=source)
        _send(orthanc, files.sc_path, files.sr_path)
        found = orthanc.instances_in_study(study)
        assert len(found) == 2
        assert {i["Tags"]["PatientName"] for i in found} == {name}, charset


def test_dcentvfy_source_sr_sc_consistent(rg1_uncr, tmp_path):
    exe = peers.find_program("dcentvfy")
    _, files = make_results(rg1_uncr, tmp_path, "pathological")
    out = subprocess.run([exe, str(rg1_uncr), str(files.sr_path), str(files.sc_path)], capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    errors = [l for l in lines if l.startswith("Error")]
    assert out.returncode == 0 and errors == [], "\n".join(lines)
    # Justified in docs/results.md: dicom3tools files AccessionNumber under the Series IE
    # for some IODs and the Study IE for others; the values agree.
    unexpected = [l for l in lines if l.startswith("Warning") and "<AccessionNumber>" not in l]
    assert unexpected == [], "\n".join(unexpected)


# -- a PACS without Comprehensive 3D SR ---------------------------------------------------------


@dataclass
class Pacs:
    port: int
    received: list
    ae_title: str = "OLD_PACS"

    @property
    def destination(self) -> Destination:
        return Destination(self.ae_title, "127.0.0.1", self.port)


@pytest.fixture
def old_pacs():
    """A pynetdicom SCP that supports CR, SC and (optionally) Comprehensive SR, never 3D SR.

    (Orthanc 1.10 has no option to refuse a storage SOP class; AcceptedSopClasses came later.)
    """
    servers = []

    def start(comprehensive: bool = True) -> Pacs:
        received = []
        ae = AE("OLD_PACS")
        for sop in (ComputedRadiographyImageStorage, SecondaryCaptureImageStorage) + ((ComprehensiveSRStorage,) if comprehensive else ()):
            ae.add_supported_context(sop)

        def on_store(event):
            received.append(event.dataset)
            return 0x0000

        port = peers.free_port()
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        servers.append(server)
        return Pacs(port, received)

    yield start
    for server in servers:
        server.shutdown()


def test_sender_falls_back_to_comprehensive_sr(old_pacs, rg1_uncr, tmp_path):
    pacs = old_pacs()
    _, files = make_results(rg1_uncr, tmp_path, "covid")
    sc_out, sr_out = Sender("CXR_NODE").send_files(pacs.destination, [str(files.sc_path), str(files.sr_path)])
    assert (sc_out.status, sc_out.fallback) == (0, False)
    assert (sr_out.status, sr_out.fallback) == (0, True)
    assert sr_out.sop_class_uid == ComprehensiveSRStorage
    assert sr_out.sop_instance_uid == fallback_sr_uid(files.sr_uid)
    got = {str(ds.SOPClassUID): ds for ds in pacs.received}
    assert set(got) == {SecondaryCaptureImageStorage, ComprehensiveSRStorage}
    sr = got[ComprehensiveSRStorage]
    assert sr.ContentSequence == pydicom.dcmread(files.sr_path).ContentSequence


def test_no_sr_class_at_all_is_reported(old_pacs, rg1_uncr, tmp_path):
    pacs = old_pacs(comprehensive=False)
    _, files = make_results(rg1_uncr, tmp_path, "normal")
    sc_out, sr_out = Sender("CXR_NODE").send_files(pacs.destination, [str(files.sc_path), str(files.sr_path)])
    assert status_ok(sc_out.status)
    assert sr_out.status == SOP_CLASS_NOT_SUPPORTED and not sr_out.fallback
    assert "Comprehensive SR" in sr_out.comment
    assert [str(ds.SOPClassUID) for ds in pacs.received] == [SecondaryCaptureImageStorage]


@dataclass
class _Export:
    id: int
    kind: str
    path: str
    sop_instance_uid: str
    destination: str
    attempts: int = 0


class _Queue:
    """The three calls the dispatcher makes on the job queue."""

    def __init__(self, exports):
        self.pending = list(exports)
        self.sent, self.retried = [], []
        self.lock = threading.Lock()

    def due_exports(self):
        due, self.pending = self.pending, []
        return due

    def export_sent(self, export):
        self.sent.append(export)

    def export_retry(self, export, error, delay_s):
        self.retried.append((export, error))


@pytest.mark.parametrize("comprehensive", [True, False])
def test_dispatcher_uses_the_fallback(comprehensive, old_pacs, rg1_uncr, tmp_path):
    pacs = old_pacs(comprehensive=comprehensive)
    _, files = make_results(rg1_uncr, tmp_path, "pathological")
    queue = _Queue([
        _Export(1, "sc", str(files.sc_path), files.sc_uid, str(pacs.destination)),
        _Export(2, "sr", str(files.sr_path), files.sr_uid, str(pacs.destination)),
    ])
    assert Dispatcher(queue, Sender("CXR_NODE")).run_once() == 2
    if comprehensive:
        assert [e.kind for e in queue.sent] == ["sc", "sr"] and queue.retried == []
        assert sorted(str(ds.SOPClassUID) for ds in pacs.received) == sorted([ComprehensiveSRStorage, SecondaryCaptureImageStorage])
    else:  # nothing the PACS can take: the SR stays queued for a retry, never dropped
        assert [e.kind for e in queue.sent] == ["sc"]
        assert [(e.kind, "0x0122" in err) for e, err in queue.retried] == [("sr", True)]
