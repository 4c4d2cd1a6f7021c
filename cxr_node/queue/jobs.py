"""The work queue: enqueue on receipt, claim with a lease, complete, fail, and hand results to export.

Claims are optimistic conditional UPDATEs (`... WHERE id = ? AND claimable`), which are
atomic on SQLite and PostgreSQL alike, so several workers may share one database.
A worker that dies leaves its job `running` with a lease in the past; the next claim
takes it again. Nothing here sleeps or reads the wall clock directly: `clock` is injected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from sqlalchemy import Engine, and_, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from cxr_node.queue.tables import exports, instances, jobs, results

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes even for timezone=True columns; they were stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


@dataclass(frozen=True)
class ReceivedInstance:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    calling_aet: str
    path: str


@dataclass(frozen=True)
class Job:
    id: int
    instance_id: int
    study_instance_uid: str
    sop_instance_uid: str
    path: str
    attempts: int


@dataclass(frozen=True)
class ResultRecord:
    label: str
    p_abnormal: float
    p_covid: float
    models_disagree: bool
    model: str
    trained: bool
    timings: dict | None = None


@dataclass(frozen=True)
class ExportItem:
    kind: str
    path: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Export:
    id: int
    kind: str
    path: str
    sop_instance_uid: str
    destination: str
    attempts: int


class JobQueue:
    def __init__(self, engine: Engine, clock: Clock = utc_now) -> None:
        self.engine = engine
        self.clock = clock

    # -- receiver side ---------------------------------------------------------------
    def enqueue(self, item: ReceivedInstance) -> bool:
        """Record an instance and its job in one transaction. False if the instance was already known."""
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                instance_id = conn.execute(
                    insert(instances).values(
                        sop_instance_uid=item.sop_instance_uid,
                        sop_class_uid=item.sop_class_uid,
                        study_instance_uid=item.study_instance_uid,
                        calling_aet=item.calling_aet,
                        path=item.path,
                        received_at=now,
                    )
                ).inserted_primary_key[0]
                conn.execute(
                    insert(jobs).values(
                        instance_id=instance_id,
                        study_instance_uid=item.study_instance_uid,
                        state="queued",
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            with self.engine.connect() as conn:
                known = conn.execute(
                    select(instances.c.id).where(instances.c.sop_instance_uid == item.sop_instance_uid)
                ).first()
            if known is None:
                raise
            return False
        return True

    # -- worker side -----------------------------------------------------------------
    def _claimable(self, now: datetime):
        return or_(jobs.c.state == "queued", and_(jobs.c.state == "running", jobs.c.lease_until < now))

    def claim(self, worker: str, lease_s: float, limit: int = 1) -> list[Job]:
        now = self.clock()
        claimed: list[Job] = []
        with self.engine.connect() as conn:
            candidates = conn.execute(
                select(jobs.c.id).where(self._claimable(now)).order_by(jobs.c.id).limit(limit * 4)
            ).scalars().all()
        for job_id in candidates:
            if len(claimed) >= limit:
                break
            with self.engine.begin() as conn:
                won = conn.execute(
                    update(jobs)
                    .where(and_(jobs.c.id == job_id, self._claimable(now)))
                    .values(
                        state="running",
                        worker=worker,
                        lease_until=now + timedelta(seconds=lease_s),
                        attempts=jobs.c.attempts + 1,
                        updated_at=now,
                    )
                ).rowcount
                if won != 1:
                    continue  # another worker was faster
                row = conn.execute(
                    select(jobs.c.id, jobs.c.instance_id, jobs.c.study_instance_uid, jobs.c.attempts,
                           instances.c.sop_instance_uid, instances.c.path)
                    .join(instances, instances.c.id == jobs.c.instance_id)
                    .where(jobs.c.id == job_id)
                ).one()
            claimed.append(Job(row.id, row.instance_id, row.study_instance_uid, row.sop_instance_uid, row.path, row.attempts))
        return claimed

    def requeue_orphans(self, host: str, is_alive: Callable[[int], bool]) -> int:
        """Re-queue jobs held by dead worker processes of this host (worker names are HOST:PID).

        Lease expiry covers workers on other hosts; this makes a restart after a crash
        pick its interrupted work up at once instead of after the lease.
        """
        with self.engine.connect() as conn:
            held = conn.execute(
                select(jobs.c.id, jobs.c.worker).where(and_(jobs.c.state == "running", jobs.c.worker.like(f"{host}:%")))
            ).all()
        orphans = [row.id for row in held if row.worker.rpartition(":")[2].isdigit() and not is_alive(int(row.worker.rpartition(":")[2]))]
        if orphans:
            with self.engine.begin() as conn:
                conn.execute(
                    update(jobs)
                    .where(and_(jobs.c.id.in_(orphans), jobs.c.state == "running"))
                    .values(state="queued", lease_until=None, updated_at=self.clock())
                )
        return len(orphans)

    def study_reported(self, study_instance_uid: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(
                select(results.c.id).where(results.c.study_instance_uid == study_instance_uid)
            ).first() is not None

    def complete(self, job: Job, record: ResultRecord, items: list[ExportItem], destination: str | None) -> bool:
        """Store the result and its exports and close the job, atomically.

        Returns False (and marks the job skipped) when the study already has a result:
        the unique constraint on results.study_instance_uid is what makes a study
        reported at most once, even with racing workers.
        """
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                result_id = conn.execute(
                    insert(results).values(
                        job_id=job.id,
                        study_instance_uid=job.study_instance_uid,
                        label=record.label,
                        p_abnormal=record.p_abnormal,
                        p_covid=record.p_covid,
                        models_disagree=record.models_disagree,
                        model=record.model,
                        trained=record.trained,
                        timings=record.timings,
                        created_at=now,
                    )
                ).inserted_primary_key[0]
                for item in items:
                    conn.execute(
                        insert(exports).values(
                            result_id=result_id,
                            kind=item.kind,
                            path=item.path,
                            sop_instance_uid=item.sop_instance_uid,
                            destination=destination,
                            state="pending" if destination else "local",
                            attempts=0,
                            next_try_at=now,
                        )
                    )
                conn.execute(
                    update(jobs).where(jobs.c.id == job.id).values(state="done", error=None, lease_until=None, updated_at=now)
                )
        except IntegrityError:
            if not self.study_reported(job.study_instance_uid):
                raise
            self.skip(job, "study already reported")
            return False
        return True

    def skip(self, job: Job, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs).where(jobs.c.id == job.id).values(state="skipped", error=reason, lease_until=None, updated_at=self.clock())
            )

    def fail(self, job: Job, error: str, max_attempts: int, permanent: bool = False) -> str:
        """Re-queue for another attempt, or mark failed when attempts are used up or retrying cannot help."""
        state = "failed" if permanent or job.attempts >= max_attempts else "queued"
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs).where(jobs.c.id == job.id).values(state=state, error=error[:2000], lease_until=None, updated_at=self.clock())
            )
        return state

    # -- dispatcher side -------------------------------------------------------------
    def due_exports(self, limit: int = 16) -> list[Export]:
        now = self.clock()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(exports.c.id, exports.c.kind, exports.c.path, exports.c.sop_instance_uid,
                       exports.c.destination, exports.c.attempts)
                .where(and_(exports.c.state == "pending", exports.c.next_try_at <= now))
                # SC before SR: the SR references the SC, so the SC should be there first.
                .order_by(case((exports.c.kind == "sc", 0), else_=1), exports.c.id)
                .limit(limit)
            ).all()
        return [Export(r.id, r.kind, r.path, r.sop_instance_uid, r.destination, r.attempts) for r in rows]

    def export_sent(self, export: Export) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                update(exports).where(exports.c.id == export.id).values(
                    state="sent", sent_at=now, attempts=exports.c.attempts + 1, last_error=None
                )
            )

    def export_retry(self, export: Export, error: str, delay_s: float) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                update(exports).where(exports.c.id == export.id).values(
                    attempts=exports.c.attempts + 1,
                    last_error=error[:2000],
                    next_try_at=now + timedelta(seconds=delay_s),
                )
            )

    # -- reading -----------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            job_rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
            exp_rows = conn.execute(select(exports.c.state, func.count()).group_by(exports.c.state)).all()
        out = {f"jobs_{s}": n for s, n in job_rows}
        out.update({f"exports_{s}": n for s, n in exp_rows})
        return out

    def result_for_study(self, study_instance_uid: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(results).where(results.c.study_instance_uid == study_instance_uid)).first()
            if row is None:
                return None
            out = dict(row._mapping)
            out["exports"] = [
                dict(r._mapping)
                for r in conn.execute(select(exports).where(exports.c.result_id == row.id).order_by(exports.c.id))
            ]
        for key in ("created_at",):
            out[key] = _aware(out[key])
        return out
