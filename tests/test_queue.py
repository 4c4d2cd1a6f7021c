"""The job queue on SQLite and on a real PostgreSQL: leases, crash recovery, one result per image,
skipped images, back-off after resource failures, one export row per destination."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from cxr_node.queue.exports import ExportQueue
from cxr_node.queue.jobs import ExportItem, InstanceHeader, JobQueue, ReceivedInstance, ResultRecord
from cxr_node.queue.reports import Reports
from cxr_node.queue.schema import open_database
from cxr_node.queue.states import JobState
from cxr_node.queue.tables import exports, jobs, results
from tests.dbutil import drop_database, fresh_url


class FakeClock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)])
def engine(request, tmp_path):
    pg = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    url = fresh_url(request.param, tmp_path, pg)
    eng = open_database(url)
    yield eng
    drop_database(url, eng)


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


def test_each_image_of_a_study_gets_its_own_result_once(engine):
    q = JobQueue(engine, FakeClock())
    first, repeat = received(study="7.7"), received(study="7.7")
    q.enqueue(first)
    q.enqueue(repeat)
    a, b = q.claim("w", 60, limit=2)
    assert q.complete(
        a, RECORD, [ExportItem("sr", "/r/a-sr.dcm", "2.25.1"), ExportItem("sc", "/r/a-sc.dcm", "2.25.2")], ["pacs"]
    )
    assert q.complete(b, RECORD, [ExportItem("sr", "/r/b-sr.dcm", "2.25.3")], ["pacs"])
    found = q.results_for_study("7.7")
    assert [r["sop_instance_uid"] for r in found] == [first.sop_instance_uid, repeat.sop_instance_uid]
    assert found[0]["timings"] == {"model_a": 0.1}
    assert [e["sop_instance_uid"] for e in q.result_for_instance(repeat.sop_instance_uid)["exports"]] == ["2.25.3"]


def test_an_image_is_reported_once_when_its_job_is_completed_twice(engine):
    clock = FakeClock()
    q = JobQueue(engine, clock)
    q.enqueue(received(study="7.8"))
    (slow,) = q.claim("slow", lease_s=60)
    clock.advance(61)  # the slow worker's lease ran out; another takes the job
    (fast,) = q.claim("fast", lease_s=60)
    assert q.complete(fast, RECORD, [ExportItem("sr", "/r/sr.dcm", "2.25.30")], ["pacs"])
    assert not q.complete(slow, RECORD, [ExportItem("sr", "/r/sr.dcm", "2.25.31")], ["pacs"])
    with engine.connect() as conn:
        assert len(conn.execute(select(results)).all()) == 1
        assert conn.execute(select(exports.c.sop_instance_uid)).scalars().all() == ["2.25.30"]
    assert q.counts()["jobs_done"] == 1


def test_a_skipped_image_is_recorded_with_its_rule_and_never_claimed(engine):
    q = JobQueue(engine, FakeClock())
    seen = InstanceHeader("ACC-9", "CR", "RX TORAX PORTATIL", "Thorax lat")
    item = ReceivedInstance(
        "1.2.9",
        "1.2.840.10008.5.1.4.1.1.1",
        "1.2",
        "MOD",
        "/x/1.2.9.dcm",
        skip=True,
        rule="lateral-view",
        reason="ViewPosition LL: a lateral view",
        header=seen,
    )
    assert q.enqueue(item)
    assert q.claim("w", 60) == []
    job = q.job_for_instance("1.2.9")
    assert (job["state"], job["rule"], job["reason"]) == ("skipped", "lateral-view", "ViewPosition LL: a lateral view")
    (row,) = Reports(engine).list_jobs(states=["skipped"])
    assert (row.accession_number, row.modality, row.described) == ("ACC-9", "CR", "RX TORAX PORTATIL / Thorax lat")
    assert Reports(engine).skipped_by_rule() == {"lateral-view": 1}


def test_resource_failures_back_off_and_are_never_final(engine):
    clock = FakeClock()
    q = JobQueue(engine, clock)
    q.enqueue(received())
    for n in range(1, 6):  # more deferrals than max_attempts would allow
        (job,) = q.claim("w", 60)
        assert q.defer(job, "resource: No space left on device", lambda k: 10.0 * k) == 10.0 * n
        assert q.claim("w", 60) == []  # waits out its back-off
        clock.advance(10.0 * n + 1)
    (job,) = q.claim("w", 60)
    assert job.attempts == 1  # deferrals do not use up attempts
    assert q.complete(job, RECORD, [ExportItem("sr", "/r/sr.dcm", "2.25.40")], ())
    with engine.connect() as conn:
        assert conn.execute(select(jobs.c.state, jobs.c.deferrals, jobs.c.error)).one() == ("done", 0, None)


def test_one_export_row_per_object_and_destination(engine):
    q = JobQueue(engine, FakeClock())
    x = ExportQueue(engine, q.clock)
    q.enqueue(received())
    (job,) = q.claim("w", 60)
    q.complete(
        job,
        RECORD,
        [ExportItem("sc", "/r/sc.dcm", "2.25.50"), ExportItem("sr", "/r/sr.dcm", "2.25.51")],
        ["pacs", "web"],
    )
    due = x.due()
    assert sorted((e.kind, e.destination) for e in due) == [("sc", "pacs"), ("sc", "web")]  # each SR waits for its SC
    for e in due:
        x.sent(e)
    assert sorted((e.kind, e.destination) for e in x.due()) == [("sr", "pacs"), ("sr", "web")]
    assert [e.destination for e in x.due("web")] == ["web"]
    assert JobState(q.job_for_instance(job.sop_instance_uid)["state"]) is JobState.DONE


def test_exports_retry_later_and_sc_goes_before_sr(engine):
    clock = FakeClock()
    q = JobQueue(engine, clock)
    x = ExportQueue(engine, q.clock)
    q.enqueue(received(study="5.5"))
    (job,) = q.claim("w", 60)
    q.complete(
        job, RECORD, [ExportItem("sr", "/r/sr.dcm", "2.25.10"), ExportItem("sc", "/r/sc.dcm", "2.25.11")], ["pacs"]
    )
    due = x.due()
    assert [e.kind for e in due] == ["sc"]  # the SR references the SC: it goes once the SC has an end
    x.retry(due[0], "PACS down", delay_s=30)
    assert x.due() == []
    clock.advance(31)
    (sc,) = x.due()
    assert (sc.attempts, sc.last_error) == (1, "PACS down")
    x.sent(sc)
    (sr,) = x.due()
    assert sr.kind == "sr" and not sr.illustration_failed
    x.sent(sr)
    assert x.due() == [] and q.counts()["exports_sent"] == 2


def test_no_destination_keeps_results_local(engine):
    q = JobQueue(engine, FakeClock())
    x = ExportQueue(engine, q.clock)
    q.enqueue(received())
    (job,) = q.claim("w", 60)
    q.complete(job, RECORD, [ExportItem("sr", "/r/sr.dcm", "2.25.20")], ())
    assert x.due() == [] and q.counts()["exports_local"] == 1


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
