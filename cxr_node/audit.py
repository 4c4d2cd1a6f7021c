"""Audit lines: one per DICOM association received and one per result object sent.

Logged at INFO on the `cxr_node.audit` logger with identifiers as `extra=` fields (JSON keys
under `--log-format json`). They name AE titles, addresses and UIDs, never patient data.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from pynetdicom import evt

from cxr_node.dicom.status import status_ok
from cxr_node.queue.states import ExportKind

audit_log = logging.getLogger("cxr_node.audit")


@dataclass
class _Tally:
    calling_aet: str
    called_aet: str
    address: str
    stored: int = 0
    refused: int = 0
    echoes: int = 0
    outcome: str = "open"
    comments: list[str] = field(default_factory=list)
    # What became of the acknowledged instances, as the receiver noted it: queued, already
    # received, not analysed, discarded (acknowledged, nothing kept).
    kinds: dict[str, int] = field(default_factory=dict)


class AssociationAudit:
    """pynetdicom notification handlers that log one line when an incoming association ends.

    Only notification events are used (several handlers may share them), so the receiver's own
    C-STORE handler is untouched: outcomes are read from the C-STORE responses it sent.
    """

    def __init__(self) -> None:
        self._open: dict[int, _Tally] = {}
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple]:
        return [
            (evt.EVT_ACCEPTED, self._accepted),
            (evt.EVT_REJECTED, self._rejected),
            (evt.EVT_DIMSE_SENT, self._dimse_sent),
            (evt.EVT_RELEASED, lambda e: self._outcome(e, "released")),
            (evt.EVT_ABORTED, lambda e: self._outcome(e, "aborted")),
            (evt.EVT_CONN_CLOSE, self._closed),
        ]

    def _tally(self, event) -> _Tally:
        key = id(event.assoc)
        with self._lock:
            tally = self._open.get(key)
            if tally is None:
                req, acc = event.assoc.requestor, event.assoc.acceptor
                tally = self._open[key] = _Tally(
                    str(req.ae_title).strip(), str(acc.ae_title).strip(), f"{req.address}:{req.port}"
                )
            return tally

    def note(self, event, kind: str) -> None:
        """The receiver's word on an instance it acknowledged in this association."""
        tally = self._tally(event)
        with self._lock:
            tally.kinds[kind] = tally.kinds.get(kind, 0) + 1

    def _accepted(self, event) -> None:
        self._tally(event).outcome = "accepted"

    def _rejected(self, event) -> None:
        self._tally(event).outcome = "rejected"

    def _dimse_sent(self, event) -> None:
        msg = event.message
        name = type(msg).__name__
        if name not in ("C_STORE_RSP", "C_ECHO_RSP"):
            return
        tally = self._tally(event)
        if name == "C_ECHO_RSP":
            tally.echoes += 1
            return
        status = int(msg.command_set.Status)
        if status_ok(status):
            tally.stored += 1
        else:
            tally.refused += 1
            comment = str(msg.command_set.get("ErrorComment", "")) or f"0x{status:04X}"
            if comment not in tally.comments:
                tally.comments.append(f"0x{status:04X} {comment}".strip())

    def _outcome(self, event, outcome: str) -> None:
        self._tally(event).outcome = outcome

    def _closed(self, event) -> None:
        with self._lock:
            tally = self._open.pop(id(event.assoc), None)
        if tally is None:  # connection closed before any association was negotiated
            return
        refusals = f"; refused: {' | '.join(tally.comments[:3])}" if tally.comments else ""
        discarded = tally.kinds.get("discarded", 0)
        stored = tally.stored - discarded  # acknowledged and kept
        kept = [f"{n} {kind}" for kind, n in sorted(tally.kinds.items()) if kind != "discarded"]
        audit_log.info(
            "association from %s at %s to %s %s: %d instance(s) stored%s, %s%d refused, %d echo(es)%s",
            tally.calling_aet,
            tally.address,
            tally.called_aet,
            tally.outcome,
            stored,
            f" ({', '.join(kept)})" if kept else "",
            f"{discarded} discarded (not analysed), " if discarded else "",
            tally.refused,
            tally.echoes,
            refusals,
            extra={
                "event": "association",
                "calling_aet": tally.calling_aet,
                "called_aet": tally.called_aet,
                "address": tally.address,
                "outcome": tally.outcome,
                "stored": stored,
                "refused": tally.refused,
                "echoes": tally.echoes,
                **{kind.replace(" ", "_"): n for kind, n in tally.kinds.items()},
            },
        )


def result_sent(
    kind: ExportKind,
    sop_instance_uid: str,
    destination: str,
    status: int,
    job_id: int | None = None,
    study_instance_uid: str | None = None,
) -> None:
    """One line per result object handed to a destination, with the status it answered."""
    ok = status_ok(status)
    audit_log.info(
        "result %s %s to %s: status 0x%04X (%s)",
        kind.upper(),
        sop_instance_uid,
        destination,
        status,
        "stored" if ok else "refused",
        extra={
            "event": "result_sent",
            "kind": kind,
            "sop_instance_uid": sop_instance_uid,
            "destination": destination,
            "status": status,
            "job_id": job_id,
            "study_instance_uid": study_instance_uid,
        },
    )


def notice_sent(sop_instance_uid: str, destination: str, answer: str, accepted: bool) -> None:
    """One line per result notice (HL7 ORU, FHIR DiagnosticReport) a destination answered."""
    audit_log.info(
        "result NOTICE of %s to %s: %s (%s)",
        sop_instance_uid,
        destination,
        answer,
        "accepted" if accepted else "refused",
        extra={
            "event": "notice_sent",
            "kind": ExportKind.NOTICE,
            "sop_instance_uid": sop_instance_uid,
            "destination": destination,
            "answer": answer,
        },
    )
