"""The worker under faults: a full disk while writing results is retried with a back-off until it
succeeds (never final); an undecodable image fails at once; other errors use up max_attempts;
two images of one study in one batch each get their own result files."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pydicom
import pytest

import cxr_node.results.writer as writer
from cxr_node.analysis.bundle import untrained_bundle
from cxr_node.analysis.engine import Analyzer
from cxr_node.decoding.pool import DecodePool
from cxr_node.queue.jobs import JobQueue, ReceivedInstance
from cxr_node.queue.schema import open_database
from cxr_node.results.identity import NodeIdentity
from cxr_node.storage import StorageLayout
from cxr_node.worker import Worker, WorkerSettings
from tests.dicom_factory import gradient, make_radiograph
from tests.test_queue import FakeClock


@pytest.fixture(scope="module")
def analyzer():
    return Analyzer(untrained_bundle(input_size=64), "cpu")


@pytest.fixture
def rig(tmp_path, analyzer):
    clock = FakeClock()
    queue = JobQueue(open_database(f"sqlite:///{tmp_path / 'q.db'}"), clock)
    layout = StorageLayout(tmp_path / "s")
    pool = DecodePool(kind="thread", workers=2)
    worker = Worker(
        queue,
        analyzer,
        layout,
        NodeIdentity("CXR_NODE"),
        WorkerSettings(max_attempts=3, batch_size=4, destinations=("pacs",), resource_backoff_s=lambda n: 10.0 * n),
        pool.decode_many,
        name="host:1",
    )
    yield queue, layout, worker, clock
    pool.close()


def receive(queue, layout, ds) -> str:
    path = layout.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    queue.enqueue(ReceivedInstance(ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID, "MOD", str(path)))
    return ds.SOPInstanceUID


def job_state(queue, sop):
    job = queue.job_for_instance(sop)
    return job["state"], job["attempts"], job["error"]


def test_disk_full_while_writing_results_is_retried_until_it_succeeds(rig, monkeypatch):
    queue, layout, worker, clock = rig
    sop = receive(queue, layout, make_radiograph(gradient()))
    real_write, failures = writer.write_durably, {"left": 5}  # more failures than max_attempts

    def full_disk(path, data):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, data)

    monkeypatch.setattr(writer, "write_durably", full_disk)
    for n in range(1, 6):
        assert worker.run_once() == 1
        state, attempts, error = job_state(queue, sop)
        assert (state, attempts) == ("queued", 0) and "No space left on device" in error
        assert worker.run_once() == 0  # waiting out the back-off
        clock.advance(10.0 * n + 1)
    assert worker.run_once() == 1
    assert job_state(queue, sop) == ("done", 1, None)
    result = queue.result_for_instance(sop)
    assert {e["kind"] for e in result["exports"]} == {"sr", "sc"}


def test_undecodable_image_fails_at_once_with_its_reason(rig):
    queue, layout, worker, _ = rig
    ds = make_radiograph(gradient())
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # cut short after acknowledgement
    sop = receive(queue, layout, ds)
    assert worker.run_once() == 1
    state, attempts, error = job_state(queue, sop)
    assert (state, attempts) == ("failed", 1) and "\n" not in error


def test_other_errors_use_up_max_attempts(rig, monkeypatch):
    queue, layout, worker, clock = rig
    sop = receive(queue, layout, make_radiograph(gradient()))

    def broken(*args, **kwargs):
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(writer, "render_secondary_capture", broken)
    for expected in ("queued", "queued", "failed"):
        assert worker.run_once() == 1
        assert job_state(queue, sop)[0] == expected
    assert "renderer bug" in job_state(queue, sop)[2]


def test_two_images_of_one_study_in_one_batch_get_their_own_results(rig):
    queue, layout, worker, _ = rig
    study = pydicom.uid.generate_uid()
    dark = make_radiograph(gradient(maximum=1000), study_uid=study, ViewPosition="AP")
    bright = make_radiograph(np.fliplr(gradient()), study_uid=study, ViewPosition="AP", InstanceNumber=2)
    sops = [receive(queue, layout, dark), receive(queue, layout, bright)]
    assert worker.run_once() == 2
    results = queue.results_for_study(study)
    assert [r["sop_instance_uid"] for r in results] == sops
    for sop, result in zip(sops, results, strict=True):
        paths = {e["kind"]: Path(e["path"]) for e in result["exports"]}
        assert paths["sr"].parent == layout.image_result_dir(study, sop)
        sr = pydicom.dcmread(paths["sr"])
        refs = {str(e.value) for e in sr.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
        assert sop in refs and not (set(sops) - {sop}) & refs
    assert len({e["sop_instance_uid"] for r in results for e in r["exports"]}) == 4  # 2 images x (SR + SC)


def test_readiness_model_problem_while_the_models_fail_and_after(rig, monkeypatch, analyzer):
    # A model or device fault (here the analyser raising, as a lost GPU does) makes the worker's
    # model check false with the reason; the next batch the models answer makes it true again.
    queue, layout, worker, clock = rig
    assert worker.model_problem() is None
    real = analyzer.analyse

    def broken(images):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(analyzer, "analyse", broken)
    receive(queue, layout, make_radiograph(gradient(64, 48)))
    worker.run_once()
    problem = worker.model_problem()
    assert (
        problem is not None and problem.startswith("the last analysis failed:") and "illegal memory access" in problem
    )
    monkeypatch.setattr(analyzer, "analyse", real)
    clock.advance(3600)
    receive(queue, layout, make_radiograph(gradient(64, 48)))
    worker.run_once()
    assert worker.model_problem() is None
