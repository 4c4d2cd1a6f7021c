"""The job queue on SQLite and on a real PostgreSQL: leases, crash recovery, one report per study."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from cxr_node.queue.jobs import ExportItem, JobQueue, ReceivedInstance, ResultRecord
from cxr_node.queue.tables import make_engine, metadata, results


class FakeClock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, 8, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)])
def engine(request, tmp_path):
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    else:
        eng = make_engine(request.getfixturevalue("postgres").url)
    yield eng
    metadata.drop_all(eng)
    eng.dispose()


def received(study="1.2.3", sop=None):
    sop = sop or f"2.25.{uuid.uuid4().int}"
    return ReceivedInstance(sop, "1.2.840.10008.5.1.4.1.1.1", study, "MOD", f"/x/{sop}.dcm")


RECORD = ResultRecord("Normal", 0.1, 0.2, False, "m 1", True, {"model_a": 0.1})


def test_claim_takes_each_job_once_and_in_order(engine):
    q = JobQueue(engine, FakeClock())
    for i in range(3):
        assert q.enqueue(received(study=f"1.{i}"))
    first = q.claim("w1", lease_s=60, limit=2)
    second = q.claim("w2", lease_s=60, limit=2)
    assert [j.study_instance_uid for j in first] == ["1.0", "1.1"]
    assert [j.study_instance_uid for j in second] == ["1.2"]
    assert q.claim("w3", lease_s=60) == []


def test_duplicate_instance_is_not_queued_twice(engine):
    q = JobQueue(engine, FakeClock())
    item = received()
    assert q.enqueue(item) is True
    assert q.enqueue(item) is False
    assert len(q.claim("w", 60, limit=5)) == 1


def test_job_of_a_dead_worker_is_taken_again_after_its_lease(engine):
    clock = FakeClock()
    q = JobQueue(engine, clock)
    q.enqueue(received())
    (job,) = q.claim("dies", lease_s=60)
    clock.advance(59)
    assert q.claim("other", lease_s=60) == []  # lease still valid
    clock.advance(2)
    (again,) = q.claim("other", lease_s=60)
    assert again.id == job.id and again.attempts == 2


def test_failures_requeue_until_attempts_run_out(engine):
    q = JobQueue(engine, FakeClock())
    q.enqueue(received())
    (job,) = q.claim("w", 60)
    assert q.fail(job, "boom", max_attempts=2) == "queued"
    (job,) = q.claim("w", 60)
    assert q.fail(job, "boom", max_attempts=2) == "failed"
    assert q.claim("w", 60) == []
    q.enqueue(received(study="9"))
    (job,) = q.claim("w", 60)
    assert q.fail(job, "not a radiograph", max_attempts=5, permanent=True) == "failed"


def test_a_study_is_reported_once_even_with_two_images(engine):
    q = JobQueue(engine, FakeClock())
    q.enqueue(received(study="7.7"))
    q.enqueue(received(study="7.7"))
    a, b = q.claim("w", 60, limit=2)
    assert q.complete(a, RECORD, [ExportItem("sr", "/r/sr.dcm", "2.25.1"), ExportItem("sc", "/r/sc.dcm", "2.25.2")], "P@h:1")
    assert not q.complete(b, RECORD, [ExportItem("sr", "/r/sr2.dcm", "2.25.3")], "P@h:1")
    with engine.connect() as conn:
        assert len(conn.execute(select(results)).all()) == 1
    assert q.counts()["jobs_skipped"] == 1
    assert q.result_for_study("7.7")["timings"] == {"model_a": 0.1}


def test_exports_retry_later_and_sc_goes_before_sr(engine):
    clock = FakeClock()
    q = JobQueue(engine, clock)
    q.enqueue(received(study="5.5"))
    (job,) = q.claim("w", 60)
    q.complete(job, RECORD, [ExportItem("sr", "/r/sr.dcm", "2.25.10"), ExportItem("sc", "/r/sc.dcm", "2.25.11")], "P@h:1")
    due = q.due_exports()
    assert [e.kind for e in due] == ["sc", "sr"]
    for e in due:
        q.export_retry(e, "PACS down", delay_s=30)
    assert q.due_exports() == []
    clock.advance(31)
    due = q.due_exports()
    assert len(due) == 2 and all(e.attempts == 1 for e in due)
    for e in due:
        q.export_sent(e)
    assert q.due_exports() == [] and q.counts()["exports_sent"] == 2


def test_no_destination_keeps_results_local(engine):
    q = JobQueue(engine, FakeClock())
    q.enqueue(received())
    (job,) = q.claim("w", 60)
    q.complete(job, RECORD, [ExportItem("sr", "/r/sr.dcm", "2.25.20")], None)
    assert q.due_exports() == [] and q.counts()["exports_local"] == 1


def test_concurrent_workers_never_claim_the_same_job(engine):
    q = JobQueue(engine)
    for i in range(40):
        q.enqueue(received(study=f"3.{i}"))
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name):
        while True:
            got = q.claim(name, 60, limit=2)
            if not got:
                return
            with lock:
                claimed.extend(j.id for j in got)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40
