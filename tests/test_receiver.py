"""Storage SCP: durable before success, the right status for bad input, keeps serving after faults."""

from __future__ import annotations

import errno

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from cxr_node.dicom.receiver import Receiver, ReceiverSettings
from cxr_node.queue.jobs import JobQueue
from cxr_node.queue.tables import instances, jobs, make_engine
from cxr_node.storage import StorageLayout, write_durably
from tests.dicom_factory import gradient, make_radiograph


class Node:
    def __init__(self, tmp_path, write=write_durably, queue_cls=JobQueue, allowed=()):
        self.engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
        self.queue = queue_cls(self.engine)
        self.layout = StorageLayout(tmp_path / "storage")
        self.receiver = Receiver(ReceiverSettings("CXR_NODE", "127.0.0.1", 0, allowed), self.queue, self.layout, write=write)
        self.receiver.start()

    def send(self, ds, calling="MODALITY", called="CXR_NODE"):
        ae = AE(ae_title=calling)
        ae.add_requested_context(ComputedRadiographyImageStorage)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.receiver.port, ae_title=called)
        if not assoc.is_established:
            return None
        try:
            return assoc.send_c_store(ds)
        finally:
            assoc.release()

    def rows(self, table):
        # A separate connection: sees only what was committed.
        with make_engine(str(self.engine.url)).connect() as conn:
            return conn.execute(select(table)).all()


@pytest.fixture
def node_factory(tmp_path):
    made = []

    def make(**kw):
        n = Node(tmp_path, **kw)
        made.append(n)
        return n

    yield make
    for n in made:
        n.receiver.stop()


def test_success_only_after_file_and_row_are_durable(node_factory):
    node = node_factory()
    ds = make_radiograph(gradient())
    status = node.send(ds)
    assert status.Status == 0x0000
    (inst,) = node.rows(instances)
    (job,) = node.rows(jobs)
    assert inst.sop_instance_uid == ds.SOPInstanceUID and job.state == "queued"
    stored = dcmread(inst.path)
    assert stored.SOPInstanceUID == ds.SOPInstanceUID and stored.PixelData == ds.PixelData


def test_resent_instance_is_acknowledged_but_queued_once(node_factory):
    node = node_factory()
    ds = make_radiograph(gradient())
    assert node.send(ds).Status == 0x0000
    assert node.send(ds).Status == 0x0000
    assert len(node.rows(jobs)) == 1


def test_colour_image_gets_a900_naming_the_attribute(node_factory):
    node = node_factory()
    ds = make_radiograph(gradient())
    ds.PhotometricInterpretation = "RGB"
    status = node.send(ds)
    assert status.Status == 0xA900
    assert "PhotometricInterpretation" in status.ErrorComment
    assert node.rows(jobs) == []


def test_missing_study_uid_gets_a900(node_factory):
    node = node_factory()
    ds = make_radiograph(gradient())
    del ds.StudyInstanceUID
    status = node.send(ds)
    assert status.Status == 0xA900 and "StudyInstanceUID" in status.ErrorComment


def test_full_disk_gets_a700_and_the_node_keeps_serving(node_factory):
    failing = {"on": True}

    def flaky_write(path, data):
        if failing["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_durably(path, data)

    node = node_factory(write=flaky_write)
    status = node.send(make_radiograph(gradient()))
    assert status.Status == 0xA700 and "No space left" in status.ErrorComment
    assert node.rows(jobs) == []  # nothing acknowledged, nothing queued
    failing["on"] = False
    assert node.send(make_radiograph(gradient())).Status == 0x0000


def test_database_down_gets_a700_and_nothing_is_acknowledged(node_factory):
    class DownQueue(JobQueue):
        def enqueue(self, item):
            raise OperationalError("INSERT", {}, Exception("database is locked"))

    node = node_factory(queue_cls=DownQueue)
    status = node.send(make_radiograph(gradient()))
    assert status.Status == 0xA700 and "Database" in status.ErrorComment


def test_calling_ae_policy_and_called_ae_title(node_factory):
    node = node_factory(allowed=("MOBILE_DR",))
    assert node.send(make_radiograph(gradient()), calling="STRANGER") is None
    assert node.send(make_radiograph(gradient()), called="OTHER_NODE") is None
    assert node.send(make_radiograph(gradient()), calling="MOBILE_DR").Status == 0x0000


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # the bad UID is the point
def test_uid_unusable_as_file_name_gets_a900(node_factory):
    node = node_factory()
    ds = make_radiograph(gradient())
    ds.StudyInstanceUID = ".."
    status = node.send(ds)
    assert status.Status == 0xA900 and "UID" in status.ErrorComment
    assert node.send(make_radiograph(gradient())).Status == 0x0000  # still serving
