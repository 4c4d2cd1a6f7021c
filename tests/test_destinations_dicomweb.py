"""DicomWebDestination: STOW-RS to a real Orthanc with the Debian orthanc-dicomweb plugin."""

from __future__ import annotations

import pytest
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from cxr_node.config import ConfigError, DestinationSpec
from cxr_node.destinations.base import (
    DestinationUnavailable,
    NodeContext,
    Outgoing,
    Verdict,
)
from cxr_node.destinations.dicomweb import DicomWebDestination
from tests import peers
from tests.test_results_support import make_results

pytestmark = [pytest.mark.peers]


@pytest.fixture(scope="module")
def orthanc_web(tmp_path_factory):
    plugin = peers.orthanc_plugin("libOrthancDicomWeb", "orthanc-dicomweb")
    pacs = peers.start_orthanc(tmp_path_factory.mktemp("orthanc-dicomweb"), plugins=(plugin,))
    yield pacs
    peers.stop_process(pacs.process)


def test_stow_rs_stores_sr_and_sc_in_orthanc(orthanc_web, fresh_uncr, tmp_path):
    source, files = make_results(fresh_uncr, tmp_path, "pathological")
    dest = DicomWebDestination("web", f"{orthanc_web.url}/dicom-web", timeout_s=30)
    sc, sr = dest.send(
        [Outgoing("sc", str(files.sc_path), files.sc_uid), Outgoing("sr", str(files.sr_path), files.sr_uid)]
    )
    assert (sc.verdict, sr.verdict) == (Verdict.STORED, Verdict.STORED), (sc, sr)
    assert (sc.sop_instance_uid, sr.sop_instance_uid, sc.sent, sr.sent) == (files.sc_uid, files.sr_uid, None, None)
    found = {i["Tags"]["SOPInstanceUID"]: i["Tags"] for i in orthanc_web.instances_in_study(source.StudyInstanceUID)}
    assert set(found) == {files.sc_uid, files.sr_uid}
    assert found[files.sc_uid]["SOPClassUID"] == SecondaryCaptureImageStorage
    assert found[files.sr_uid]["SOPClassUID"] == Comprehensive3DSRStorage
    assert found[files.sr_uid]["PatientID"] == source.PatientID
    # Sending again is harmless: same UIDs, one copy.
    assert [d.verdict for d in dest.send([Outgoing("sr", str(files.sr_path), files.sr_uid)])] == [Verdict.STORED]
    assert len(orthanc_web.instances_in_study(source.StudyInstanceUID)) == 2


def test_stow_rs_to_a_closed_port_is_unavailable(fresh_uncr, tmp_path):
    _, files = make_results(fresh_uncr, tmp_path, "normal")
    dest = DicomWebDestination("web", f"http://127.0.0.1:{peers.free_port()}/dicom-web", timeout_s=5)
    with pytest.raises(DestinationUnavailable, match="ConnectionError"):
        dest.send([Outgoing("sc", str(files.sc_path), files.sc_uid)])


def test_stow_rs_to_a_wrong_path_names_the_http_status(orthanc_web, fresh_uncr, tmp_path):
    _, files = make_results(fresh_uncr, tmp_path, "normal")
    dest = DicomWebDestination("web", f"{orthanc_web.url}/no-such-service", timeout_s=10)
    with pytest.raises(DestinationUnavailable, match="HTTP 404"):
        dest.send([Outgoing("sc", str(files.sc_path), files.sc_uid)])


def test_dicomweb_keys_are_checked():
    node = NodeContext("CXR_NODE", timeout_s=7)
    dest = DicomWebDestination.from_spec(
        DestinationSpec("w", "dicomweb", {"url": "http://h:8042/dicom-web/"}, "destinations[2]"), node
    )
    assert (dest.url, dest.timeout_s) == ("http://h:8042/dicom-web", 7)
    for options, key in [
        ({}, "destinations[2].url"),
        ({"url": "ftp://h"}, "destinations[2].url"),
        ({"url": "http://h", "timeout_s": 0}, "destinations[2].timeout_s"),
        ({"url": "http://h", "ae_title": "X"}, "destinations[2].ae_title"),
    ]:
        with pytest.raises(ConfigError) as err:
            DicomWebDestination.from_spec(DestinationSpec("w", "dicomweb", options, "destinations[2]"), node)
        assert str(err.value).startswith(key), str(err.value)
