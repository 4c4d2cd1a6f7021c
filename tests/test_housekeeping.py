"""Retention purges only finished studies (skipped images included); leftovers of crashed writes are removed."""

from __future__ import annotations

import os
import time

from sqlalchemy import select

from cxr_node.housekeeping import purge_finished, remove_stale_temp_files
from cxr_node.queue.exports import ExportQueue
from cxr_node.queue.jobs import PURGED, ExportItem, JobQueue, ReceivedInstance, ResultRecord
from cxr_node.queue.schema import open_database
from cxr_node.queue.tables import instances
from cxr_node.storage import StorageLayout, write_durably
from tests.test_queue import FakeClock

RECORD = ResultRecord("Normal", 0.1, 0.2, False, "m 1", True, {})


def _receive(q, layout, study, sop, skip=False):
    path = write_durably(layout.instance_path(study, sop), b"DICM")
    q.enqueue(
        ReceivedInstance(
            sop, "1.2.840.10008.5.1.4.1.1.1", study, "MOD", str(path), skip=skip, rule="lateral-view" if skip else None
        )
    )
    return path


def test_retention_purges_finished_studies_only(tmp_path):
    clock = FakeClock()
    q = JobQueue(open_database(f"sqlite:///{tmp_path / 'q.db'}"), clock)
    layout = StorageLayout(tmp_path / "s")
    done_img = _receive(q, layout, "1.1", "9.1")
    skipped_img = _receive(q, layout, "1.1", "9.4", skip=True)  # the study's lateral
    unsent_img = _receive(q, layout, "1.2", "9.2")
    queued_img = _receive(q, layout, "1.3", "9.3")
    a, b = q.claim("w", 60, limit=2)
    result_file = write_durably(layout.image_result_dir("1.1", "9.1") / "report-sr.dcm", b"SR")
    q.complete(a, RECORD, [ExportItem("sr", str(result_file), "2.25.1")], ["pacs"])
    q.complete(b, RECORD, [ExportItem("sr", "/x", "2.25.2")], ["pacs"])
    exports = ExportQueue(q.engine, clock)
    (sent,) = [e for e in exports.due() if e.sop_instance_uid == "2.25.1"]
    exports.sent(sent)

    assert purge_finished(q, layout, retention_days=7) == 0  # too recent
    clock.advance(8 * 86400)
    assert purge_finished(q, layout, retention_days=7) == 1
    assert not done_img.exists() and not result_file.exists() and not skipped_img.exists()
    assert unsent_img.exists()  # its SR has not reached the PACS yet
    assert queued_img.exists()  # not analysed yet
    with q.engine.connect() as conn:
        paths = dict(conn.execute(select(instances.c.study_instance_uid, instances.c.path)).all())
    assert paths["1.1"] == PURGED and paths["1.2"] != PURGED
    assert purge_finished(q, layout, retention_days=7) == 0  # idempotent


def test_only_old_temp_files_are_removed(tmp_path):
    old = tmp_path / "instances" / ".x.dcm.abc.tmp"
    new = tmp_path / "instances" / ".y.dcm.def.tmp"
    keep = tmp_path / "instances" / "z.dcm"
    for f in (old, new, keep):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    now = time.time()
    os.utime(old, (now - 7200, now - 7200))
    os.utime(keep, (now - 7200, now - 7200))
    assert remove_stale_temp_files(tmp_path, now=now) == 1
    assert not old.exists() and new.exists() and keep.exists()
