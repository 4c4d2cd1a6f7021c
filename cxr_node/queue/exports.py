"""Export rows: the result objects (SC, SR) and notices on their way to destinations.

The worker creates them with its result, in the same transaction (JobQueue.complete); from then
on the dispatcher reads what is due and records each answer here (sent, retry later, failed for
good), and an operator may send one again (`cxr-node exports resend`). Like JobQueue, nothing
here reads the wall clock directly: `clock` is injected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, case, exists, func, not_, or_, select, update

from cxr_node.events import Notifier
from cxr_node.queue.jobs import Clock, ResultRecord, _aware, utc_now
from cxr_node.queue.states import ExportKind, ExportState
from cxr_node.queue.tables import exports, results


@dataclass(frozen=True)
class Export:
    id: int
    kind: ExportKind
    path: str
    sop_instance_uid: str
    destination: str
    attempts: int
    last_error: str | None = None
    created_at: datetime | None = None  # when the result was made: the clock of dispatcher.give_up_after_s
    # SR only: the SC of the same result failed at this destination, so the SR goes without it.
    illustration_failed: bool = False
    result: ResultRecord | None = None  # the result the object belongs to (notices are made from it)


class ExportQueue:
    def __init__(self, engine: Engine, clock: Clock = utc_now, notifier: Notifier | None = None) -> None:
        self.engine = engine
        self.clock = clock
        # Wakes the dispatcher ("exports") when a row is due again.
        self.notifier = notifier or Notifier()

    def due(self, destination: str | None = None, limit: int = 16) -> list[Export]:
        """Pending rows whose time has come, for one destination (None: all), SC before SR.

        An SR is due only when its SC at the same destination has reached an end (sent or
        failed): the SR references the SC, and if the SC failed the SR must go without it.
        """
        now = self.clock()
        sc = exports.alias("sc")
        same_sc = and_(
            sc.c.result_id == exports.c.result_id, sc.c.kind == ExportKind.SC, sc.c.destination == exports.c.destination
        )
        sc_open = exists().where(and_(same_sc, sc.c.state == ExportState.PENDING))
        sc_failed = exists().where(and_(same_sc, sc.c.state == ExportState.FAILED))
        where = [
            exports.c.state == ExportState.PENDING,
            exports.c.next_try_at <= now,
            or_(exports.c.kind != ExportKind.SR, not_(sc_open)),
        ]
        if destination is not None:
            where.append(exports.c.destination == destination)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    exports.c.id,
                    exports.c.kind,
                    exports.c.path,
                    exports.c.sop_instance_uid,
                    exports.c.destination,
                    exports.c.attempts,
                    exports.c.last_error,
                    exports.c.result_id,
                    func.coalesce(results.c.created_at, exports.c.created_at).label("created_at"),
                    results.c.label,
                    results.c.p_abnormal,
                    results.c.p_covid,
                    results.c.models_disagree,
                    results.c.model,
                    results.c.trained,
                    sc_failed.label("illustration_failed"),
                )
                # A not-analysable image's report has no result row (no class): an outer join.
                .outerjoin(results, results.c.id == exports.c.result_id)
                .where(and_(*where))
                .order_by(case((exports.c.kind == ExportKind.SC, 0), else_=1), exports.c.id)
                .limit(limit)
            ).all()
        return [
            Export(
                r.id,
                ExportKind(r.kind),
                r.path,
                r.sop_instance_uid,
                r.destination,
                r.attempts,
                r.last_error,
                _aware(r.created_at),
                bool(r.illustration_failed) and r.kind == ExportKind.SR,
                None
                if r.result_id is None
                else ResultRecord(r.label, r.p_abnormal, r.p_covid, bool(r.models_disagree), r.model, bool(r.trained)),
            )
            for r in rows
        ]

    def sent(self, export: Export, sop_instance_uid: str | None = None, path: str | None = None) -> None:
        """Sent. When another object went in place of the file (the report without the illustration,
        the Comprehensive SR form), its UID and path replace the row's: the row says what the PACS holds."""
        now = self.clock()
        values = {"state": ExportState.SENT, "sent_at": now, "attempts": exports.c.attempts + 1, "last_error": None}
        if sop_instance_uid is not None:
            values["sop_instance_uid"] = sop_instance_uid
        if path is not None:
            values["path"] = path
        with self.engine.begin() as conn:
            conn.execute(update(exports).where(exports.c.id == export.id).values(**values))

    def retry(self, export: Export, error: str, delay_s: float) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                update(exports)
                .where(exports.c.id == export.id)
                .values(
                    attempts=exports.c.attempts + 1,
                    last_error=error[:2000],
                    next_try_at=now + timedelta(seconds=delay_s),
                )
            )

    def pending_destinations(self) -> dict[str, int]:
        """Destination name -> pending rows, for rows that name any destination."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(exports.c.destination, func.count())
                .where(and_(exports.c.state == ExportState.PENDING, exports.c.destination.is_not(None)))
                .group_by(exports.c.destination)
            ).all()
        return {name: n for name, n in found}

    def failed(self, export: Export, reason: str) -> None:
        """Given up (refused for good, or attempts / time used up); `reason` says why, for operators."""
        with self.engine.begin() as conn:
            conn.execute(
                update(exports)
                .where(and_(exports.c.id == export.id, exports.c.state == ExportState.PENDING))
                .values(
                    state=ExportState.FAILED,
                    attempts=exports.c.attempts + 1,
                    last_error=reason[:2000],
                )
            )

    def resend(self, export_id: int) -> ExportState | None:
        """Send a sent or failed export again (same file, same SOP Instance UID) at once.

        Returns the state the row had (None: no such row); pending and local rows do not change.
        """
        now = self.clock()
        with self.engine.begin() as conn:
            state = conn.execute(select(exports.c.state).where(exports.c.id == export_id)).scalar()
            if state not in (ExportState.SENT, ExportState.FAILED):
                return ExportState(state) if state is not None else None
            conn.execute(
                update(exports)
                .where(exports.c.id == export_id)
                .values(
                    state=ExportState.PENDING,
                    attempts=0,
                    next_try_at=now,
                    last_error=None,
                    sent_at=None,
                )
            )
        self.notifier.notify("exports")
        return ExportState(state)
