"""The whole path with real peers: DCMTK storescu -> `cxr-node serve` -> real Orthanc.

The node runs as the installed console script, in its own process, so these tests also
cover the CLI, the config defaults and shutdown on SIGTERM.
"""

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


class ServeProcess:
    def __init__(self, tmp: Path, orthanc: peers.Orthanc, ae_title: str = "CXR_NODE", extra: list[str] | None = None):
        self.port = peers.free_port()
        self.ae_title = ae_title
        self.storage = tmp / "node"
        self.log_path = tmp / f"serve-{self.port}.log"
        self.args = [
            *CLI,
            "serve",
            "--ae-title",
            ae_title,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage",
            str(self.storage),
            "--destination",
            f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
            "--allow-untrained",
            "--device",
            "cpu",
            *(extra or []),
        ]
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=self.storage.parent)
        peers.wait_for_echo(self.proc, self.port, "node to answer C-ECHO", self.ae_title, timeout_s=120)
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited {self.proc.returncode}: {self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(60)


def storescu(port: int, ae_title: str, *files: Path) -> subprocess.CompletedProcess:
    exe = peers.find_program("storescu")
    # -R: propose just the files' SOP classes (as a modality does); -xv: offer JPEG 2000 lossless
    # besides the uncompressed syntaxes, so the compressed file goes as it is.
    return subprocess.run(
        [exe, "-R", "-xv", "-aet", "MOBILE_DR", "-aec", ae_title, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def results_at(orthanc: peers.Orthanc, study_uid: str, count: int, timeout_s: float = 240) -> list[dict]:
    return peers.wait_until(
        lambda: (lambda found: found if len(found) >= count else None)(orthanc.instances_in_study(study_uid)),
        timeout_s,
        f"{count} result objects in Orthanc",
        interval_s=0.5,
    )


@pytest.fixture
def serve(tmp_path, orthanc):
    started = []

    def make(**kw):
        node = ServeProcess(tmp_path, orthanc, **kw).start()
        started.append(node)
        return node

    yield make
    for node in started:
        if node.proc.poll() is None:
            node.stop(signal.SIGKILL)


def test_storescu_to_node_to_orthanc(serve, orthanc, fresh_j2kr, tmp_path):
    node = serve()
    sent = storescu(node.port, node.ae_title, fresh_j2kr)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    source = pydicom.dcmread(fresh_j2kr, stop_before_pixels=True)
    found = results_at(orthanc, source.StudyInstanceUID, 2)
    modalities = sorted(i["Tags"]["Modality"] for i in found)
    assert modalities == ["OT", "SR"], modalities
    for item in found:
        tags = item["Tags"]
        assert tags["StudyInstanceUID"] == source.StudyInstanceUID
        assert tags["PatientID"] == source.PatientID
        assert tags["SeriesInstanceUID"] != source.SeriesInstanceUID  # a new series, same study
        path = tmp_path / f"{tags['Modality']}.dcm"
        path.write_bytes(orthanc.get(f"/instances/{item['ID']}/file"))
        errors, _warnings = peers.dciodvfy(path)
        assert errors == [], f"dciodvfy on {tags['Modality']}:\n" + "\n".join(errors)
        assert "UNTRAINED" in tags.get("SeriesDescription", ""), tags.get("SeriesDescription")

    assert peers.echo_ok(node.port, node.ae_title)  # still serving
    assert node.stop() == 0, node.log()


def test_resent_image_is_reported_once(serve, orthanc, fresh_uncr):
    node = serve()
    source = pydicom.dcmread(fresh_uncr, stop_before_pixels=True)
    assert storescu(node.port, node.ae_title, fresh_uncr).returncode == 0
    first = results_at(orthanc, source.StudyInstanceUID, 2)
    # The modality re-sends the same image (a retry after a network glitch).
    assert storescu(node.port, node.ae_title, fresh_uncr).returncode == 0
    assert peers.echo_ok(node.port, node.ae_title)
    again = orthanc.instances_in_study(source.StudyInstanceUID)
    assert sorted(i["ID"] for i in again) == sorted(i["ID"] for i in first)
    node.stop()


def test_wrong_called_ae_title_is_rejected(serve):
    node = serve()
    assert not peers.echo_ok(node.port, "NOT_THE_NODE")
    assert peers.echo_ok(node.port, node.ae_title)


def test_serve_refuses_to_start_without_models(tmp_path):
    out = subprocess.run(
        [*CLI, "serve", "--port", "0", "--storage", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "models.dir" in out.stderr and "--allow-untrained" in out.stderr, out.stderr


def test_serve_names_bad_config_key(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nport = "eleven"\n')
    out = subprocess.run(
        [*CLI, "serve", "--config", str(cfg), "--allow-untrained"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "node.port" in out.stderr, out.stderr


def test_serve_on_postgresql(serve, orthanc, postgres, fresh_uncr):
    node = serve(extra=["--db", postgres.url])
    source = pydicom.dcmread(fresh_uncr, stop_before_pixels=True)
    assert storescu(node.port, node.ae_title, fresh_uncr).returncode == 0
    found = results_at(orthanc, source.StudyInstanceUID, 2)
    assert sorted(i["Tags"]["Modality"] for i in found) == ["OT", "SR"]
    from sqlalchemy import create_engine, text

    with create_engine(postgres.url).connect() as conn:
        assert (
            conn.execute(
                text("select count(*) from results where study_instance_uid = :s"), {"s": source.StudyInstanceUID}
            ).scalar()
            == 1
        )
    node.stop()


def test_roles_in_separate_processes(serve, orthanc, fresh_uncr, tmp_path):
    """Receiver alone in one process, worker + dispatcher in another: they meet only in the DB and storage."""
    receiver = ServeProcess(tmp_path, orthanc, extra=["--role", "receiver"])
    receiver.args.remove("--allow-untrained")  # a receiver needs no model: it must start without one
    receiver.start()
    source = pydicom.dcmread(fresh_uncr, stop_before_pixels=True)
    try:
        assert storescu(receiver.port, receiver.ae_title, fresh_uncr).returncode == 0
    except AssertionError:
        receiver.stop(signal.SIGKILL)
        raise
    worker = ServeProcess(tmp_path, orthanc, extra=["--role", "worker", "--role", "dispatcher"])
    worker.args[worker.args.index("--port") + 1] = "0"
    log = open(tmp_path / "worker.log", "ab")
    worker.proc = subprocess.Popen(worker.args, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        found = results_at(orthanc, source.StudyInstanceUID, 2)
        assert sorted(i["Tags"]["Modality"] for i in found) == ["OT", "SR"]
    finally:
        worker.stop()
        receiver.stop()
