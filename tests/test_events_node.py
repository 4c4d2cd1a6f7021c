"""Wake-ups in a real node: with polls 10 minutes apart, a study still reaches Orthanc, so the worker
and the dispatcher were woken (in-process; and across processes through PostgreSQL NOTIFY/LISTEN)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests import peers

pytestmark = [pytest.mark.peers, pytest.mark.slow]

CLI = [sys.executable, "-m", "cxr_node.cli"]
POLL_S = 600  # longer than any wait below: only a wake-up can move the study in time
WAIT_S = 240


def _config(tmp: Path, orthanc, port: int, db: str = "") -> Path:
    path = tmp / f"node-{port}.toml"
    path.write_text(
        f'[node]\nae_title = "CXR_NODE"\nbind = "127.0.0.1"\nport = {port}\nstorage = "{tmp / "storage"}"\ndb = "{db}"\n'
        f'[destination]\nae_title = "{orthanc.aet}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
        f'[models]\nallow_untrained = true\ndevice = "cpu"\n[worker]\npoll_interval_s = {POLL_S}\n'
    )
    return path


def _start(config: Path, log: Path, *roles: str) -> subprocess.Popen:
    args = [*CLI, "serve", "--config", str(config), *[a for r in roles for a in ("--role", r)]]
    return subprocess.Popen(args, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=config.parent)


def _send(port: int, path: Path) -> None:
    out = subprocess.run(
        [*CLI, "send", str(path), "--to", f"CXR_NODE@127.0.0.1:{port}"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _results(orthanc, study: str) -> list:
    return peers.wait_until(
        lambda: (lambda f: f if len(f) >= 2 else None)(orthanc.instances_in_study(study)),
        WAIT_S,
        "SR and SC in Orthanc (a missed wake-up would wait for the 10-minute poll)",
        interval_s=0.5,
    )


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_roles_in_one_process_wake_each_other(tmp_path, orthanc, fresh_uncr):
    port = peers.free_port()
    proc = _start(_config(tmp_path, orthanc, port), tmp_path / "serve.log")
    try:
        peers.wait_for_echo(proc, port, "node to answer C-ECHO")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        _send(port, fresh_uncr)
        _results(orthanc, str(pydicom.dcmread(fresh_uncr, stop_before_pixels=True).StudyInstanceUID))
    finally:
        _stop(proc)


def test_roles_in_separate_processes_wake_through_postgres(tmp_path, orthanc, postgres, fresh_uncr):
    port = peers.free_port()
    config = _config(tmp_path, orthanc, port, db=postgres.url)
    receiver = _start(config, tmp_path / "receiver.log", "receiver")
    worker = _start(config, tmp_path / "worker.log", "worker")
    dispatcher = _start(config, tmp_path / "dispatcher.log", "dispatcher")
    try:
        peers.wait_for_echo(receiver, port, "receiver to answer C-ECHO")
        # The worker is ready once its model is loaded and its first look at the queue is done.
        peers.wait_until(
            lambda: worker.poll() is not None or "roles worker" in (tmp_path / "worker.log").read_text(),
            180,
            "worker to start",
        )
        for proc, name in ((receiver, "receiver"), (worker, "worker"), (dispatcher, "dispatcher")):
            assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
        _send(port, fresh_uncr)
        _results(orthanc, str(pydicom.dcmread(fresh_uncr, stop_before_pixels=True).StudyInstanceUID))
    finally:
        _stop(receiver, worker, dispatcher)
