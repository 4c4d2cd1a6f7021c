"""The work queue: enqueue on receipt, claim with a lease, complete, fail, and hand results to export.

Claims are optimistic conditional UPDATEs (`... WHERE id = ? AND claimable`), which are
atomic on SQLite and PostgreSQL alike, so several workers may share one database.
A worker that dies leaves its job `running` with a lease in the past; the next claim
takes it again. Nothing here sleeps or reads the wall clock directly: `clock` is injected.
Every write to the tables goes through this class, except the export rows' life after
`complete` (or `not_analysable`) creates them: ExportQueue (queue/exports.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, CursorResult, Engine, and_, exists, func, insert, not_, or_, select, update
from sqlalchemy.exc import IntegrityError

from cxr_node.events import Notifier
from cxr_node.queue.states import OPEN_JOB_STATES, ExportKind, ExportState, JobState
from cxr_node.queue.tables import SQLITE_BUSY_TIMEOUT_S, exports, instances, jobs, results

Clock = Callable[[], datetime]
PURGED = "(purged)"  # instances.path once retention deleted the file


def utc_now() -> datetime:
    return datetime.now(UTC)


def _new_id(result: CursorResult) -> int:
    # A single-row INSERT always reports its primary key (None is only for executemany / non-inserts).
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes even for timezone=True columns; they were stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def interrupted_reason(attempts: int, max_attempts: int) -> str:
    return (
        f"processing of this image was interrupted {attempts} times (the node stopped or its lease ran out"
        f" while decoding or analysing it); not tried again (worker.max_attempts {max_attempts})"
    )


@dataclass(frozen=True)
class InstanceHeader:
    """What an operator recognises an image by (jobs list, status page); None when not in the header."""

    accession_number: str | None = None
    modality: str | None = None
    study_description: str | None = None
    series_description: str | None = None


@dataclass(frozen=True)
class ReceivedInstance:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    calling_aet: str
    path: str
    content_sha256: str | None = None
    transfer_syntax_uid: str | None = None
    identity: dict | None = None  # cxr_node.dicom.same_instance.instance_identity
    # The selection rules' verdict, taken at receipt: skip=True records the job as skipped.
    skip: bool = False
    rule: str | None = None
    reason: str | None = None
    header: InstanceHeader = InstanceHeader()


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
    kind: ExportKind
    path: str
    sop_instance_uid: str
    # The destinations this item goes to; None: every destination given to `complete`.
    # An empty tuple keeps it on disk only (one `local` row).
    destinations: tuple[str, ...] | None = None


def _new_export(item: ExportItem, destination: str | None, now: datetime, **owner: int):
    """The export row of one object for one destination (None: kept on disk only), due now.

    owner: result_id (a result's SR/SC) or job_id (a not-analysable image's short report).
    """
    return insert(exports).values(
        **owner,
        kind=item.kind,
        path=item.path,
        sop_instance_uid=item.sop_instance_uid,
        destination=destination,
        state=ExportState.PENDING if destination else ExportState.LOCAL,
        attempts=0,
        next_try_at=now,
        created_at=now,
    )


class JobQueue:
    def __init__(self, engine: Engine, clock: Clock = utc_now, notifier: Notifier | None = None) -> None:
        self.engine = engine
        self.clock = clock
        # Wakes the worker ("jobs") and the dispatcher ("exports") when there is work for them.
        self.notifier = notifier or Notifier()

    # -- receiver side ---------------------------------------------------------------
    # A C-STORE waits for these while the sender waits for its answer: `wait_s` bounds how long a
    # statement waits for another transaction's lock (then it raises, and the receiver answers
    # 0xA700 before the sender's own timeout). None: the engine's defaults.
    @contextmanager
    def _receipt(self, wait_s: float | None, writes: bool = True) -> Iterator[Connection]:
        """A transaction whose lock waits end after wait_s (SQLite busy timeout; PostgreSQL
        lock_timeout and statement_timeout, SET LOCAL so they end with the transaction).
        A SQLite read (writes=False) waits for no writer in WAL mode: no timeout to set."""
        with self.engine.connect() as conn:
            if wait_s is None or (not writes and conn.dialect.name == "sqlite"):
                with conn.begin():
                    yield conn
                return
            ms = max(1, int(wait_s * 1000))
            if conn.dialect.name != "sqlite":
                with conn.begin():
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
                    yield conn
                return
            # A pragma on the pooled connection: set before the transaction, put back after it.
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {ms}")
            conn.commit()
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
                conn.commit()

    def known_instance(self, sop_instance_uid: str, wait_s: float | None = None) -> dict | None:
        """The stored instance with this SOP Instance UID (path, content_sha256, transfer syntax,
        identity), or None."""
        with self._receipt(wait_s, writes=False) as conn:
            row = conn.execute(
                select(
                    instances.c.id,
                    instances.c.path,
                    instances.c.content_sha256,
                    instances.c.study_instance_uid,
                    instances.c.transfer_syntax_uid,
                    instances.c.identity,
                ).where(instances.c.sop_instance_uid == sop_instance_uid)
            ).first()
        return dict(row._mapping) if row is not None else None

    def own_result(self, sop_instance_uid: str, wait_s: float | None = None) -> dict | None:
        """The node's own result object with this SOP Instance UID (its kind, the image it was
        computed from), or None: what a PACS sends back when it routes a whole study."""
        with self._receipt(wait_s, writes=False) as conn:
            # the image: its result's, or (a not-analysable image's report) its job's instance
            source = func.coalesce(results.c.sop_instance_uid, instances.c.sop_instance_uid)
            row = conn.execute(
                select(exports.c.kind, source.label("source_sop_instance_uid"))
                .select_from(
                    exports.outerjoin(results, results.c.id == exports.c.result_id)
                    .outerjoin(jobs, jobs.c.id == exports.c.job_id)
                    .outerjoin(instances, instances.c.id == jobs.c.instance_id)
                )
                .where(exports.c.sop_instance_uid == sop_instance_uid)
                .limit(1)
            ).first()
        return dict(row._mapping) if row is not None else None

    def enqueue(self, item: ReceivedInstance, wait_s: float | None = None) -> bool:
        """Record an instance and its job in one transaction. False if the instance was already known.

        A skipped image gets its job too, closed at once as `skipped` with the rule and reason,
        so operators see every image the node acknowledged.
        """
        now = self.clock()
        try:
            with self._receipt(wait_s) as conn:
                instance_id = _new_id(
                    conn.execute(
                        insert(instances).values(
                            sop_instance_uid=item.sop_instance_uid,
                            sop_class_uid=item.sop_class_uid,
                            study_instance_uid=item.study_instance_uid,
                            calling_aet=item.calling_aet,
                            path=item.path,
                            received_at=now,
                            content_sha256=item.content_sha256,
                            accession_number=item.header.accession_number,
                            modality=item.header.modality,
                            study_description=item.header.study_description,
                            series_description=item.header.series_description,
                            transfer_syntax_uid=item.transfer_syntax_uid,
                            identity=item.identity,
                        )
                    )
                )
                conn.execute(
                    insert(jobs).values(
                        instance_id=instance_id,
                        study_instance_uid=item.study_instance_uid,
                        state=JobState.SKIPPED if item.skip else JobState.QUEUED,
                        rule=item.rule,
                        reason=item.reason,
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            if self.known_instance(item.sop_instance_uid, wait_s) is None:
                raise
            return False
        if not item.skip:
            self.notifier.notify("jobs")
        return True

    # -- worker side -----------------------------------------------------------------
    def _claimable(self, now: datetime):
        waiting = and_(jobs.c.state == JobState.QUEUED, or_(jobs.c.next_try_at.is_(None), jobs.c.next_try_at <= now))
        return or_(waiting, and_(jobs.c.state == JobState.RUNNING, jobs.c.lease_until < now))

    def claim(self, worker: str, lease_s: float, limit: int = 1, max_attempts: int | None = None) -> list[Job]:
        """Lease up to `limit` jobs; each claim counts an attempt.

        A job whose lease ran out was interrupted (its worker died or hung): with `max_attempts`,
        one that has had them all is failed instead of taken again, so an image that brings its
        worker down cannot do so forever.
        """
        now = self.clock()
        if max_attempts is not None:
            self._fail_interrupted(
                and_(jobs.c.state == JobState.RUNNING, jobs.c.lease_until < now, jobs.c.attempts >= max_attempts),
                max_attempts,
            )
        claimed: list[Job] = []
        with self.engine.connect() as conn:
            candidates = (
                conn.execute(select(jobs.c.id).where(self._claimable(now)).order_by(jobs.c.id).limit(limit * 4))
                .scalars()
                .all()
            )
        for job_id in candidates:
            if len(claimed) >= limit:
                break
            with self.engine.begin() as conn:
                won = conn.execute(
                    update(jobs)
                    .where(and_(jobs.c.id == job_id, self._claimable(now)))
                    .values(
                        state=JobState.RUNNING,
                        worker=worker,
                        lease_until=now + timedelta(seconds=lease_s),
                        attempts=jobs.c.attempts + 1,
                        updated_at=now,
                    )
                ).rowcount
                if won != 1:
                    continue  # another worker was faster
                row = conn.execute(
                    select(
                        jobs.c.id,
                        jobs.c.instance_id,
                        jobs.c.study_instance_uid,
                        jobs.c.attempts,
                        instances.c.sop_instance_uid,
                        instances.c.path,
                    )
                    .join(instances, instances.c.id == jobs.c.instance_id)
                    .where(jobs.c.id == job_id)
                ).one()
            claimed.append(
                Job(row.id, row.instance_id, row.study_instance_uid, row.sop_instance_uid, row.path, row.attempts)
            )
        return claimed

    def _fail_interrupted(self, where, max_attempts: int) -> list[int]:
        """Close interrupted jobs that have used up their attempts, saying so; returns their ids."""
        with self.engine.connect() as conn:
            spent = conn.execute(select(jobs.c.id, jobs.c.attempts).where(where)).all()
        failed = []
        for row in spent:
            with self.engine.begin() as conn:
                won = conn.execute(
                    update(jobs)
                    .where(and_(jobs.c.id == row.id, where))
                    .values(
                        state=JobState.FAILED,
                        error=interrupted_reason(row.attempts, max_attempts),
                        lease_until=None,
                        next_try_at=None,
                        updated_at=self.clock(),
                    )
                ).rowcount
            if won == 1:
                failed.append(row.id)
        return failed

    def requeue_orphans(self, host: str, is_alive: Callable[[int], bool], max_attempts: int | None = None) -> int:
        """Re-queue jobs held by dead worker processes of this host (worker names are HOST:PID).

        Lease expiry covers workers on other hosts; this makes a restart after a crash
        pick its interrupted work up at once instead of after the lease. The interrupted claim
        counted an attempt: with `max_attempts`, a job that has had them all is failed instead.
        Returns how many were re-queued.
        """
        with self.engine.connect() as conn:
            held = conn.execute(
                select(jobs.c.id, jobs.c.worker).where(
                    and_(jobs.c.state == JobState.RUNNING, jobs.c.worker.like(f"{host}:%"))
                )
            ).all()
        orphans = [
            row.id
            for row in held
            if row.worker.rpartition(":")[2].isdigit() and not is_alive(int(row.worker.rpartition(":")[2]))
        ]
        if not orphans:
            return 0
        if max_attempts is not None:
            self._fail_interrupted(
                and_(jobs.c.id.in_(orphans), jobs.c.state == JobState.RUNNING, jobs.c.attempts >= max_attempts),
                max_attempts,
            )
        with self.engine.begin() as conn:
            requeued = conn.execute(
                update(jobs)
                .where(and_(jobs.c.id.in_(orphans), jobs.c.state == JobState.RUNNING))
                .values(state=JobState.QUEUED, lease_until=None, updated_at=self.clock())
            ).rowcount
        if requeued:
            self.notifier.notify("jobs")
        return requeued

    def complete(
        self, job: Job, record: ResultRecord, items: list[ExportItem], destinations: Sequence[str] = ()
    ) -> bool:
        """Store the result of this job's image and its exports, and close the job, atomically.

        One export row per item and destination (one `local` row per item without destinations);
        an item that names its own destinations goes to those only.
        Returns False when the image already has a result (a second claim of the same job after a
        lease expired): the unique constraints on results.job_id and results.sop_instance_uid make
        an image reported at most once, even with racing workers.
        """
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                result_id = _new_id(
                    conn.execute(
                        insert(results).values(
                            job_id=job.id,
                            study_instance_uid=job.study_instance_uid,
                            sop_instance_uid=job.sop_instance_uid,
                            label=record.label,
                            p_abnormal=record.p_abnormal,
                            p_covid=record.p_covid,
                            models_disagree=record.models_disagree,
                            model=record.model,
                            trained=record.trained,
                            timings=record.timings,
                            created_at=now,
                        )
                    )
                )
                for item in items:
                    targets = tuple(destinations) if item.destinations is None else item.destinations
                    for destination in targets or (None,):
                        conn.execute(_new_export(item, destination, now, result_id=result_id))
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job.id)
                    .values(
                        state=JobState.DONE, error=None, lease_until=None, next_try_at=None, deferrals=0, updated_at=now
                    )
                )
        except IntegrityError:
            if self.result_for_instance(job.sop_instance_uid) is None:
                raise
            self._close(job, JobState.DONE, None)  # the earlier claim's result stands
            return False
        if destinations or any(item.destinations for item in items):
            self.notifier.notify("exports")
        return True

    def _close(self, job: Job, state: JobState, error: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id)
                .values(state=state, error=error, lease_until=None, updated_at=self.clock())
            )

    def fail(self, job: Job, error: str, max_attempts: int, permanent: bool = False) -> JobState:
        """Re-queue for another attempt, or mark failed when attempts are used up or retrying cannot help."""
        state = JobState.FAILED if permanent or job.attempts >= max_attempts else JobState.QUEUED
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id)
                .values(state=state, error=error[:2000], lease_until=None, next_try_at=None, updated_at=self.clock())
            )
        if state is JobState.QUEUED:
            self.notifier.notify("jobs")
        return state

    def not_analysable(
        self, job: Job, code: str, reason: str, items: Sequence[ExportItem] = (), error: str | None = None
    ) -> bool:
        """Close the job as `not_analysable`: decided, final, no result row (so no class anywhere).

        `code` names the check that decided (short, stable: a metric label), `reason` says why in words.
        A job that already has a result (an earlier claim's) keeps it: a decision never replaces an answer.
        `items`: the short "not analysable" report ([results] not_analysable_report), one export row
        per item and destination named by the job (no results row), in the same transaction; rows
        the job already has (an earlier decision, before `jobs retry`) stay as they are, so the
        report goes to each destination once. `error`: why a report that should exist was not made.
        Returns False when the job was not running (another claim closed it).
        """
        now = self.clock()
        queued = False
        with self.engine.begin() as conn:
            won = conn.execute(
                update(jobs)
                .where(and_(jobs.c.id == job.id, jobs.c.state == JobState.RUNNING))
                .values(
                    state=JobState.NOT_ANALYSABLE,
                    reason_code=code[:32],
                    reason=reason[:2000],
                    error=error[:2000] if error else None,
                    lease_until=None,
                    next_try_at=None,
                    updated_at=now,
                )
            ).rowcount
            if won != 1:
                return False
            have = {
                (r.kind, r.destination)
                for r in conn.execute(select(exports.c.kind, exports.c.destination).where(exports.c.job_id == job.id))
            }
            for item in items:
                for destination in (item.destinations or ()) or (None,):
                    if (item.kind, destination) in have:
                        continue
                    conn.execute(_new_export(item, destination, now, job_id=job.id))
                    queued = queued or destination is not None
        if queued:
            self.notifier.notify("exports")
        return True

    def defer(self, job: Job, error: str, backoff_s: Callable[[int], float]) -> float:
        """A resource failure (disk full, database, I/O): back to the queue after a back-off, never failed.

        The attempt is not counted against max_attempts (the image is fine, the machine was not);
        `backoff_s(n)` gives the wait after the n-th deferral in a row. Returns that wait.
        """
        now = self.clock()
        with self.engine.begin() as conn:
            n = conn.execute(select(jobs.c.deferrals).where(jobs.c.id == job.id)).scalar() or 0
            delay = backoff_s(n + 1)
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id)
                .values(
                    state=JobState.QUEUED,
                    error=error[:2000],
                    lease_until=None,
                    deferrals=n + 1,
                    attempts=jobs.c.attempts - 1,
                    next_try_at=now + timedelta(seconds=delay),
                    updated_at=now,
                )
            )
        return delay

    # -- housekeeping ------------------------------------------------------------------
    def purgeable_studies(self, received_before: datetime) -> list[str]:
        """Studies received before the cutoff whose every job is closed and every export settled."""
        open_job = exists().where(
            and_(jobs.c.study_instance_uid == instances.c.study_instance_uid, jobs.c.state.in_(OPEN_JOB_STATES))
        )
        unsent = exists().where(
            and_(
                exports.c.result_id == results.c.id,
                exports.c.state == ExportState.PENDING,
                results.c.study_instance_uid == instances.c.study_instance_uid,
            )
        )
        unsent_report = exists().where(  # a not-analysable image's report (no result row)
            and_(
                exports.c.job_id == jobs.c.id,
                exports.c.state == ExportState.PENDING,
                jobs.c.study_instance_uid == instances.c.study_instance_uid,
            )
        )
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(instances.c.study_instance_uid)
                    .where(
                        and_(
                            instances.c.received_at < received_before,
                            instances.c.path != PURGED,
                            not_(open_job),
                            not_(unsent),
                            not_(unsent_report),
                        )
                    )
                    .distinct()
                )
                .scalars()
                .all()
            )

    def instance_paths(self, study_instance_uid: str) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(instances.c.path).where(
                        and_(instances.c.study_instance_uid == study_instance_uid, instances.c.path != PURGED)
                    )
                )
                .scalars()
                .all()
            )

    def mark_purged(self, study_instance_uid: str) -> None:
        """Retention deleted the study's files; the rows stay as the audit trail."""
        with self.engine.begin() as conn:
            conn.execute(
                update(instances).where(instances.c.study_instance_uid == study_instance_uid).values(path=PURGED)
            )

    # -- reading -----------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            job_rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
            exp_rows = conn.execute(select(exports.c.state, func.count()).group_by(exports.c.state)).all()
        out = {f"jobs_{s}": n for s, n in job_rows}
        out.update({f"exports_{s}": n for s, n in exp_rows})
        return out

    def _result_dicts(self, where) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(results).where(where).order_by(results.c.id)).all()
            out = []
            for row in rows:
                item = dict(row._mapping)
                item["created_at"] = _aware(item["created_at"])
                item["exports"] = [
                    dict(r._mapping)
                    for r in conn.execute(select(exports).where(exports.c.result_id == row.id).order_by(exports.c.id))
                ]
                out.append(item)
        return out

    def result_for_instance(self, sop_instance_uid: str) -> dict | None:
        """The result computed from this image, with its exports, or None."""
        found = self._result_dicts(results.c.sop_instance_uid == sop_instance_uid)
        return found[0] if found else None

    def results_for_study(self, study_instance_uid: str) -> list[dict]:
        """Every result of the study (one per analysed image), oldest first."""
        return self._result_dicts(results.c.study_instance_uid == study_instance_uid)

    def job_for_instance(self, sop_instance_uid: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(jobs)
                .join(instances, instances.c.id == jobs.c.instance_id)
                .where(instances.c.sop_instance_uid == sop_instance_uid)
            ).first()
        return dict(row._mapping) if row is not None else None

    # -- operator actions (cxr-node jobs retry) ----------------------
    def retry_job(self, job_id: int) -> JobState | None:
        """Queue a failed or not analysable job again with its attempts reset (the operator fixed
        the cause, or changed the [image_check] limits).

        Only those two states change; returns the state the job had (None: no such job).
        """
        now = self.clock()
        retryable = (JobState.FAILED, JobState.NOT_ANALYSABLE)
        with self.engine.begin() as conn:
            state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar()
            if state not in retryable:
                return JobState(state) if state is not None else None
            conn.execute(
                update(jobs)
                .where(and_(jobs.c.id == job_id, jobs.c.state.in_(retryable)))
                .values(
                    state=JobState.QUEUED,
                    attempts=0,
                    deferrals=0,
                    error=None,
                    # the not-analysable verdict goes; a skip's reason never reaches here
                    reason=None,
                    reason_code=None,
                    lease_until=None,
                    next_try_at=None,
                    worker=None,
                    updated_at=now,
                )
            )
        self.notifier.notify("jobs")
        return JobState(state)
