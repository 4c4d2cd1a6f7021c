"""SR + SC with real peers: Orthanc stores and renders them, dcentvfy checks the study.
(PACS that refuse SOP classes or syntaxes: tests/test_destinations_dicom.py, test_dispatcher.py.)"""

from __future__ import annotations

import base64
import json
import subprocess
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from cxr_node.config import Destination
from cxr_node.dicom.sender import Sender
from cxr_node.dicom.status import status_ok
from tests import peers
from tests.test_results_support import UNTRAINED, make_results, source_copy

pytestmark = [pytest.mark.peers]


def _send(orthanc, *paths):
    outcomes = Sender("CXR_NODE").send_files(
        Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port), [str(p) for p in paths]
    )
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
    preview = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    # Orthanc shows exactly the picture we drew (heatmap placement: tests/test_results_sc.py).
    assert preview.shape == files.rgb.shape
    assert np.abs(preview.astype(int) - files.rgb.astype(int)).max() <= 1


def test_orthanc_keeps_non_ascii_names(orthanc, rg1_uncr, tmp_path):
    name = "Núñez^José"
    for charset in ("ISO_IR 100", "ISO_IR 192"):
        study = pydicom.uid.generate_uid()
        source = source_copy(
            rg1_uncr,
            SpecificCharacterSet=charset,
            PatientName=name,
            PatientID=f"NZ-{charset[-3:]}",
            StudyInstanceUID=study,
            SOPInstanceUID=pydicom.uid.generate_uid(),
        )
        _, files = make_results(rg1_uncr, tmp_path / charset.replace(" ", "_"), "normal", source=source)
        _send(orthanc, files.sc_path, files.sr_path)
        found = orthanc.instances_in_study(study)
        assert len(found) == 2
        assert {i["Tags"]["PatientName"] for i in found} == {name}, charset


def test_dcentvfy_source_sr_sc_consistent(rg1_uncr, tmp_path):
    exe = peers.find_program("dcentvfy")
    _, files = make_results(rg1_uncr, tmp_path, "pathological")
    out = subprocess.run(
        [exe, str(rg1_uncr), str(files.sr_path), str(files.sc_path)], capture_output=True, text=True, timeout=120
    )
    lines = (out.stdout + out.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert out.returncode == 0 and errors == [], "\n".join(lines)
    # Justified in docs/results.md: dicom3tools files AccessionNumber under the Series IE
    # for some IODs and the Study IE for others; the values agree.
    unexpected = [line for line in lines if line.startswith("Warning") and "<AccessionNumber>" not in line]
    assert unexpected == [], "\n".join(unexpected)


@pytest.fixture(scope="module")
def orthanc_webviewer(tmp_path_factory):
    """Orthanc with the Orthanc Web Viewer plugin (Debian orthanc-webviewer), as a radiologist would open it."""
    plugin = peers.orthanc_plugin("libOrthancWebViewer", "orthanc-webviewer")
    pacs = peers.start_orthanc(tmp_path_factory.mktemp("orthanc-webviewer"), plugins=(plugin,))
    yield pacs
    peers.stop_process(pacs.process)


def test_web_viewer_shows_the_sc_as_drawn(orthanc_webviewer, rg1_uncr, tmp_path):
    source, files = make_results(rg1_uncr, tmp_path, "covid-disagree", model=UNTRAINED)
    _send(orthanc_webviewer, files.sc_path, files.sr_path)
    (sc,) = [
        i
        for i in orthanc_webviewer.instances_in_study(source.StudyInstanceUID)
        if i["Tags"]["SOPInstanceUID"] == files.sc_uid
    ]
    assert "web-viewer" in orthanc_webviewer.get_json("/plugins")
    series = orthanc_webviewer.get_json(f"/web-viewer/series/{sc['ParentSeries']}")
    assert series["Slices"] == [f"{sc['ID']}_0"]
    assert "UNTRAINED" in series["SeriesDescription"]
    # The frame the viewer draws (lossless form), byte for byte our picture: the header band
    # and margins reach the viewer as they are, under its own overlays.
    frame = json.loads(orthanc_webviewer.get(f"/web-viewer/instances/deflate-{sc['ID']}_0"))
    assert frame["color"] and (frame["rows"], frame["columns"]) == files.rgb.shape[:2]
    pixels = np.frombuffer(zlib.decompress(base64.b64decode(frame["Orthanc"]["PixelData"])), np.uint8)
    assert np.array_equal(pixels.reshape(files.rgb.shape), files.rgb)
    assert len(orthanc_webviewer.get("/web-viewer/app/viewer.html")) > 1000
