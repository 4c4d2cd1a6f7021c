"""The `not_analysable` outcome end to end inside one process: NotAnalysable -> OutcomeKind ->
the worker closes the job at once (no retry, no result, no SR/SC) -> jobs list/show, the status
page and the metric say which check decided and why. `jobs retry` gives the image another go."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from cxr_node.analysis.bundle import untrained_bundle
from cxr_node.analysis.engine import Analyzer
from cxr_node.commands.jobs import command as jobs_command
from cxr_node.decoding.pool import DecodePool
from cxr_node.errors import NotAnalysable
from cxr_node.metrics import NodeMetrics
from cxr_node.processing import OutcomeKind, classify
from cxr_node.queue.jobs import JobQueue
from cxr_node.queue.reports import Reports
from cxr_node.queue.schema import open_database
from cxr_node.queue.states import JobState
from cxr_node.results.identity import NodeIdentity
from cxr_node.storage import StorageLayout
from cxr_node.web.page import NodeInfo, render_status
from cxr_node.worker import Worker, WorkerSettings
from tests.dicom_factory import gradient, make_radiograph
from tests.test_queue import FakeClock
from tests.test_worker_faults import receive


def test_not_analysable_is_its_own_kind_and_crosses_process_boundaries():
    exc = NotAnalysable("too-small", "image 1 x 1   pixels,\n smaller than 64")
    assert classify(exc) is OutcomeKind.NOT_ANALYSABLE and OutcomeKind.NOT_ANALYSABLE == "not_analysable"
    again = pickle.loads(pickle.dumps(exc))  # decode pool children send it back pickled
    assert (again.code, again.reason, str(again)) == ("too-small", "image 1 x 1 pixels, smaller than 64", again.reason)
    with pytest.raises(ValueError, match="code"):
        NotAnalysable("Too Small!", "x")  # the code is a metric label: kept tame


@pytest.fixture(scope="module")
def analyzer():
    return Analyzer(untrained_bundle(input_size=64), "cpu")


@pytest.fixture
def rig(tmp_path, analyzer):
    """A worker whose decoder declares files marked 'blank' not analysable (as a check would)."""
    queue = JobQueue(open_database(f"sqlite:///{tmp_path / 'q.db'}"), FakeClock())
    layout = StorageLayout(tmp_path / "s")
    pool = DecodePool(kind="thread", workers=2)
    blank: set[str] = set()

    def decode(paths):
        got = pool.decode_many(paths)
        return [
            NotAnalysable("no-contrast", "every pixel has the same value") if p in blank else g
            for p, g in zip(paths, got, strict=True)
        ]

    worker = Worker(
        queue,
        analyzer,
        layout,
        NodeIdentity("CXR_NODE"),
        WorkerSettings(max_attempts=3, batch_size=4, destinations=("pacs",)),
        decode,
        name="host:1",
    )
    yield queue, layout, worker, blank
    pool.close()


def test_worker_closes_the_job_at_once_without_any_result(rig, tmp_path):
    queue, layout, worker, blank = rig
    good = receive(queue, layout, make_radiograph(gradient()))
    flat_ds = make_radiograph(gradient())
    flat = receive(queue, layout, flat_ds)
    blank.add(str(layout.instance_path(flat_ds.StudyInstanceUID, flat)))
    assert worker.run_once() == 2  # one batch: the good image is analysed beside it
    job = queue.job_for_instance(flat)
    assert (job["state"], job["attempts"], job["reason_code"], job["reason"], job["error"]) == (
        "not_analysable",
        1,
        "no-contrast",
        "every pixel has the same value",
        None,
    )
    assert queue.result_for_instance(flat) is None  # no class, no SR, no SC
    assert not (layout.image_result_dir(flat_ds.StudyInstanceUID, flat)).exists()
    assert queue.job_for_instance(good)["state"] == "done" and queue.result_for_instance(good) is not None
    assert worker.run_once() == 0  # final: nothing comes back to the queue

    reports = Reports(queue.engine)
    (row,) = reports.list_jobs(states=[JobState.NOT_ANALYSABLE])
    assert row.why == "not analysable [no-contrast] every pixel has the same value"
    assert reports.totals()["not_analysable"] == 1 and reports.not_analysable_by_code() == {"no-contrast": 1}

    text = NodeMetrics(reports).render().decode()
    assert 'cxr_node_not_analysable_total{reason="no-contrast"} 1.0' in text
    assert 'cxr_node_queue_jobs{state="not_analysable"} 1.0' in text

    now = datetime.now(UTC)
    page = render_status(reports, NodeInfo("CXR_NODE", ("worker",), now), now)
    assert "Not analysable (no class given)" in page and "every pixel has the same value" in page

    db = ["--db", queue.engine.url.render_as_string(hide_password=False)]
    runner = CliRunner()
    listed = runner.invoke(jobs_command, ["list", "--state", "not_analysable", *db])
    assert listed.exit_code == 0 and "not_analysable" in listed.output and "[no-contrast]" in listed.output
    shown = runner.invoke(jobs_command, ["show", flat, *db])
    assert "not analysable [no-contrast] every pixel has the same value" in shown.output
    assert json.loads(runner.invoke(jobs_command, ["show", flat, "--json", *db]).output)["reason_code"] == "no-contrast"

    # The operator changed the limits: the image gets another go, and the verdict is gone.
    assert runner.invoke(jobs_command, ["retry", str(job["id"]), *db]).exit_code == 0
    again = queue.job_for_instance(flat)
    assert (again["state"], again["reason_code"], again["reason"]) == ("queued", None, None)
