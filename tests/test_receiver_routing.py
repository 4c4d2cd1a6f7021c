"""What a PACS routes: every storage SOP class accepted, the non-radiographs recorded (or discarded),
the node's own results recognised, the same instance in another transfer syntax acknowledged once,
and database waits on receipt bounded (0xA700 before the sender gives up)."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    KeyObjectSelectionDocumentStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE
from sqlalchemy import create_engine, update

from cxr_node.dicom.receiver import NOT_A_RADIOGRAPH, OWN_RESULT, ReceiverSettings
from cxr_node.dicom.sop_classes import RADIOGRAPH_SOP_CLASSES, storage_sop_classes
from cxr_node.queue.jobs import ExportItem, ResultRecord
from cxr_node.queue.tables import instances, jobs, results
from tests.dbutil import drop_database, fresh_url
from tests.dicom_factory import gradient, make_radiograph
from tests.receiver_harness import ReceiverNode, dcmtk


@pytest.fixture
def node_factory(tmp_path):
    made = []

    def make(db_url=None, **kw):
        settings = ReceiverSettings("CXR_NODE", "127.0.0.1", 0, **kw)
        n = ReceiverNode(tmp_path / f"n{len(made)}", settings, db_url=db_url)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()


def send(node: ReceiverNode, ds: Dataset, syntax: str = ExplicitVRLittleEndian, dimse_timeout_s: float = 30):
    """C-STORE `ds` in its own SOP class, `syntax` the only one proposed; the status Dataset."""
    ae = AE(ae_title="ORTHANC")
    ae.dimse_timeout = dimse_timeout_s
    ae.add_requested_context(ds.SOPClassUID, [syntax])
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title="CXR_NODE")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def non_image(sop_class: str, study: str | None = None, modality: str = "SR") -> Dataset:
    """A header-only object of `sop_class` (SR, KO, PR: no pixel data), in a study."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "P1", "Test^Routing", modality
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def image_of_class(sop_class: str, modality: str) -> Dataset:
    ds = make_radiograph(gradient())
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = modality
    return ds


def test_every_storage_sop_class_is_negotiated(node_factory):
    node = node_factory()
    classes = storage_sop_classes()
    assert classes[:3] == list(RADIOGRAPH_SOP_CLASSES) and len(classes) > 150
    assert {BasicTextSRStorage, KeyObjectSelectionDocumentStorage, SecondaryCaptureImageStorage} <= set(classes)
    ae = AE(ae_title="ORTHANC")
    for sop_class in classes[:120]:  # a requestor may propose at most 128 contexts
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title="CXR_NODE")
    try:
        assert len(assoc.accepted_contexts) == 120 and not assoc.rejected_contexts
    finally:
        assoc.release()


@pytest.mark.parametrize(
    "ds, name",
    [
        (non_image(BasicTextSRStorage), "Basic Text SR Storage"),
        (non_image(KeyObjectSelectionDocumentStorage, modality="KO"), "Key Object Selection Document Storage"),
        (non_image(GrayscaleSoftcopyPresentationStateStorage, modality="PR"), "Grayscale Softcopy Presentation State"),
        (image_of_class(SecondaryCaptureImageStorage, "OT"), "Secondary Capture Image Storage"),
        (image_of_class(CTImageStorage, "CT"), "CT Image Storage"),
    ],
    ids=["SR", "KO", "PR", "SC", "CT"],
)
def test_a_non_radiograph_is_acknowledged_stored_and_recorded_as_not_analysed(node_factory, ds, name):
    node = node_factory()
    assert send(node, ds).Status == 0x0000
    (inst,) = node.rows(instances)
    (job,) = node.rows(jobs)
    assert inst.sop_instance_uid == ds.SOPInstanceUID and inst.sop_class_uid == ds.SOPClassUID
    assert job.state == "skipped" and job.rule == NOT_A_RADIOGRAPH
    assert job.reason.startswith(f"not a radiograph: {name}")
    assert dcmread(inst.path).SOPInstanceUID == ds.SOPInstanceUID  # kept, as acknowledged


def test_discard_acknowledges_and_keeps_nothing_and_the_audit_line_says_so(node_factory, caplog):
    node = node_factory(non_radiographs="discard")
    study = generate_uid()
    sr, ko = non_image(ComprehensiveSRStorage, study), non_image(KeyObjectSelectionDocumentStorage, study, "KO")
    image = make_radiograph(gradient())
    with caplog.at_level(logging.INFO, logger="cxr_node.audit"):
        ae = AE(ae_title="ORTHANC")
        for ds in (sr, ko, image):
            ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title="CXR_NODE")
        statuses = [assoc.send_c_store(ds).Status for ds in (sr, ko, image)]
        assoc.release()
        node.receiver.stop()  # the audit line is written when the connection closes
    assert statuses == [0, 0, 0]
    (inst,) = node.rows(instances)
    assert inst.sop_instance_uid == image.SOPInstanceUID
    assert len([p for p in node.layout.root.rglob("*.dcm")]) == 1
    line = next(r.getMessage() for r in caplog.records if r.name == "cxr_node.audit")
    assert "1 instance(s) stored (1 queued), 2 discarded (not analysed), 0 refused" in line, line


