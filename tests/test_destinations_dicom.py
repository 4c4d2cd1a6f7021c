"""DicomDestination and the C-STORE sender against pynetdicom SCPs that refuse in the ways real
PACS do: no Comprehensive 3D SR, no Secondary Capture, only Implicit VR Little Endian."""

from __future__ import annotations

from dataclasses import dataclass, field

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from cxr_node.config import ConfigError, Destination, DestinationSpec, NodeConfig
from cxr_node.destinations.base import (
    DestinationUnavailable,
    NodeContext,
    Outgoing,
    Verdict,
)
from cxr_node.destinations.dicom import DicomDestination
from cxr_node.destinations.registry import build_destinations
from cxr_node.dicom.sender import Sender
from cxr_node.dicom.status import SOP_CLASS_NOT_SUPPORTED
from cxr_node.results.identity import fallback_sr_uid
from tests import peers
from tests.test_results_support import make_results

ALL = (ComputedRadiographyImageStorage, SecondaryCaptureImageStorage, Comprehensive3DSRStorage, ComprehensiveSRStorage)


@dataclass
class Scp:
    port: int
    received: list = field(default_factory=list)  # (SOP class, transfer syntax of the context, data set)
    ae_title: str = "TEST_PACS"

    @property
    def peer(self) -> Destination:
        return Destination(self.ae_title, "127.0.0.1", self.port)

    def destination(self, name: str = "pacs") -> DicomDestination:
        return DicomDestination(name, self.peer, Sender("CXR_NODE", timeout_s=10))


@pytest.fixture
def scp():
    """Start a pynetdicom Storage SCP taking only `classes`, in only `syntaxes`, answering `status`."""
    servers = []

    def start(
        classes=ALL, syntaxes=(ExplicitVRLittleEndian, ImplicitVRLittleEndian), status=0x0000, verification=True
    ) -> Scp:
        ae = AE("TEST_PACS")
        for sop in classes:
            ae.add_supported_context(sop, list(syntaxes))
        if verification:
            ae.add_supported_context(Verification)
        port = peers.free_port()
        got = Scp(port)

        def on_store(event):
            got.received.append(
                (str(event.request.AffectedSOPClassUID), str(event.context.transfer_syntax), event.dataset)
            )
            return status

        servers.append(ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]))
        return got

    yield start
    for server in servers:
        server.shutdown()


def _outgoing(files) -> list[Outgoing]:
    return [Outgoing("sc", str(files.sc_path), files.sc_uid), Outgoing("sr", str(files.sr_path), files.sr_uid)]


