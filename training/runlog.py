"""The run's log: timestamped lines to stderr and train.log."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from tqdm import tqdm


class RunLog:
    """Timestamped lines to stderr (through tqdm, so bars stay intact) and to train.log; rank 0 only.

    Parallel training processes append to the same train.log: one short write per line.
    """

    def __init__(self, path: Path | None, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{datetime.now().strftime('%H:%M:%S')}] {message}"
        tqdm.write(line, file=sys.stderr)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