def _analysed_with_result(node: ReceiverNode, image: Dataset, sr_uid: str, sc_uid: str) -> None:
    """The image received and analysed: its result's SR and SC recorded as exports, as the worker does."""
    assert send(node, image).Status == 0x0000
    (job,) = node.queue.claim("test:1", 60)
    record = ResultRecord("Normal", 0.1, 0.05, False, "untrained", False)
    items = [ExportItem("sc", "/r/sc.dcm", sc_uid), ExportItem("sr", "/r/sr.dcm", sr_uid)]
    assert node.queue.complete(job, record, items, destinations=("pacs",))


def test_the_nodes_own_results_coming_back_are_recorded_never_analysed(node_factory, caplog):
    node = node_factory()
    image = make_radiograph(gradient())
    sr_uid, sc_uid = generate_uid(), generate_uid()
    _analysed_with_result(node, image, sr_uid, sc_uid)

    sr = non_image(ComprehensiveSRStorage, image.StudyInstanceUID)
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = sr_uid
    sc = image_of_class(SecondaryCaptureImageStorage, "OT")
    sc.StudyInstanceUID = image.StudyInstanceUID
    sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = sc_uid
    with caplog.at_level(logging.INFO, logger="cxr_node.audit"):
        ae = AE(ae_title="ORTHANC")
        for ds in (image, sr, sc):
            ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title="CXR_NODE")
        statuses = [assoc.send_c_store(ds).Status for ds in (image, sr, sc)]  # the whole study, routed back
        assoc.release()
        node.receiver.stop()
    assert statuses == [0, 0, 0]
    by_uid = {i.sop_instance_uid: i.id for i in node.rows(instances)}
    states = {j.instance_id: (j.state, j.rule, j.reason) for j in node.rows(jobs)}
    assert states[by_uid[image.SOPInstanceUID]][0] == "done"
    for uid, kind in ((sr_uid, "SR"), (sc_uid, "SC")):
        state, rule, reason = states[by_uid[uid]]
        assert (state, rule) == ("skipped", OWN_RESULT)
        assert f"own {kind}" in reason and image.SOPInstanceUID in reason
    assert len(node.rows(results)) == 1  # nothing new to report
    # this association's line: the one before it (the image analysed first) may be logged late
    lines = [r.getMessage() for r in caplog.records if r.name == "cxr_node.audit"]
    assert any("3 instance(s) stored (1 already received, 2 not analysed), 0 refused" in line for line in lines), lines


def _same_instance_in(ds: Dataset, syntax: str) -> Dataset:
    again = dcmread(_saved(ds))
    if syntax in (RLELossless, JPEG2000Lossless):
        again.compress(syntax, generate_instance_uid=False)
    else:  # written in the new syntax and read back, as a router's copy would be
        again.file_meta.TransferSyntaxUID = syntax
        again = dcmread(_saved(again))
    return again


def _saved(ds: Dataset):
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEG2000Lossless]
)
def test_the_same_instance_in_another_transfer_syntax_gets_success_and_nothing_new(node_factory, syntax):
    node = node_factory()
    first = make_radiograph(gradient())
    assert send(node, first, ExplicitVRLittleEndian).Status == 0x0000
    (inst,) = node.rows(instances)
    stored = open(inst.path, "rb").read()

    status = send(node, _same_instance_in(first, syntax), syntax)  # a router re-sends it re-encoded
    assert status.Status == 0x0000
    assert len(node.rows(instances)) == 1 and len(node.rows(jobs)) == 1
    assert open(inst.path, "rb").read() == stored  # the analysed file stays as it was


@pytest.mark.parametrize(
    "change",
    [
        lambda ds: setattr(ds, "StudyInstanceUID", generate_uid()),
        lambda ds: setattr(ds, "PatientID", "SOMEONE-ELSE"),
        lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"),
    ],
    ids=["study", "patient", "photometric"],
)
def test_other_content_in_another_transfer_syntax_is_still_refused(node_factory, change):
    node = node_factory()
    first = make_radiograph(gradient())
    assert send(node, first, ExplicitVRLittleEndian).Status == 0x0000
    other = _same_instance_in(first, ImplicitVRLittleEndian)
    change(other)
    status = send(node, other, ImplicitVRLittleEndian)
    assert status.Status == 0xA900 and "other content" in status.ErrorComment
    assert len(node.rows(instances)) == 1


def test_other_bytes_in_the_same_transfer_syntax_are_still_refused(node_factory):
    node = node_factory()
    first = make_radiograph(gradient())
    assert send(node, first).Status == 0x0000
    other = _same_instance_in(first, ExplicitVRLittleEndian)
    other.PixelData = make_radiograph(gradient(maximum=1000)).PixelData  # same header, other pixels
    assert send(node, other).Status == 0xA900