def test_implicit_vr_only_peer_gets_both_converted(scp, rg1_uncr, tmp_path):
    pacs = scp(syntaxes=(ImplicitVRLittleEndian,))
    _, files = make_results(rg1_uncr, tmp_path, "covid")
    assert pydicom.dcmread(files.sc_path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    sc, sr = pacs.destination().send(_outgoing(files))
    assert (sc.verdict, sr.verdict) == (Verdict.STORED, Verdict.STORED), (sc, sr)
    assert (sc.sent, sr.sent) == (None, None)  # the same objects, only re-encoded
    assert [(c, ts) for c, ts, _ in pacs.received] == [
        (SecondaryCaptureImageStorage, ImplicitVRLittleEndian),
        (Comprehensive3DSRStorage, ImplicitVRLittleEndian),
    ]
    stored_sc = pacs.received[0][2]
    assert stored_sc.PixelData == pydicom.dcmread(files.sc_path).PixelData
    assert pacs.received[1][2].ContentSequence == pydicom.dcmread(files.sr_path).ContentSequence


def test_peer_refusing_sc_is_a_permanent_refusal_with_its_meaning(scp, rg1_uncr, tmp_path):
    pacs = scp(classes=(Comprehensive3DSRStorage,))
    _, files = make_results(rg1_uncr, tmp_path, "normal")
    sc, sr = pacs.destination().send(_outgoing(files))
    assert sc.verdict == Verdict.REFUSED and sc.status == SOP_CLASS_NOT_SUPPORTED
    assert sc.reason.startswith("0x0122 Refused: SOP Class Not Supported"), sc.reason
    assert "Secondary Capture Image Storage" in sc.reason
    assert sr.verdict == Verdict.STORED
    # Alone (the retry of a refused SC), the refusal is still the peer's, not "association aborted".
    (again,) = pacs.destination().send(_outgoing(files)[:1])
    assert again.verdict == Verdict.REFUSED and again.reason.startswith("0x0122")


def test_peer_refusing_every_class_offered_without_verification(scp, rg1_uncr, tmp_path):
    pacs = scp(classes=(ComputedRadiographyImageStorage,), verification=False)
    _, files = make_results(rg1_uncr, tmp_path, "normal")
    with pytest.raises(DestinationUnavailable, match="association"):
        pacs.destination().send(_outgoing(files)[:1])


def test_failure_status_is_retried_with_its_meaning(scp, rg1_uncr, tmp_path):
    pacs = scp(status=0xA700)
    _, files = make_results(rg1_uncr, tmp_path, "normal")
    sc, sr = pacs.destination().send(_outgoing(files))
    assert sc.verdict == sr.verdict == Verdict.RETRY and sc.from_peer
    assert sc.reason.startswith("0xA700 Refused: Out of Resources")


def test_comprehensive_sr_fallback_records_what_went(scp, rg1_uncr, tmp_path):
    pacs = scp(classes=(SecondaryCaptureImageStorage, ComprehensiveSRStorage))
    _, files = make_results(rg1_uncr, tmp_path, "covid")
    sc, sr = pacs.destination().send(_outgoing(files))
    assert (sc.verdict, sc.sent) == (Verdict.STORED, None)
    assert sr.verdict == Verdict.STORED and sr.note == "as Comprehensive SR"
    assert sr.sop_instance_uid == fallback_sr_uid(files.sr_uid) == str(sr.sent.SOPInstanceUID)
    assert str(sr.sent.SOPClassUID) == ComprehensiveSRStorage
    got = {c: ds for c, _, ds in pacs.received}
    assert set(got) == {SecondaryCaptureImageStorage, ComprehensiveSRStorage}
    assert got[ComprehensiveSRStorage].ContentSequence == pydicom.dcmread(files.sr_path).ContentSequence


def test_no_sr_class_at_all_is_refused(scp, rg1_uncr, tmp_path):
    pacs = scp(classes=(SecondaryCaptureImageStorage,))
    _, files = make_results(rg1_uncr, tmp_path, "normal")
    sc, sr = pacs.destination().send(_outgoing(files))
    assert sc.verdict == Verdict.STORED
    assert sr.verdict == Verdict.REFUSED and "Comprehensive SR" in sr.reason
    assert [c for c, _, _ in pacs.received] == [SecondaryCaptureImageStorage]


def test_unreachable_peer_raises_quickly(rg1_uncr, tmp_path):
    _, files = make_results(rg1_uncr, tmp_path, "normal")
    dest = DicomDestination(
        "down", Destination("NOBODY", "127.0.0.1", peers.free_port()), Sender("CXR_NODE", timeout_s=5)
    )
    with pytest.raises(DestinationUnavailable, match="NOBODY@127.0.0.1"):
        dest.send(_outgoing(files))


def test_unreadable_file_is_retried_not_fatal(scp, rg1_uncr, tmp_path):
    pacs = scp()
    _, files = make_results(rg1_uncr, tmp_path, "normal")
    missing = Outgoing("sc", str(tmp_path / "gone.dcm"), "1.2.3")
    gone, sr = pacs.destination().send([missing, _outgoing(files)[1]])
    assert gone.verdict == Verdict.RETRY and "gone.dcm" in gone.reason
    assert sr.verdict == Verdict.STORED


def test_dicom_destination_keys_are_checked():
    node = NodeContext("CXR_NODE")
    ok = DicomDestination.from_spec(
        DestinationSpec("a", "dicom", {"ae_title": "A", "host": "h", "port": 104, "timeout_s": 5}, "destinations[0]"),
        node,
    )
    assert (str(ok), ok.sender.timeout_s) == ("a (A@h:104)", 5)
    for options, key in [
        ({"host": "h", "port": 104}, "destinations[0].ae_title"),
        ({"ae_title": "A", "host": "h", "port": 0}, "destinations[0].port"),
        ({"ae_title": "A", "host": "h", "port": 104, "tls": True}, "destinations[0].tls"),  # no node certificate
        ({"ae_title": "A", "host": "h", "port": 104, "url": "x"}, "destinations[0].url"),
    ]:
        with pytest.raises(ConfigError) as err:
            DicomDestination.from_spec(DestinationSpec("a", "dicom", options, "destinations[0]"), node)
        assert str(err.value).startswith(key), str(err.value)


def test_registry_builds_every_configured_destination():
    cfg = NodeConfig(
        destination=Destination("PACS", "h", 104),
        destinations=(DestinationSpec("web", "dicomweb", {"url": "http://h:8042/dicom-web"}, "destinations[0]"),),
    )
    built = build_destinations(cfg)
    assert [(n, type(d).__name__, d.describe()) for n, d in built.items()] == [
        ("pacs", "DicomDestination", "PACS@h:104"),
        ("web", "DicomWebDestination", "STOW-RS http://h:8042/dicom-web"),
    ]
    bad = NodeConfig(destinations=(DestinationSpec("x", "ftp", {}, "destinations[0]"),))
    with pytest.raises(
        ConfigError,
        match=r"^destinations\[0\].type: 'ftp' is not a destination type \(known: dicom, dicomweb, hl7, fhir\)",
    ):
        build_destinations(bad)
