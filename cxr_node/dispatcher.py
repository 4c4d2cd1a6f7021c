"""Dispatcher: sends pending result objects to the PACS, retrying with back-off, never dropping one."""

from __future__ import annotations

import logging
from collections import defaultdict

from cxr_node.config import Destination
from cxr_node.dicom.sender import SendError, Sender, status_ok
from cxr_node.polling import PollingLoop
from cxr_node.queue.jobs import Export, JobQueue

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        queue: JobQueue,
        sender: Sender,
        retry_delays_s: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0),
        poll_interval_s: float = 1.0,
    ) -> None:
        self.queue = queue
        self.sender = sender
        self.retry_delays_s = retry_delays_s
        self.poll_interval_s = poll_interval_s
        self._loop = PollingLoop("cxr-dispatcher", self.run_once, poll_interval_s)

    def _delay(self, attempts: int) -> float:
        return self.retry_delays_s[min(attempts, len(self.retry_delays_s) - 1)]

    def run_once(self) -> int:
        due = self.queue.due_exports()
        by_dest: dict[str, list[Export]] = defaultdict(list)
        for export in due:
            by_dest[export.destination].append(export)
        for dest_text, items in by_dest.items():
            destination = Destination.parse("exports.destination", dest_text)
            try:
                outcomes = self.sender.send_files(destination, [e.path for e in items])
            except (SendError, OSError) as exc:
                log.warning("send to %s failed: %s", destination, exc)
                for export in items:
                    self.queue.export_retry(export, str(exc), self._delay(export.attempts))
                continue
            for export, outcome in zip(items, outcomes):
                if status_ok(outcome.status):
                    self.queue.export_sent(export)
                    if outcome.fallback:
                        # The queue keeps the 3D SR's UID; the log names the instance that went.
                        log.warning(
                            "%s accepts no Comprehensive 3D SR: sent %s %s as Comprehensive SR %s",
                            destination, export.kind.upper(), export.sop_instance_uid, outcome.sop_instance_uid,
                        )
                    else:
                        log.info("sent %s %s to %s", export.kind.upper(), export.sop_instance_uid, destination)
                else:
                    error = f"{destination} refused {export.kind.upper()}: status 0x{outcome.status:04X} {outcome.comment}"
                    log.warning(error)
                    self.queue.export_retry(export, error, self._delay(export.attempts))
        return len(due)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
