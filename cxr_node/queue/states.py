"""Job and export states. StrEnum: the database stores the plain value, code compares members."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"  # waiting for a worker (or for its back-off after a resource failure)
    RUNNING = "running"  # claimed under a lease
    DONE = "done"  # result recorded, exports created
    FAILED = "failed"  # the image itself cannot be decoded, or attempts used up
    # Decoded, but it holds too little for an answer (blank, a sliver, no contrast, out of domain):
    # final, no class anywhere; jobs.reason_code / jobs.reason say which check and why.
    NOT_ANALYSABLE = "not_analysable"
    SKIPPED = "skipped"  # a selection rule decided not to analyse it (stored, acknowledged, no result)


OPEN_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


class ExportState(StrEnum):
    PENDING = "pending"  # to be sent (now or at next_try_at)
    SENT = "sent"  # the destination accepted it
    LOCAL = "local"  # no destination configured: kept on disk only
    FAILED = "failed"  # given up: permanent refusal or attempts/time used up; last_error says why


class ExportKind(StrEnum):
    """What an export row sends (exports.kind)."""

    SC = "sc"  # the Grad-CAM Secondary Capture
    SR = "sr"  # the structured report (references the SC unless sent without it)
    NOTICE = "notice"  # a notification of the result announced by the SR (HL7 ORU^R01, FHIR DiagnosticReport)


__all__ = ["ExportKind", "ExportState", "JobState", "OPEN_JOB_STATES"]
