"""Read-only views of the queue for operators: the admin commands, the status page and /metrics.

Nothing here writes; changes go through `JobQueue` (cxr_node/queue/jobs.py).
Timestamps come back timezone-aware (UTC) on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, desc, func, or_, select, text

from cxr_node.queue.states import ExportState, JobState
from cxr_node.queue.tables import exports, instances, jobs, results


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes for timezone=True columns; they were stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def one_line(message: str | None, limit: int = 240, drop_prefix: str = "") -> str:
    """A stored error as one line: whitespace (newlines too) collapsed, a known prefix such as the
    image's own path dropped (shown elsewhere), cut at `limit` characters."""
    if not message:
        return ""
    text = message.strip()
    if drop_prefix and text.startswith(drop_prefix + ": "):
        text = text[len(drop_prefix) + 2 :]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class JobRow:
    id: int
    state: str
    sop_instance_uid: str
    study_instance_uid: str
    calling_aet: str
    path: str
    received_at: datetime | None
    updated_at: datetime | None
    attempts: int
    worker: str | None
    error: str  # one line: why it failed (or the last retryable error)
    rule: str | None
    reason: str | None  # why it was skipped or not analysable
    reason_code: str | None = None  # not_analysable: the check that decided
    accession_number: str | None = None
    modality: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    label: str | None = None
    p_abnormal: float | None = None
    p_covid: float | None = None
    models_disagree: bool | None = None
    model: str | None = None
    trained: bool | None = None
    timings: dict[str, float] = field(default_factory=dict)
    result_id: int | None = None
    result_at: datetime | None = None

    @property
    def described(self) -> str:
        """ "RX TORAX PORTATIL / AP": study and series description, for telling images apart."""
        return " / ".join(d for d in (self.study_description, self.series_description) if d)

    @property
    def why(self) -> str:
        """The one line an operator wants for this job's state."""
        if self.state == JobState.SKIPPED:
            return one_line(" ".join(x for x in (f"[{self.rule}]" if self.rule else "", self.reason or "") if x))
        if self.state == JobState.NOT_ANALYSABLE:
            tag = f"[{self.reason_code}]" if self.reason_code else ""
            return one_line(" ".join(x for x in ("not analysable", tag, self.reason or "") if x))
        return self.error

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("received_at", "updated_at", "result_at"):
            out[key] = out[key].isoformat() if out[key] else None
        out["why"] = self.why
        return out


