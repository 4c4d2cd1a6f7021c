"""Storage SCP: durable before success, the right status for bad input, keeps serving after faults."""

from __future__ import annotations

import errno

import pytest
from pydicom import dcmread
from sqlalchemy.exc import OperationalError

from cxr_node.dicom.receiver import ReceiverSettings
from cxr_node.queue.jobs import JobQueue
from cxr_node.queue.tables import instances, jobs
from cxr_node.storage import write_durably
from tests.dicom_factory import gradient, make_radiograph
from tests.receiver_harness import ReceiverNode


@pytest.fixture
def node_factory(tmp_path):
    made = []

    def make(write=write_durably, queue_cls=JobQueue, allowed=(), **kw):
        settings = ReceiverSettings("CXR_NODE", "127.0.0.1", 0, allowed, **kw)
        n = ReceiverNode(tmp_path / f"n{len(made)}", settings, queue_cls=queue_cls, write=write)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()


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


def test_free_space_watermark_gets_a700_before_the_disk_is_full(node_factory, tmp_path):
    free = {"mib": 499.0}
    node = node_factory(min_free_mb=500.0)
    node.receiver.free_space = lambda path: free["mib"]
    status = node.send(make_radiograph(gradient()))
    assert status.Status == 0xA700 and "min_free_mb" in status.ErrorComment
    assert node.rows(jobs) == [] and not any(node.layout.root.glob("instances/*/*.dcm"))
    free["mib"] = 501.0
    assert node.send(make_radiograph(gradient())).Status == 0x0000


def test_free_space_is_read_from_the_storage_file_system(node_factory):
    node = node_factory(min_free_mb=1e12)  # more than any disk: the real statvfs must refuse
    status = node.send(make_radiograph(gradient()))
    assert status.Status == 0xA700


def test_same_sop_uid_with_other_content_is_refused_and_the_first_file_kept(node_factory):
    node = node_factory()
    first = make_radiograph(gradient())
    assert node.send(first).Status == 0x0000
    (inst,) = node.rows(instances)
    stored = open(inst.path, "rb").read()

    second = make_radiograph(gradient(maximum=1000))  # other pixels, same identity
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(second, keyword, getattr(first, keyword))
    second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    status = node.send(second)
    assert status.Status == 0xA900 and "other content" in status.ErrorComment
    assert open(inst.path, "rb").read() == stored  # never written over
    assert [p.name for p in node.layout.root.rglob("*") if p.is_file()] == [inst.path.rsplit("/", 1)[1]]
    assert node.send(first).Status == 0x0000  # the same bytes again: already received
    assert len(node.rows(jobs)) == 1 and inst.content_sha256


def test_same_sop_uid_in_another_study_is_refused(node_factory):
    node = node_factory()
    first = make_radiograph(gradient())
    assert node.send(first).Status == 0x0000
    other = make_radiograph(gradient())
    other.SOPInstanceUID = first.SOPInstanceUID
    other.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    assert node.send(other).Status == 0xA900
    assert len(node.rows(instances)) == 1
