"""Worker: claims queued images, analyses them in batches, writes SR + SC per image, records the result.

Each result belongs to exactly one image: the job's own file is decoded, analysed and written
under that image's result directory, and the row records that image's SOP Instance UID.
Resource failures (disk full, I/O, database) put the job back with a back-off and are never
final; an image that cannot be decoded fails at once; an image that holds too little for an
answer (NotAnalysable) is closed at once as `not_analysable` with its reason, and gets no SR
or SC with a class (with `not_analysable_report`, a short SR saying there is no result and
why, cxr_node.results.no_result_sr); other errors fail after max_attempts.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from pydicom import dcmread
from sqlalchemy.exc import OperationalError

from cxr_node.analysis.engine import Analyzer
from cxr_node.decoding.information import DEFAULT_LIMITS, InformationLimits
from cxr_node.destinations.routing import Route, plan, plan_no_result
from cxr_node.polling import PollingLoop
from cxr_node.processing import ANALYSIS_FAILED, Decode, Outcome, OutcomeKind, classify, one_line, process_batch
from cxr_node.queue.jobs import ExportItem, Job, JobQueue, ResultRecord
from cxr_node.queue.states import ExportKind
from cxr_node.results.identity import ModelIdentity, NodeIdentity
from cxr_node.results.no_result_sr import write_no_result_report
from cxr_node.results.sc_size import SC_MAX_SIDE
from cxr_node.selection.vocabulary import Vocabulary
from cxr_node.storage import StorageLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    lease_s: float = 600.0
    max_attempts: int = 3
    batch_size: int = 4
    poll_interval_s: float = 1.0
    cam_panels: str = "per-model"
    sc_max_side: int = SC_MAX_SIDE
    time_zone: str = ""  # IANA name for results of sources that state no offset; "" = the server's
    # Where each result's objects go (destinations.routing; a plain name takes SR and SC of every
    # class); empty = keep results on disk.
    destinations: tuple[Route | str, ...] = ()
    image_check: InformationLimits = DEFAULT_LIMITS  # how much a decoded image must hold to be analysed
    # The words that name a view ([selection] tables): the SR and SC say where a view they name was read.
    vocabulary: Vocabulary | None = None
    # [results] not_analysable_report: a not-analysable image gets a short SR without a class,
    # sent where SRs of every class go (destinations.routing.plan_no_result).
    not_analysable_report: bool = False
    # Wait after the n-th resource failure in a row: doubles from 5 s, at most 10 minutes.
    resource_backoff_s: Callable[[int], float] = lambda n: min(600.0, 5.0 * 2 ** (n - 1))


def pid_alive(pid: int) -> bool:
    """Is another process with this PID running? Our own PID counts as dead: a worker that is
    just starting holds nothing, so a job under our PID is from an earlier process (PID reuse)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        analyzer: Analyzer,
        layout: StorageLayout,
        node: NodeIdentity,
        settings: WorkerSettings,
        decode: Decode,
        name: str | None = None,
    ) -> None:
        self.queue = queue
        self.analyzer = analyzer
        self.layout = layout
        self.node = node
        self.settings = settings
        self.decode = decode  # a decode pool's decode_many: decoding runs in other processes
        self.model = ModelIdentity.from_bundle(analyzer.bundle)
        # HOST:PID lets a restarted node recognise jobs its dead predecessor held.
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._model_problem: str | None = None
        self._loop = PollingLoop("cxr-worker", self.run_once, settings.poll_interval_s)

    def run_once(self) -> int:
        """Claim and process up to one batch; returns how many jobs were claimed."""
        batch = self.queue.claim(
            self.name, self.settings.lease_s, self.settings.batch_size, max_attempts=self.settings.max_attempts
        )
        if not batch:
            return 0
        outcomes = process_batch(
            [job.path for job in batch],
            self.analyzer,
            self.node,
            self.model,
            # Image i's results go under image i's own directory, named from its job's UIDs.
            lambda i, _header: self.layout.image_result_dir(batch[i].study_instance_uid, batch[i].sop_instance_uid),
            self.decode,
            panels=self.settings.cam_panels,
            max_side=self.settings.sc_max_side,
            limits=self.settings.image_check,
            zone=ZoneInfo(self.settings.time_zone) if self.settings.time_zone else None,
            vocabulary=self.settings.vocabulary,
        )
        self._note_analysis(outcomes)
        for job, outcome in zip(batch, outcomes, strict=True):
            try:
                self._record(job, outcome)
            except OperationalError as exc:  # the database went away: the lease brings the job back
                log.error("job %d (image %s): cannot record the outcome: %s", job.id, job.sop_instance_uid, exc)
        return len(batch)

    def _note_analysis(self, outcomes: list[Outcome]) -> None:
        """Remember whether the models' last batch failed as a whole (a model or device fault), for /readyz."""
        failed = [o for o in outcomes if o.error and o.error.startswith(ANALYSIS_FAILED)]
        if failed:
            text = (failed[0].error or "")[len(ANALYSIS_FAILED) :].removeprefix(f"{failed[0].path}: ")
            self._model_problem = f"the last analysis failed: {text[:200]}"
        elif any(o.ok for o in outcomes):
            self._model_problem = None

    def model_problem(self) -> str | None:
        """None while the models answer; else why not (the last batch's analysis failed as a whole)."""
        return self._model_problem

    def _record(self, job: Job, outcome: Outcome) -> None:
        if not outcome.ok:
            self._failed(job, outcome)
            return
        assert outcome.analysis is not None and outcome.files is not None
        r = outcome.analysis.result
        record = ResultRecord(
            r.label.value,
            r.p_abnormal,
            r.p_covid,
            r.models_disagree,
            self.model.label,
            self.model.trained,
            {k: round(v, 4) for k, v in outcome.timings.items()},
        )
        files = outcome.files
        items = plan(
            self.settings.destinations,
            record.label,
            record.trained,
            {
                ExportKind.SC: ExportItem(ExportKind.SC, str(files.sc_path), files.sc_uid),
                ExportKind.SR: ExportItem(ExportKind.SR, str(files.sr_path), files.sr_uid),
                # a notice announces the SR
                ExportKind.NOTICE: ExportItem(ExportKind.NOTICE, str(files.sr_path), files.sr_uid),
            },
        )
        if self.queue.complete(job, record, items):
            log.info(
                "job %d image %s: %s (P(abnormal) %.3f, P(COVID) %.3f)%s",
                job.id,
                job.sop_instance_uid,
                r.label.value,
                r.p_abnormal,
                r.p_covid,
                "" if self.model.trained else " [UNTRAINED MODEL]",
            )

    def _failed(self, job: Job, outcome: Outcome) -> None:
        error = outcome.error or "unknown error"
        if outcome.kind == OutcomeKind.NOT_ANALYSABLE:
            self._not_analysable(job, outcome.code or "not-analysable", error)
            return
        if outcome.kind == OutcomeKind.RESOURCE:
            delay = self.queue.defer(job, f"resource: {error}", self.settings.resource_backoff_s)
            log.warning("job %d image %s: %s; retrying in %.0f s", job.id, job.sop_instance_uid, error, delay)
            return
        state = self.queue.fail(job, error, self.settings.max_attempts, permanent=outcome.kind == OutcomeKind.IMAGE)
        log.error("job %d image %s: %s (%s)", job.id, job.sop_instance_uid, error, state)

    def _not_analysable(self, job: Job, code: str, reason: str) -> None:
        items: list[ExportItem] = []
        problem = None
        if self.settings.not_analysable_report:
            try:
                items = self._no_result_report(job, code, reason)
            except Exception as exc:
                if classify(exc) == OutcomeKind.RESOURCE:  # disk full, I/O: the report is owed, try later
                    delay = self.queue.defer(job, f"resource: {one_line(exc)}", self.settings.resource_backoff_s)
                    log.warning(
                        "job %d image %s: not-analysable report not written (%s); retrying in %.0f s",
                        job.id,
                        job.sop_instance_uid,
                        one_line(exc),
                        delay,
                    )
                    return
                # The verdict stands without its report; the job's error says why there is none.
                problem = f"not-analysable report not made: {one_line(exc)}"
                log.exception("job %d image %s: %s", job.id, job.sop_instance_uid, problem)
        self.queue.not_analysable(job, code, reason, items, problem)
        log.warning(
            "job %d image %s: not analysable (%s): %s%s",
            job.id,
            job.sop_instance_uid,
            code,
            reason,
            " (report SR made)" if items else "",
        )

    def _no_result_report(self, job: Job, code: str, reason: str) -> list[ExportItem]:
        """Write the image's "no result" SR; its export items (cxr_node.results.no_result_sr)."""
        header = dcmread(job.path, stop_before_pixels=True)
        report = write_no_result_report(
            header,
            code,
            reason,
            self.layout.image_result_dir(job.study_instance_uid, job.sop_instance_uid),
            self.node,
            self.model,
            zone=ZoneInfo(self.settings.time_zone) if self.settings.time_zone else None,
            vocabulary=self.settings.vocabulary,
        )
        item = ExportItem(ExportKind.SR, str(report.path), report.sop_instance_uid)
        return plan_no_result(self.settings.destinations, self.model.trained, item)

    # -- background loop -------------------------------------------------------------
    def recover(self) -> int:
        host = self.name.rpartition(":")[0]
        n = self.queue.requeue_orphans(host, pid_alive, max_attempts=self.settings.max_attempts)
        if n:
            log.warning("re-queued %d job(s) interrupted by a crash of an earlier worker on %s", n, host)
        return n

    def wake(self) -> None:
        """New jobs were queued: look now instead of at the next poll."""
        self._loop.wake()

    def start(self) -> None:
        self.recover()
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