@dataclass
class ExportRow:
    id: int
    job_id: int
    result_id: int | None  # None: the report of a not-analysable image (no result, no class)
    kind: str
    sop_instance_uid: str
    destination: str | None
    state: str
    attempts: int
    next_try_at: datetime | None
    sent_at: datetime | None
    last_error: str
    path: str

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("next_try_at", "sent_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


@dataclass
class DestinationRow:
    name: str
    pending: int
    failed: int
    sent: int
    last_success: datetime | None
    last_error: str

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["last_success"] = self.last_success.isoformat() if self.last_success else None
        return out


_JOB_COLUMNS = (
    jobs.c.id,
    jobs.c.state,
    jobs.c.attempts,
    jobs.c.worker,
    jobs.c.error,
    jobs.c.rule,
    jobs.c.reason,
    jobs.c.reason_code,
    jobs.c.updated_at,
    instances.c.sop_instance_uid,
    instances.c.study_instance_uid,
    instances.c.calling_aet,
    instances.c.path,
    instances.c.received_at,
    instances.c.accession_number,
    instances.c.modality,
    instances.c.study_description,
    instances.c.series_description,
    results.c.id.label("result_id"),
    results.c.label,
    results.c.p_abnormal,
    results.c.p_covid,
    results.c.models_disagree,
    results.c.model,
    results.c.trained,
    results.c.timings,
    results.c.created_at.label("result_at"),
)


def _job_row(r) -> JobRow:
    return JobRow(
        id=r.id,
        state=r.state,
        sop_instance_uid=r.sop_instance_uid,
        study_instance_uid=r.study_instance_uid,
        calling_aet=r.calling_aet,
        path=r.path,
        received_at=_aware(r.received_at),
        updated_at=_aware(r.updated_at),
        attempts=r.attempts,
        worker=r.worker,
        error=one_line(r.error, drop_prefix=r.path),
        rule=r.rule,
        reason=r.reason,
        reason_code=r.reason_code,
        accession_number=r.accession_number,
        modality=r.modality,
        study_description=r.study_description,
        series_description=r.series_description,
        label=r.label,
        p_abnormal=r.p_abnormal,
        p_covid=r.p_covid,
        models_disagree=r.models_disagree,
        model=r.model,
        trained=r.trained,
        timings=dict(r.timings or {}),
        result_id=r.result_id,
        result_at=_aware(r.result_at),
    )


class Reports:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _jobs_query(self):
        return select(*_JOB_COLUMNS).select_from(
            jobs.join(instances, instances.c.id == jobs.c.instance_id).outerjoin(results, results.c.job_id == jobs.c.id)
        )

    # -- jobs ------------------------------------------------------------------------
    def list_jobs(self, states: Iterable[str] = (), since: datetime | None = None, limit: int = 50) -> list[JobRow]:
        """Newest first."""
        query = self._jobs_query()
        states = [str(s) for s in states]
        if states:
            query = query.where(jobs.c.state.in_(states))
        if since is not None:
            query = query.where(jobs.c.updated_at >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(desc(jobs.c.id)).limit(limit)).all()
        return [_job_row(r) for r in rows]

    def find_job(self, key: str) -> JobRow | None:
        """By job id (digits) or by the image's SOP Instance UID."""
        query = self._jobs_query()
        if key.isdigit():
            query = query.where(or_(jobs.c.id == int(key), instances.c.sop_instance_uid == key))
        else:
            query = query.where(instances.c.sop_instance_uid == key)
        with self.engine.connect() as conn:
            row = conn.execute(query.order_by(jobs.c.id).limit(1)).first()
        return _job_row(row) if row is not None else None

    def failed_job_ids(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(select(jobs.c.id).where(jobs.c.state == JobState.FAILED).order_by(jobs.c.id)).scalars()
            )

    # -- exports ---------------------------------------------------------------------
    def list_exports(self, states: Iterable[str] = (), job_id: int | None = None, limit: int = 50) -> list[ExportRow]:
        # A not-analysable image's report has no result row: its rows name the job themselves.
        job = func.coalesce(results.c.job_id, exports.c.job_id)
        query = select(
            exports.c.id,
            job.label("job_id"),
            exports.c.result_id,
            exports.c.kind,
            exports.c.sop_instance_uid,
            exports.c.destination,
            exports.c.state,
            exports.c.attempts,
            exports.c.next_try_at,
            exports.c.sent_at,
            exports.c.last_error,
            exports.c.path,
        ).select_from(exports.outerjoin(results, results.c.id == exports.c.result_id))
        states = [str(s) for s in states]
        if states:
            query = query.where(exports.c.state.in_(states))
        if job_id is not None:
            query = query.where(job == job_id).order_by(exports.c.id)
        else:
            query = query.order_by(desc(exports.c.id))
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit)).all()
        return [
            ExportRow(
                r.id,
                r.job_id,
                r.result_id,
                r.kind,
                r.sop_instance_uid,
                r.destination,
                r.state,
                r.attempts,
                _aware(r.next_try_at),
                _aware(r.sent_at),
                one_line(r.last_error),
                r.path,
            )
            for r in rows
        ]

    def find_export(self, export_id: int) -> ExportRow | None:
        with self.engine.connect() as conn:
            job_id = conn.execute(
                select(func.coalesce(results.c.job_id, exports.c.job_id))
                .select_from(exports.outerjoin(results, results.c.id == exports.c.result_id))
                .where(exports.c.id == export_id)
            ).scalar()
        if job_id is None:
            return None
        return next((e for e in self.list_exports(job_id=job_id) if e.id == export_id), None)

    def destinations(self) -> list[DestinationRow]:
        """Per destination: pending and failed counts, last success, the newest error still standing."""
        with self.engine.connect() as conn:
            counts = conn.execute(
                select(exports.c.destination, exports.c.state, func.count(), func.max(exports.c.sent_at))
                .where(exports.c.destination.is_not(None))
                .group_by(exports.c.destination, exports.c.state)
            ).all()
            errors = conn.execute(
                select(exports.c.destination, exports.c.last_error)
                .where(
                    and_(
                        exports.c.destination.is_not(None),
                        exports.c.last_error.is_not(None),
                        exports.c.state.in_([ExportState.PENDING, ExportState.FAILED]),
                    )
                )
                .order_by(desc(exports.c.id))
            ).all()
        out: dict[str, DestinationRow] = {}
        for dest, state, n, last_sent in counts:
            row = out.setdefault(dest, DestinationRow(dest, 0, 0, 0, None, ""))
            if state == ExportState.PENDING:
                row.pending = n
            elif state == ExportState.FAILED:
                row.failed = n
            elif state == ExportState.SENT:
                row.sent = n
                row.last_success = _aware(last_sent)
        for dest, error in errors:
            if dest in out and not out[dest].last_error:
                out[dest].last_error = one_line(error)
        return sorted(out.values(), key=lambda d: d.name)

    # -- totals (for /metrics and the page) -------------------------------------------
    def depth(self) -> dict[str, dict[str, int]]:
        """Jobs and exports per state, every known state present (0 when none)."""
        with self.engine.connect() as conn:
            job_rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
            exp_rows = conn.execute(select(exports.c.state, func.count()).group_by(exports.c.state)).all()
        job_counts = {s.value: 0 for s in JobState} | {s: n for s, n in job_rows}
        exp_counts = {s.value: 0 for s in ExportState} | {s: n for s, n in exp_rows}
        return {"jobs": job_counts, "exports": exp_counts}

    def totals(self) -> dict[str, int]:
        """Monotonic totals (rows are kept as the audit trail, so these only grow)."""
        with self.engine.connect() as conn:
            received = conn.execute(select(func.count()).select_from(instances)).scalar_one()
            analysed = conn.execute(select(func.count()).select_from(results)).scalar_one()
        depth = self.depth()
        return {
            "received": received,
            "analysed": analysed,
            "skipped": depth["jobs"][JobState.SKIPPED],
            "failed": depth["jobs"][JobState.FAILED],
            "not_analysable": depth["jobs"][JobState.NOT_ANALYSABLE],
            "exported": depth["exports"][ExportState.SENT],
            "export_failed": depth["exports"][ExportState.FAILED],
        }

    def not_analysable_by_code(self) -> dict[str, int]:
        """not_analysable jobs per check code (few codes: a metric's label)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.reason_code, func.count())
                .where(jobs.c.state == JobState.NOT_ANALYSABLE)
                .group_by(jobs.c.reason_code)
            ).all()
        return {code or "unknown": n for code, n in rows}

    def skipped_by_rule(self) -> dict[str, int]:
        """Skipped images per deciding selection rule (monotonic: rows are kept)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.rule, func.count()).where(jobs.c.state == JobState.SKIPPED).group_by(jobs.c.rule)
            ).all()
        return {rule or "": n for rule, n in rows}

    def exported_by_destination(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(exports.c.destination, func.count())
                .where(exports.c.state == ExportState.SENT)
                .group_by(exports.c.destination)
            ).all()
        return {d or "": n for d, n in rows}

    def max_result_id(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.coalesce(func.max(results.c.id), 0))).scalar_one()

    def results_after(
        self, result_id: int, limit: int = 1000
    ) -> list[tuple[int, dict, datetime | None, datetime | None]]:
        """(id, stage seconds, received_at, result created_at) of results newer than `result_id`, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(results.c.id, results.c.timings, instances.c.received_at, results.c.created_at)
                .select_from(
                    results.join(jobs, jobs.c.id == results.c.job_id).join(
                        instances, instances.c.id == jobs.c.instance_id
                    )
                )
                .where(results.c.id > result_id)
                .order_by(results.c.id)
                .limit(limit)
            ).all()
        return [(r.id, dict(r.timings or {}), _aware(r.received_at), _aware(r.created_at)) for r in rows]

    def latest_model(self) -> str | None:
        """The model label of the newest result (what a worker elsewhere is running)."""
        with self.engine.connect() as conn:
            return conn.execute(select(results.c.model).order_by(desc(results.c.id)).limit(1)).scalar()

    def ping(self) -> None:
        """Raise if the database cannot answer."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


__all__ = ["DestinationRow", "ExportRow", "JobRow", "Reports", "one_line"]
