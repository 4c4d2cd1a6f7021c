"""Readiness checks for /readyz: database, storage (writable, free space above the watermark), model,
decoding (a decoder process is up: after one died, not until its replacement runs)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxr_node.queue.reports import Reports


def disk_free_mb(path: Path) -> float:
    return shutil.disk_usage(path).free / (1024 * 1024)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class Readiness:
    def __init__(
        self,
        reports: Reports,
        storage: Path,
        min_free_mb: float,
        model_loaded: Callable[[], str | None] | None = None,
        free_mb: Callable[[Path], float] = disk_free_mb,
        decoding: Callable[[], str | None] | None = None,
    ) -> None:
        self.reports = reports
        self.storage = Path(storage)
        self.min_free_mb = min_free_mb
        # None: this process runs no worker; otherwise returns a problem, or None when loaded.
        self.model_loaded = model_loaded
        self.free_mb = free_mb
        # None: this process decodes nothing; otherwise returns why decoding is impossible, or None.
        self.decoding = decoding

    def _database(self) -> Check:
        try:
            self.reports.ping()
        except Exception as exc:
            return Check("database", False, f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return Check("database", True, "answers")

    def _storage(self) -> Check:
        probe = self.storage / f".readyz-{uuid.uuid4().hex}"
        try:
            with open(probe, "xb") as fh:
                fh.write(b"ok")
                fh.flush()
                os.fsync(fh.fileno())
            probe.unlink()
        except OSError as exc:
            return Check("storage", False, f"{self.storage} not writable: {exc.strerror or exc}")
        free = self.free_mb(self.storage)
        if free < self.min_free_mb:
            return Check(
                "storage",
                False,
                f"{free:.0f} MB free in {self.storage}, below receiver.min_free_mb {self.min_free_mb:.0f}",
            )
        return Check("storage", True, f"writable, {free:.0f} MB free")

    def _model(self) -> Check:
        if self.model_loaded is None:
            return Check("model", True, "no worker role in this process")
        problem = self.model_loaded()
        return Check("model", problem is None, problem or "loaded")

    def _decoding(self) -> Check:
        if self.decoding is None:
            return Check("decoding", True, "no worker role in this process")
        problem = self.decoding()
        return Check("decoding", problem is None, problem or "decoder processes running")

    def run(self) -> list[Check]:
        return [self._database(), self._storage(), self._model(), self._decoding()]
