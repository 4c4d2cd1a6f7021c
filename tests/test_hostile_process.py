"""Finding 7 and the non-TLS parts of 8: process hygiene and secrets.

- decode-pool processes die with their parent, even after kill -9 (a real SIGKILL here);
- `serve` with an unreachable database says so in one line per try and keeps trying, no traceback;
- `serve` sets umask 027: stored images, the SQLite file and directories are not world-readable;
- the database password comes from CXR_NODE_DB_PASSWORD or node.db_password_file, never argv;
- highdicom and pynetdicom log below WARNING only with --verbose.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from cxr_node.config import ConfigError, NodeConfig
from cxr_node.logs import setup_logging
from cxr_node.startup import PASSWORD_ENV, read_password_file, wait_for_database, with_db_password
from tests import peers
from tests.dicom_factory import gradient, make_radiograph

CLI = [sys.executable, "-m", "cxr_node.cli"]
REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its table entry waits for a reaper


POOL_SCRIPT = """
import sys, time
from cxr_node.decoding.pool import DecodePool
pool = DecodePool(workers=2, kind="process")
pool.warm_up()
print(" ".join(str(p) for p in pool.pids()), flush=True)
time.sleep(600)
"""


def test_decode_pool_processes_die_when_the_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", POOL_SCRIPT], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        children = [int(p) for p in parent.stdout.readline().split()]
        assert len(children) == 2 and all(_alive(p) for p in children)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        peers.wait_until(lambda: not any(_alive(p) for p in children), 15, "decode-pool processes to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in children if "children" in locals() else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _serve(tmp_path, *args, env=None) -> subprocess.Popen:
    log = open(tmp_path / "serve.log", "ab")
    return subprocess.Popen(
        [*CLI, "serve", "--role", "receiver", "--storage", str(tmp_path / "storage"), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )


def _log(tmp_path) -> str:
    return (tmp_path / "serve.log").read_text(errors="replace")


@pytest.mark.peers  # a cxr-node serve process
@pytest.mark.slow  # it waits out its retries
def test_serve_waits_for_an_unreachable_database_with_one_line_per_try(tmp_path):
    dead = peers.free_port()  # nothing listens here
    proc = _serve(
        tmp_path, "--port", str(peers.free_port()), "--db", f"postgresql+psycopg://cxr@127.0.0.1:{dead}/cxrnode"
    )
    try:
        peers.wait_until(lambda: _log(tmp_path).count("unreachable") >= 2, 30, "two retry lines")
        assert proc.poll() is None  # still trying
        lines = [line for line in _log(tmp_path).splitlines() if "unreachable" in line]
        assert lines[0].startswith(
            f"cxr-node: database postgresql+psycopg://cxr@127.0.0.1:{dead}/cxrnode unreachable ("
        )
        assert "retrying in 1 s" in lines[0] and "retrying in 2 s" in lines[1]
        assert "Traceback" not in _log(tmp_path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # SIGTERM while waiting ends it cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wait_for_database_returns_once_it_answers():
    tries, said = [], []

    def connect(url):
        tries.append(url)
        if len(tries) < 3:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    assert wait_for_database("postgresql+psycopg://cxr@db/x", threading.Event(), said.append, (0.01,), connect)
    assert len(tries) == 3 and len(said) == 3 and "after 2 failed tries" in said[-1]


@pytest.mark.peers  # a cxr-node serve process, reached with echoscu
@pytest.mark.slow
def test_serve_sets_umask_027(tmp_path):
    port = peers.free_port()
    proc = _serve(tmp_path, "--port", str(port), "--bind", "127.0.0.1")
    try:
        peers.wait_for_echo(proc, port, "serve to answer C-ECHO", timeout_s=120)
        assert proc.poll() is None, _log(tmp_path)
        image = tmp_path / "cr.dcm"
        make_radiograph(gradient()).save_as(image, enforce_file_format=True)
        out = subprocess.run(
            [peers.find_program("storescu"), "-aec", "CXR_NODE", "127.0.0.1", str(port), str(image)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        storage = tmp_path / "storage"
        files = [p for p in storage.rglob("*") if p.is_file()]
        dirs = [storage, *(p for p in storage.rglob("*") if p.is_dir())]
        assert any(p.suffix == ".dcm" for p in files) and any(p.name == "cxr-node.db" for p in files)
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) & 0o027 == 0, f"{p} is {stat.S_IMODE(p.stat().st_mode):o}"
        for d in dirs:
            assert stat.S_IMODE(d.stat().st_mode) & 0o027 == 0, f"{d} is {stat.S_IMODE(d.stat().st_mode):o}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_password_from_environment_never_on_the_command_line(tmp_path, postgres):
    """The session's PostgreSQL trusts local connections, so any password gets in: what is checked
    here is where the password travels (the URL the node builds, not argv)."""
    proc = _serve(tmp_path, "--port", str(peers.free_port()), "--db", postgres.url, env={PASSWORD_ENV: "s3cret-pw"})
    try:
        peers.wait_until(lambda: proc.poll() is not None or "cxr-node: roles" in _log(tmp_path), 120, "serve to start")
        assert proc.poll() is None, _log(tmp_path)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"s3cret-pw" not in cmdline and "s3cret-pw" not in _log(tmp_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_password_sources(tmp_path, monkeypatch):
    cfg = replace(NodeConfig(), db="postgresql+psycopg://cxr@db.example/cxrnode")
    assert "pw1" in with_db_password(cfg, {PASSWORD_ENV: "pw1"}).db
    assert with_db_password(cfg, {}) == cfg
    secret = tmp_path / "db-password"
    secret.write_text("pw2\n")
    secret.chmod(0o600)
    with_file = replace(cfg, db_password_file=secret)
    assert with_db_password(with_file, {PASSWORD_ENV: "pw1"}).db == "postgresql+psycopg://cxr:pw2@db.example/cxrnode"
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match=r"^node.db_password_file: .* readable by group or others \(mode 0640\)"):
        read_password_file(secret)
    with pytest.raises(ConfigError, match=r"^node.db_password_file: cannot read"):
        read_password_file(tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"^node.db: "):
        with_db_password(NodeConfig(), {PASSWORD_ENV: "pw1"})  # SQLite: no password to put anywhere


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    for name in ("highdicom", "pynetdicom"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_highdicom_and_pynetdicom_quiet_unless_verbose(restore_logging):
    setup_logging(verbose=False)
    assert all(not logging.getLogger(n).isEnabledFor(logging.INFO) for n in ("highdicom", "highdicom.sr", "pynetdicom"))
    setup_logging(verbose=True)
    assert all(logging.getLogger(n).isEnabledFor(logging.INFO) for n in ("highdicom", "pynetdicom"))


def test_default_bind_is_loopback():
    assert NodeConfig().bind == "127.0.0.1"


def _children(pid: int) -> list[int]:
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat_file.parent.name))
    return out


def _decode_workers(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            found.append(child)
    return found


@pytest.mark.peers
@pytest.mark.slow
def test_kill_9_of_serve_leaves_no_decode_processes(tmp_path, orthanc):
    from tests.test_end_to_end import ServeProcess, storescu

    node = ServeProcess(tmp_path, orthanc).start()
    try:
        images = []
        for i in range(4):  # several at once: the worker decodes a batch in its process pool
            path = tmp_path / f"cr{i}.dcm"
            make_radiograph(gradient(256, 200)).save_as(path, enforce_file_format=True)
            images.append(path)
        assert storescu(node.port, node.ae_title, *images).returncode == 0
        workers = peers.wait_until(lambda: _decode_workers(node.proc.pid), 120, "decode-pool processes to start")
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(30)
        peers.wait_until(lambda: not any(_alive(p) for p in workers), 15, "decode-pool processes to exit after kill -9")
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
        for pid in locals().get("workers") or []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
