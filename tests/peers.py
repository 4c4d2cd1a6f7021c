"""Real peer programs for tests: Orthanc (PACS), DCMTK tools, dicom3tools, PostgreSQL.

Each is a Debian package started here on free loopback ports in a temp directory and
stopped afterwards. On a developer machine without the package the test is skipped
with the package name; under CI (CI=true) a missing program fails the test instead,
because .ci/run installs them all.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

DEBIAN_PACKAGE = {
    "storescu": "dcmtk",
    "echoscu": "dcmtk",
    "dcmsend": "dcmtk",
    "storescp": "dcmtk",
    "dcmcjpeg": "dcmtk",
    "dcmcjpls": "dcmtk",
    "dcmcrle": "dcmtk",
    "dcmconv": "dcmtk",
    "dcmodify": "dcmtk",
    "openssl": "openssl",
    "Orthanc": "orthanc",
    "dciodvfy": "dicom3tools",
    "dcentvfy": "dicom3tools",
    "initdb": "postgresql",
    "DicomSRValidator": "pixelmed-apps",
    "dsr2html": "dcmtk",
    "chromium": "chromium",
}
POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def find_program(name: str) -> str:
    """Path of a peer program, or skip (fail under CI) naming the Debian package to install.

    In the fast tier (`make check` sets CXR_NODE_TEST_TIER=fast) a test that reaches for a peer
    fails: it is missing its `peers` marker, and the tier must never need Debian peers."""
    if os.environ.get("CXR_NODE_TEST_TIER") == "fast":
        pytest.fail(f"this test runs {name}, a Debian peer: mark it @pytest.mark.peers (the fast tier runs none)")
    path = shutil.which(name)
    if name in ("initdb", "pg_ctl", "createdb") and POSTGRES_BIN:
        # Debian keeps the server tools in a versioned directory, off PATH.
        candidate = POSTGRES_BIN[-1] / name
        path = str(candidate) if candidate.exists() else path
    if path is not None:
        path = str(Path(path).resolve())
    if path is None:
        message = f"{name} not installed (Debian package {DEBIAN_PACKAGE.get(name, '?')}; `make test` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


LOWEST_TEST_PORT = 10000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _worker_slice() -> range:
    """This pytest worker's share of the ports below the kernel's ephemeral range (empty if there is none)."""
    low, _high = _ephemeral_range()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    width = max(low - LOWEST_TEST_PORT, 0) // count
    start = LOWEST_TEST_PORT + index * width
    return range(start, start + width)


_handed_out: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, for a peer that binds it later.

    Taken below the kernel's ephemeral range, from a slice of its own per pytest worker and never
    twice in one process: an ephemeral port (what binding port 0 gives) can be taken by any
    outgoing connection between the pick and a peer's bind, which once kept Orthanc from starting
    after a test had waited on a down PACS for half a minute.
    """
    ports = _worker_slice()
    if len(ports) >= 100:
        offset = int.from_bytes(os.urandom(2), "big") % len(ports)
        for i in range(len(ports)):
            port = ports[(offset + i) % len(ports)]
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no room below the ephemeral range
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def echo_ok(port: int, ae_title: str = "CXR_NODE") -> bool:
    """One C-ECHO with DCMTK's echoscu (a few ms of CPU: readiness polls use it, not `cxr-node echo`,
    whose every run imports the CLI)."""
    exe = find_program("echoscu")
    return (
        subprocess.run([exe, "-aec", ae_title, "127.0.0.1", str(port)], capture_output=True, timeout=30).returncode == 0
    )


def wait_for_echo(proc: subprocess.Popen, port: int, what: str, ae_title: str = "CXR_NODE", timeout_s: float = 180):
    """Until the process answers C-ECHO on `port` or exits (the caller checks which)."""
    wait_until(lambda: proc.poll() is not None or echo_ok(port, ae_title), timeout_s, what)


# -- Orthanc ---------------------------------------------------------------------------


