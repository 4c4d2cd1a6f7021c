"""Run a process tree under a memory limit, as a container or a small host would, and read back
its peak memory and OOM kills. Used by tests/test_hostile_pixels.py and deploy/soak.py.

In order of preference: a cgroup v2 (memory.max), a cgroup v1 (memory.limit_in_bytes), both made
directly in the cgroup file system (needs root, or a delegated subtree); then `systemd-run --scope
-p MemoryMax=` (needs systemd as PID 1; peak and OOM kills are then not read back). Where none is
available the command runs without a limit and `how` says so: callers print it next to their figures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_ENTER = 'echo $$ > "$0/cgroup.procs" && exec "$@"'  # the shell joins the cgroup, then becomes the command


@dataclass
class MemoryLimit:
    how: str  # one line: which mechanism, which limit (or why there is none)
    prefix: list[str] = field(default_factory=list)  # put before the command's argv
    path: Path | None = None  # the cgroup directory, when one was made
    version: int = 0  # 1 or 2 for a cgroup; 0 otherwise

    @property
    def limited(self) -> bool:
        return bool(self.prefix)

    def wrap(self, argv: list[str]) -> list[str]:
        return [*self.prefix, *argv]

    def peak_bytes(self) -> int | None:
        name = {1: "memory.max_usage_in_bytes", 2: "memory.peak"}.get(self.version)
        if self.path is None or name is None or not (self.path / name).exists():
            return None
        return int((self.path / name).read_text().split()[0])

    def oom_kills(self) -> int | None:
        """Processes the kernel killed in this cgroup for want of memory (None: cannot tell)."""
        name = {1: "memory.oom_control", 2: "memory.events"}.get(self.version)
        if self.path is None or name is None or not (self.path / name).exists():
            return None
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return None

    def close(self, wait_s: float = 15.0) -> None:
        """Remove the cgroup once its processes have ended (a killed node's decoders leave within ~1 s)."""
        if self.path is None:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
                return
            except OSError:  # EBUSY: processes still in it
                time.sleep(0.2)


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def memory_limit(limit_bytes: int, name: str = "cxr-test") -> MemoryLimit:
    gib = f"{limit_bytes / 2**30:g} GiB"
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split() and _writable(CGROUP_ROOT):
        path = CGROUP_ROOT / f"{name}-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
            (path / "memory.max").write_text(str(limit_bytes))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")
            return MemoryLimit(f"cgroup v2 memory.max {gib} ({path})", ["sh", "-c", _ENTER, str(path)], path, 2)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
    v1 = CGROUP_ROOT / "memory"
    if _writable(v1) and (v1 / "memory.limit_in_bytes").exists():
        path = v1 / f"{name}-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            if (path / "memory.memsw.limit_in_bytes").exists():
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))  # no swap beyond it
            return MemoryLimit(
                f"cgroup v1 memory.limit_in_bytes {gib} ({path})", ["sh", "-c", _ENTER, str(path)], path, 1
            )
        except OSError:
            try:
                path.rmdir()
            except OSError:
                pass
    systemd_run = shutil.which("systemd-run")
    if systemd_run and Path("/run/systemd/system").is_dir():
        probe = subprocess.run(
            [systemd_run, "--scope", "-q", "-p", f"MemoryMax={limit_bytes}", "true"], capture_output=True
        )
        if probe.returncode == 0:
            return MemoryLimit(
                f"systemd-run --scope -p MemoryMax={gib} (peak and OOM kills not read back)",
                [systemd_run, "--scope", "-q", "-p", f"MemoryMax={limit_bytes}", "--"],
            )
    return MemoryLimit(f"no memory limit: no writable cgroup and no systemd here (wanted {gib})")


__all__ = ["MemoryLimit", "memory_limit"]
