"""A background thread that calls `step()` until stopped, resting when there was nothing to do.

A rest ends early when `wake()` is called (new work was announced), so polling is only the
fallback for announcements that never arrive (e.g. another process on a database without
LISTEN/NOTIFY).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PollingLoop:
    def __init__(self, name: str, step: Callable[[], int], interval_s: float) -> None:
        self.name = name
        self.step = step  # returns how much it did; 0 means "rest before the next look"
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look again now. A wake during a step is kept, so work announced mid-step is not missed."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            # Cleared before the step: a wake that arrives while stepping makes the next rest end at once.
            self._wake.clear()
            try:
                busy = self.step()
            except Exception:  # e.g. the database is briefly unavailable: log and keep serving
                log.exception("%s: step failed", self.name)
                busy = 0
            if not busy:
                self._wake.wait(self.interval_s)

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=timeout_s)