@dataclass
class Orthanc:
    aet: str
    dicom_port: int
    http_port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return resp.read()

    def get_json(self, path: str):
        return json.loads(self.get(path))

    def post_json(self, path: str, body) -> object:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def instances_in_study(self, study_uid: str) -> list[dict]:
        """Tags of each instance in the study, as Orthanc stored them."""
        found = self.post_json(
            "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
        )
        return [dict(item, Tags=self.get_json(f"/instances/{item['ID']}/simplified-tags")) for item in found]

    def alive(self) -> bool:
        try:
            self.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False


def start_orthanc(
    workdir: Path,
    aet: str = "ORTHANC",
    modalities: dict | None = None,
    dicom_port: int | None = None,
    plugins: tuple[str, ...] = (),
) -> Orthanc:
    """plugins: shared objects to load (e.g. the Debian orthanc-webviewer, see orthanc_plugin)."""
    exe = find_program("Orthanc")
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = dicom_port or free_port(), free_port()
    config = {
        "Name": "cxr-node-test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": True,
        "DicomModalities": modalities or {},
        "Plugins": list(plugins),
        "StableAge": 1,
        "HttpsVerifyPeers": False,
    }
    cfg_path = workdir / "orthanc.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orthanc.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([exe, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    orthanc = Orthanc(aet, dicom_port, http_port, proc, log_path)
    try:
        wait_until(lambda: proc.poll() is not None or orthanc.alive(), 60, "Orthanc to answer HTTP")
    except TimeoutError:
        proc.kill()
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"Orthanc exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-2000:]}")
    return orthanc


ORTHANC_PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def orthanc_plugin(stem: str, package: str) -> str:
    """Path of an Orthanc plugin (e.g. "libOrthancWebViewer") from a Debian package; skip/fail like find_program."""
    for directory in ORTHANC_PLUGIN_DIRS:
        found = sorted(directory.glob(f"{stem}.so*"))
        if found:
            return str(found[0])
    message = f"Orthanc plugin {stem} not installed (Debian package {package}; `make test` installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def stop_process(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- dicom3tools -------------------------------------------------------------------------


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) lines that dciodvfy prints for one file."""
    exe = find_program("dciodvfy")
    out = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warning")]


# -- PostgreSQL --------------------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    datadir: Path
    workdir: Path
    url: str


def _as_postgres_user(args: list[str], **kw) -> subprocess.CompletedProcess:
    # initdb refuses to run as root; CI runs as root, so drop to the postgres account then.
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, check=True, **kw)


def start_postgres() -> Postgres:
    """A private cluster in its own /tmp directory (pytest's tmp dirs are root-only, postgres must enter)."""
    initdb = find_program("initdb")
    pg_ctl = str(Path(initdb).parent / "pg_ctl")
    workdir = Path(tempfile.mkdtemp(prefix="cxr-node-pg-"))
    datadir = workdir / "pgdata"
    sockdir = workdir / "pgsock"
    for d in (workdir, sockdir):
        d.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        shutil.chown(sockdir, "postgres")
    port = free_port()
    _as_postgres_user([initdb, "-D", str(datadir), "-U", "cxr", "--auth=trust", "-E", "UTF8"], timeout=120)
    _as_postgres_user(
        [
            pg_ctl,
            "-D",
            str(datadir),
            "-l",
            str(workdir / "pg.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=on",
            "start",
        ],
        timeout=90,
    )
    pg = Postgres(port, datadir, workdir, f"postgresql+psycopg://cxr@127.0.0.1:{port}/cxrnode")
    try:
        _as_postgres_user(
            [str(Path(initdb).parent / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "cxr", "cxrnode"],
            timeout=60,
        )
    except BaseException:
        stop_postgres(pg)  # never leave a server behind
        raise
    return pg


def stop_postgres(pg: Postgres) -> None:
    pg_ctl = str(Path(find_program("initdb")).parent / "pg_ctl")
    _as_postgres_user([pg_ctl, "-D", str(pg.datadir), "-m", "fast", "-w", "stop"], timeout=60)
    shutil.rmtree(pg.workdir, ignore_errors=True)
