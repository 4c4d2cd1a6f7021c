"""Issue 19: attempts count across crashes. A job re-queued because its worker died (requeue_orphans
at restart) or hung (lease ran out) has used an attempt; once it has had worker.max_attempts it is
failed with a sentence saying so, never leased again. Before, attempts reached 4 with max_attempts 3
and an image that took the node down did so after every restart. SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from cxr_node.queue.jobs import JobQueue
from cxr_node.queue.states import JobState
from cxr_node.queue.tables import jobs
from tests.test_queue import FakeClock, received
from tests.test_queue import engine as engine  # noqa: F401  (the SQLite / PostgreSQL fixture)

MAX = 3


def _job(eng):
    with eng.connect() as conn:
        return conn.execute(select(jobs.c.state, jobs.c.attempts, jobs.c.error)).one()


def test_lease_expiries_use_up_the_attempts(engine):
    clock = FakeClock()
    q = JobQueue(engine, clock)
    q.enqueue(received())
    for attempt in range(1, MAX + 1):
        (job,) = q.claim("host:100", lease_s=60, max_attempts=MAX)
        assert job.attempts == attempt
        clock.advance(61)  # the worker hung or died on another host: the lease runs out
    assert q.claim("host:100", lease_s=60, max_attempts=MAX) == []
    state, attempts, error = _job(engine)
    assert (state, attempts) == (JobState.FAILED, MAX)
    assert error.startswith(f"processing of this image was interrupted {MAX} times")
    assert f"worker.max_attempts {MAX}" in error
    clock.advance(3600)
    assert q.claim("host:100", lease_s=60, max_attempts=MAX) == []  # never again


def test_restarts_after_crashes_use_up_the_attempts(engine):
    clock = FakeClock()
    q = JobQueue(engine, clock)
    q.enqueue(received())
    dead = lambda pid: False  # noqa: E731  every earlier worker process is gone
    requeued = []
    for _ in range(MAX):
        (job,) = q.claim(f"host:{100 + job_no(requeued)}", lease_s=600, max_attempts=MAX)
        requeued.append(q.requeue_orphans("host", dead, max_attempts=MAX))  # the node was killed, restarts
    assert requeued == [1, 1, 0]  # the third interruption closes it
    state, attempts, error = _job(engine)
    assert (state, attempts) == (JobState.FAILED, MAX) and "interrupted 3 times" in error
    assert q.claim("host:200", lease_s=600, max_attempts=MAX) == []


def test_a_job_with_attempts_left_is_requeued_as_before(engine):
    q = JobQueue(engine, FakeClock())
    q.enqueue(received())
    q.claim("host:100", lease_s=600, max_attempts=MAX)
    assert q.requeue_orphans("host", lambda pid: False, max_attempts=MAX) == 1
    assert _job(engine)[:2] == (JobState.QUEUED, 1)


def job_no(seen: list) -> int:
    return len(seen)
