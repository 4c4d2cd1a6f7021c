"""Housekeeping (APScheduler): retention of finished studies, crash leftovers, a queue summary.

Retention deletes files only for studies that are completely finished: every job of the
study closed (done, failed or skipped) and every export sent or kept local. Rows stay in
the database (they are small and are the audit trail); their paths are marked purged.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from cxr_node.queue.jobs import JobQueue
from cxr_node.storage import StorageLayout

log = logging.getLogger(__name__)

TMP_MAX_AGE_S = 3600.0  # a .tmp file older than this belongs to a writer that died


def purge_finished(queue: JobQueue, layout: StorageLayout, retention_days: float) -> int:
    """Delete images and results of studies finished more than retention_days ago; returns studies purged."""
    studies = queue.purgeable_studies(queue.clock() - timedelta(days=retention_days))
    for study in studies:
        paths = queue.instance_paths(study)
        for p in paths:
            Path(p).unlink(missing_ok=True)
        shutil.rmtree(layout.result_dir(study), ignore_errors=True)
        queue.mark_purged(study)  # after the files are gone: a crash in between purges again
        log.info("retention: purged study %s (%d image(s))", study, len(paths))
    return len(studies)


def remove_stale_temp_files(root: Path, now: float | None = None, max_age_s: float = TMP_MAX_AGE_S) -> int:
    """Temp files of writes interrupted by a crash; never acknowledged, so safe to delete."""
    now = time.time() if now is None else now
    removed = 0
    for tmp in root.rglob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > max_age_s:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


class Housekeeping:
    def __init__(
        self, queue: JobQueue, layout: StorageLayout, retention_days: float, interval_s: float = 3600.0
    ) -> None:
        self.queue = queue
        self.layout = layout
        self.retention_days = retention_days
        self.interval_s = interval_s
        self.scheduler = BackgroundScheduler(timezone="UTC")

    def run_once(self) -> dict[str, int]:
        done = {"temp_files_removed": remove_stale_temp_files(self.layout.root)}
        if self.retention_days > 0:
            done["studies_purged"] = purge_finished(self.queue, self.layout, self.retention_days)
        log.info("housekeeping: %s; queue %s", done, self.queue.counts())
        return done

    def start(self) -> None:
        # coalesce + max_instances=1: a slow run is never stacked on another.
        self.scheduler.add_job(
            self.run_once,
            "interval",
            seconds=self.interval_s,
            id="housekeeping",
            coalesce=True,
            max_instances=1,
            next_run_time=datetime.now(UTC),
        )
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
