"""Worker: claims queued images, analyses them in batches, writes SR + SC, records the result."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

from pydicom import dcmread

from cxr_node.analysis.bundle import Bundle
from cxr_node.analysis.engine import Analyzer
from cxr_node.analysis.decode_pool import decode_many
from cxr_node.dicom.pixels import PixelDataError
from cxr_node.polling import PollingLoop
from cxr_node.queue.jobs import ExportItem, Job, JobQueue, ResultRecord
from cxr_node.results.identity import ModelIdentity, NodeIdentity
from cxr_node.results.writer import write_results
from cxr_node.storage import StorageLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    lease_s: float = 600.0
    max_attempts: int = 3
    batch_size: int = 4
    poll_interval_s: float = 1.0
    cam_panels: str = "per-model"
    sc_max_side: int = 1024
    destination: str | None = None  # AET@HOST:PORT recorded on each export


def model_identity(bundle: Bundle) -> ModelIdentity:
    return ModelIdentity(bundle.name, bundle.version, bundle.sha256.get("A", ""), bundle.sha256.get("B", ""), bundle.trained)


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
        name: str | None = None,
    ) -> None:
        self.queue = queue
        self.analyzer = analyzer
        self.layout = layout
        self.node = node
        self.settings = settings
        self.model = model_identity(analyzer.bundle)
        # HOST:PID lets a restarted node recognise jobs its dead predecessor held.
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._loop = PollingLoop("cxr-worker", self.run_once, settings.poll_interval_s)

    def run_once(self) -> int:
        """Claim and process up to one batch; returns how many jobs were claimed."""
        batch = self.queue.claim(self.name, self.settings.lease_s, self.settings.batch_size)
        if not batch:
            return 0
        loaded = []
        todo = []
        for job in batch:
            if self.queue.study_reported(job.study_instance_uid):
                self.queue.skip(job, "study already reported")
                continue
            todo.append(job)
        # Decode the whole batch in parallel (a process pool: OpenJPEG holds the GIL).
        decoded = decode_many([job.path for job in todo])
        for job, got in zip(todo, decoded):
            try:
                if isinstance(got, BaseException):
                    raise got
                image, decode_s = got.image, got.seconds
                # Header only: the SR and SC copy attributes, the pixels were decoded above.
                ds = dcmread(job.path, stop_before_pixels=True)
            except PixelDataError as exc:  # retrying cannot fix the image itself
                log.error("job %d (%s): %s", job.id, job.sop_instance_uid, exc)
                self.queue.fail(job, str(exc), self.settings.max_attempts, permanent=True)
                continue
            except Exception as exc:
                log.exception("job %d: cannot read %s", job.id, job.path)
                self.queue.fail(job, f"{job.path}: {exc}", self.settings.max_attempts)
                continue
            loaded.append((job, ds, image, decode_s))
        if not loaded:
            return len(batch)
        try:
            analyses = self.analyzer.analyse([img.pixels for _, _, img, _ in loaded])
        except Exception as exc:
            log.exception("analysis of %d jobs failed", len(loaded))
            for job, _, _, _ in loaded:
                self.queue.fail(job, f"analysis failed: {exc}", self.settings.max_attempts)
            return len(batch)
        for (job, ds, image, decode_s), analysis in zip(loaded, analyses):
            analysis.timings = {"decode": decode_s, **analysis.timings}
            self._finish(job, ds, image, analysis)
        return len(batch)

    def _finish(self, job: Job, ds, image, analysis) -> None:
        try:
            t0 = time.perf_counter()
            files = write_results(
                ds, image.pixels, analysis, self.layout.result_dir(job.study_instance_uid), self.node, self.model,
                self.settings.cam_panels, self.settings.sc_max_side,
            )
            analysis.timings["sr_sc_build"] = time.perf_counter() - t0
        except Exception as exc:
            log.exception("job %d: building results failed", job.id)
            self.queue.fail(job, f"result build failed: {exc}", self.settings.max_attempts)
            return
        r = analysis.result
        record = ResultRecord(
            r.label.value, r.p_abnormal, r.p_covid, r.models_disagree, self.model.label, self.model.trained,
            {k: round(v, 4) for k, v in analysis.timings.items()},
        )
        items = [
            ExportItem("sc", str(files.sc_path), files.sc_uid),
            ExportItem("sr", str(files.sr_path), files.sr_uid),
        ]
        if self.queue.complete(job, record, items, self.settings.destination):
            log.info(
                "study %s: %s (P(abnormal) %.3f, P(COVID) %.3f)%s",
                job.study_instance_uid, r.label.value, r.p_abnormal, r.p_covid,
                "" if self.model.trained else " [UNTRAINED MODEL]",
            )

    # -- background loop -------------------------------------------------------------
    def recover(self) -> int:
        host = self.name.rpartition(":")[0]
        n = self.queue.requeue_orphans(host, pid_alive)
        if n:
            log.warning("re-queued %d job(s) interrupted by a crash of an earlier worker on %s", n, host)
        return n

    def start(self) -> None:
        self.recover()
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
