"""Dispatcher: sends pending result objects to every destination, retrying with back-off until an
end: sent, refused for good, or attempts / time used up (then `failed`, with the last real reason).

Each destination has its own loop thread, so one that hangs until its timeout or is down never
holds back another; each export row (one object, one destination) has its own retry state.
The queue hands out an SR only once its SC has reached an end at the same destination: if the
SC failed there, the SR goes in the form that does not reference it (and says so), so no PACS
holds a reference to an object it never received.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

from pydicom import Dataset

from cxr_node import audit
from cxr_node.destinations.base import (
    Delivery,
    DestinationUnavailable,
    ExportDestination,
    Outgoing,
    Verdict,
)
from cxr_node.destinations.objects import with_file_meta
from cxr_node.polling import PollingLoop
from cxr_node.queue.exports import Export, ExportQueue
from cxr_node.storage import uid_key, write_durably

log = logging.getLogger(__name__)

REFUSED = "refused"  # last_error of a destination's own refusal starts so; transport failures do not
LATER = "; later: "


@dataclass(frozen=True)
class ExportPolicy:
    retry_delays_s: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)  # the last repeats
    max_attempts: int = 100  # per export row; 0 = no limit
    give_up_after_s: float = 172800.0  # from the result's creation; 0 = no limit

    def delay(self, attempts: int) -> float:
        return self.retry_delays_s[min(max(attempts - 1, 0), len(self.retry_delays_s) - 1)]

    def end(self, attempts: int, age_s: float) -> str:
        """Why to stop after `attempts` attempts at `age_s` seconds, or "" to try again."""
        if self.max_attempts and attempts >= self.max_attempts:
            return f"gave up after {attempts} attempts"
        if self.give_up_after_s and age_s >= self.give_up_after_s:
            return f"gave up after {age_s / 3600:.1f} h ({attempts} attempts)"
        return ""


def real_reason(previous: str | None, delivery: Delivery, kind: str) -> str:
    """The reason to record. A destination's own refusal stays first when a later attempt fails
    only in transport: "association aborted" says less than the "0x0122 ..." it follows."""
    if delivery.from_peer:
        return f"{REFUSED} {kind.upper()}: {delivery.reason}"
    if previous and previous.startswith(REFUSED):
        return previous.split(LATER)[0] + LATER + delivery.reason
    return delivery.reason


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    with_file_meta(ds).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Dispatcher:
    def __init__(
        self,
        queue: ExportQueue,
        destinations: Mapping[str, ExportDestination],
        policy: ExportPolicy = ExportPolicy(),
        poll_interval_s: float = 1.0,
        batch_size: int = 16,
    ) -> None:
        self.queue = queue
        self.destinations = dict(destinations)
        self.policy = policy
        self.batch_size = batch_size
        self._loops = {
            name: PollingLoop(f"cxr-dispatch-{name}", partial(self.run_destination, name), poll_interval_s)
            for name in self.destinations
        }

    # -- one destination ----------------------------------------------------------------
    def run_destination(self, name: str) -> int:
        """Send what is due to one destination; returns how many export rows were tried."""
        destination = self.destinations[name]
        due = self.queue.due(name, self.batch_size)
        if not due:
            return 0
        objects = [
            Outgoing(
                e.kind,
                e.path,
                e.sop_instance_uid,
                omit_illustration=e.illustration_failed,
                result=e.result,
                result_created_at=e.created_at,
            )
            for e in due
        ]
        try:
            deliveries = destination.send(objects)
        except DestinationUnavailable as exc:
            log.warning("destination %s: %s", destination, exc)
            deliveries = [Delivery(Verdict.RETRY, str(exc)) for _ in due]
        except Exception as exc:  # a bug or an unforeseen library error: retried like a transport failure
            log.exception("destination %s: sending failed", destination)
            deliveries = [Delivery(Verdict.RETRY, f"{type(exc).__name__}: {exc}") for _ in due]
        for export, delivery in zip(due, deliveries, strict=True):
            self._record(destination, export, delivery)
        return len(due)

    def _record(self, destination: ExportDestination, export: Export, delivery: Delivery) -> None:
        if delivery.status is not None:
            audit.result_sent(
                export.kind, delivery.sop_instance_uid or export.sop_instance_uid, destination.name, delivery.status
            )
        elif delivery.from_peer:  # a notice's answer: an HL7 ACK or an HTTP status, not a DICOM status
            accepted = delivery.verdict == Verdict.STORED
            audit.notice_sent(
                export.sop_instance_uid, destination.name, delivery.note if accepted else delivery.reason, accepted
            )
        if delivery.verdict == Verdict.STORED:
            self._sent(destination, export, delivery)
            return
        attempts = export.attempts + 1
        reason = real_reason(export.last_error, delivery, export.kind)
        end = "" if delivery.verdict == Verdict.REFUSED else self.policy.end(attempts, self._age_s(export))
        if delivery.verdict == Verdict.REFUSED or end:
            final = reason if delivery.verdict == Verdict.REFUSED else f"{reason} ({end})"
            log.error(
                "%s %s to %s failed for good: %s", export.kind.upper(), export.sop_instance_uid, destination, final
            )
            self.queue.failed(export, final)
        else:
            log.warning(
                "%s %s to %s not sent (attempt %d): %s",
                export.kind.upper(),
                export.sop_instance_uid,
                destination,
                attempts,
                reason,
            )
            self.queue.retry(export, reason, self.policy.delay(attempts))

    def _sent(self, destination: ExportDestination, export: Export, delivery: Delivery) -> None:
        uid, path = export.sop_instance_uid, export.path
        if delivery.sent is not None:
            # Another object went (report without the illustration, Comprehensive SR form): keep
            # exactly that object beside the original, and record its UID and path.
            uid = str(delivery.sent.SOPInstanceUID)
            path = str(write_durably(Path(export.path).parent / f"sent-{uid_key(uid)}.dcm", _encode(delivery.sent)))
        self.queue.sent(export, uid, path)
        how = f" {delivery.note}" if delivery.note else ""
        variant = " (without the illustration)" if export.illustration_failed else ""
        log.info("sent %s %s%s%s to %s", export.kind.upper(), uid, variant, how, destination)

    def _age_s(self, export: Export) -> float:
        created: datetime | None = export.created_at
        return (self.queue.clock() - created).total_seconds() if created is not None else 0.0

    # -- all destinations ---------------------------------------------------------------
    def run_once(self) -> int:
        """One round for every destination at once (threads), so a slow one delays no other."""
        counts: dict[str, int] = {}

        def one(name: str) -> None:
            try:
                counts[name] = self.run_destination(name)
            except Exception:
                log.exception("dispatcher: destination %s", name)
                counts[name] = 0

        threads = [
            threading.Thread(target=one, args=(name,), name=f"cxr-dispatch-once-{name}") for name in self.destinations
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts.values())

    def wake(self) -> None:
        for loop in self._loops.values():
            loop.wake()

    def start(self) -> None:
        # Rows for a destination no longer configured wait untouched (nothing is dropped); say so.
        for name, n in self.queue.pending_destinations().items():
            if name not in self.destinations:
                log.warning("%d pending export(s) name destination %r, which is not configured: they wait", n, name)
        for loop in self._loops.values():
            loop.start()

    def stop(self) -> None:
        for loop in self._loops.values():
            loop.stop()
