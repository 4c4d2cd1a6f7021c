"""What `bench ingest` and `bench latency` share: loopback ports, the Debian programs they drive,
fresh-UID copies of one radiograph, one timed `dcmsend`, and stopping a child process.

Failures are click errors that say what is missing or what the peer answered, so a benchmark
that could not measure stops with one line instead of a figure.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

SENDER_AET = "MOBILE_DR"  # a modality's calling AE title
NODE_AET = "CXR_NODE"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def program(name: str, package: str = "dcmtk") -> str:
    path = shutil.which(name)
    if path is None:
        raise click.ClickException(f"{name} not installed (Debian package {package})")
    return path


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """The predicate's first true value, looked at every interval_s; a click error after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise click.ClickException(f"timed out after {timeout_s:.0f} s waiting for {what}")


@dataclass(frozen=True)
class Copy:
    path: Path
    study_uid: str
    sop_uid: str


def fresh_copies(src: Path, out_dir: Path, n: int) -> list[Copy]:
    """n copies of `src` with fresh Study/Series/SOP Instance UIDs, in its own transfer syntax."""
    import pydicom
    from pydicom.uid import generate_uid

    out_dir.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(src)
    copies = []
    for i in range(n):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = out_dir / f"image-{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        copies.append(Copy(path, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)))
    return copies


def timed_dcmsend(
    port: int, files: Sequence[Path], to: str, options: Sequence[str] = (), timeout_s: float = 600
) -> float:
    """dcmsend's wall seconds for `files` in one association to 127.0.0.1:port; a click error
    naming `to` and quoting dcmsend when it fails."""
    cmd = [program("dcmsend"), "-aet", SENDER_AET, "-aec", NODE_AET, *options, "127.0.0.1", str(port)]
    t0 = time.perf_counter()
    sent = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, timeout=timeout_s)
    seconds = time.perf_counter() - t0
    if sent.returncode != 0:
        raise click.ClickException(f"dcmsend to {to} failed ({sent.returncode}): {sent.stderr[-1000:]}")
    return seconds


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not ended within timeout_s."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


__all__ = ["Copy", "free_port", "fresh_copies", "listening", "program", "stop", "timed_dcmsend", "wait_until"]