def test_a_row_from_before_identity_records_is_compared_from_the_stored_header(node_factory):
    node = node_factory()
    first = make_radiograph(gradient())
    assert send(node, first).Status == 0x0000
    with node.engine.begin() as conn:  # as the 0002 schema left it
        conn.execute(update(instances).values(transfer_syntax_uid=None, identity=None, content_sha256=None))
    assert send(node, _same_instance_in(first, ImplicitVRLittleEndian), ImplicitVRLittleEndian).Status == 0x0000
    other = _same_instance_in(first, ImplicitVRLittleEndian)
    other.Rows = 32
    other.PixelData = other.PixelData[: 32 * 48 * 2]
    assert send(node, other, ImplicitVRLittleEndian).Status == 0xA900


def test_a_held_database_lock_gets_a700_before_the_senders_timeout(node_factory):
    node = node_factory(db_wait_s=1.0)
    blocker = sqlite3.connect(node.engine.url.database, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock (a backup, a long migration)
    try:
        # The sender gives up after 10 s (Orthanc's default); the node's default wait was 30 s.
        status = send(node, make_radiograph(gradient()), dimse_timeout_s=10)
        assert status is not None and status.Status == 0xA700, status
        assert "receiver.db_wait_s" in status.ErrorComment
    finally:
        blocker.rollback()
        blocker.close()
    assert node.rows(instances) == []  # nothing acknowledged, nothing recorded
    assert send(node, make_radiograph(gradient())).Status == 0x0000  # the lock gone, it stores again


@pytest.mark.peers
def test_a_held_postgresql_lock_gets_a700_before_the_senders_timeout(node_factory, postgres, tmp_path):
    url = fresh_url("postgresql", tmp_path, postgres)
    node = node_factory(db_url=url, db_wait_s=1.0)
    try:
        blocker = create_engine(url).connect()
        blocker.exec_driver_sql("BEGIN")
        blocker.exec_driver_sql("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")  # e.g. a VACUUM FULL
        try:
            status = send(node, make_radiograph(gradient()), dimse_timeout_s=10)
            assert status is not None and status.Status == 0xA700, status
            assert "receiver.db_wait_s" in status.ErrorComment
        finally:
            blocker.rollback()
            blocker.close()
        assert send(node, make_radiograph(gradient())).Status == 0x0000
    finally:
        node.engine.dispose()
        drop_database(url)


@pytest.mark.peers
def test_dcmsend_re_sending_an_image_as_rle_gets_success_and_nothing_new(tmp_path, fresh_uncr):
    node = ReceiverNode(tmp_path / "n")
    try:
        first = node.dcmsend(fresh_uncr, "-v")
        assert first.returncode == 0 and "with status SUCCESS  : 1" in first.stdout + first.stderr, first.stderr
        (inst,) = node.rows(instances)
        rle = tmp_path / "rle.dcm"
        dcmtk("dcmcrle", str(fresh_uncr), str(rle))  # the router's copy: RLE Lossless, same SOP Instance UID
        again = node.dcmsend(rle, "--decompress-never", "-v")  # proposes RLE only
        out = again.stdout + again.stderr
        assert dcmread(rle, stop_before_pixels=True).file_meta.TransferSyntaxUID == RLELossless
        assert again.returncode == 0 and "with status SUCCESS  : 1" in out, out
        assert node.rows(instances) == [inst] and len(node.rows(jobs)) == 1
        assert inst.transfer_syntax_uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # kept as first sent
    finally:
        node.stop()


def test_pdu_reads_in_large_steps_keep_pynetdicoms_contract():
    """The receiver's socket reads a PDU with recv_into (issue 22): whole PDUs, early EOF, no
    buffer of a length the peer only declared."""
    import socket
    import threading

    from cxr_node.dicom.receiver import _BulkRecvSocket

    near, far = socket.socketpair()
    sock = object.__new__(_BulkRecvSocket)  # only its socket matters to recv()
    sock.socket = near
    payload = bytes(range(256)) * 12_000  # 3 MB: more than one socket buffer, so several reads
    sender = threading.Thread(target=far.sendall, args=(payload + b"tail",))
    sender.start()
    assert sock.recv(len(payload)) == payload
    sender.join()
    far.close()
    assert sock.recv(4 << 30) == b"tail"  # 4 GB declared, 4 bytes sent, then EOF: what was read
    near.close()


def test_a_file_left_under_its_final_name_without_a_row_is_replaced_on_resend(node_factory):
    """write_before_commit renames before its fsync: a crash there can leave the final name with
    incomplete content, but no row names it and no success left; the sender's retry replaces it."""
    node = node_factory()
    ds = make_radiograph(gradient())
    path = node.layout.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00" * 1000)  # what a power loss mid-write may leave
    assert send(node, ds).Status == 0x0000
    (inst,) = node.rows(instances)
    assert inst.path == str(path) and dcmread(path).PixelData == ds.PixelData
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_write_before_commit_writes_the_parts_whole_and_leaves_no_temporary(tmp_path):
    from cxr_node.storage import write_before_commit

    target = tmp_path / "new-study" / "image.dcm"
    body = bytearray(b"x" * 5_000_000)
    with memoryview(body) as view:
        write_before_commit(target, (b"head", view))
    assert target.read_bytes() == b"head" + body
    assert [p.name for p in target.parent.iterdir()] == ["image.dcm"]
