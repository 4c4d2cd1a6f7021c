"""Operator commands, status page, /metrics and logs against a real `cxr-node serve` and a real Orthanc.

One node story per test (each node start loads two DenseNet-161s, so the steps share a node):
send with `cxr-node send`, scrape the page and /metrics while the study flows, list/show the job,
resend an export; a stored image corrupted after acknowledgement fails with its reason and comes
back with `jobs retry` once the file is replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest

from tests import peers

pytestmark = [pytest.mark.peers, pytest.mark.slow]

CLI = [sys.executable, "-m", "cxr_node.cli"]
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"cxr-node {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


class Node:
    def __init__(
        self,
        tmp: Path,
        orthanc: peers.Orthanc,
        roles: tuple[str, ...] = (),
        web: bool = True,
        extra: tuple[str, ...] = (),
    ):
        self.port, self.web_port = peers.free_port(), peers.free_port()
        self.storage = tmp / "node"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.db = f"sqlite:///{self.storage / 'cxr-node.db'}"
        self.config = tmp / f"node-{self.port}.toml"
        self.config.write_text(
            f'[node]\nae_title = "CXR_NODE"\nbind = "127.0.0.1"\nport = {self.port}\nstorage = "{self.storage}"\n'
            f'[destination]\nae_title = "{orthanc.aet}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
            f'[models]\nallow_untrained = true\ndevice = "cpu"\n'
            f"[web]\nenabled = {'true' if web else 'false'}\nport = {self.web_port}\n"
        )
        self.log_path = tmp / f"serve-{self.port}.log"
        self.args = [*CLI, "serve", "--config", str(self.config), *[a for r in roles for a in ("--role", r)], *extra]
        self.proc: subprocess.Popen | None = None

    def start(self) -> Node:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=self.storage.parent)
        peers.wait_for_echo(self.proc, self.port, "node to answer C-ECHO")
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited {self.proc.returncode}: {self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=30) as resp:
            return resp.read().decode()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def wait_metric(self, name: str, value: float, what: str, timeout_s: float = 240) -> None:
        """Until /metrics shows `name` at `value` (one HTTP request a poll; a CLI poll costs a second of CPU)."""

        def reached() -> bool:
            try:
                return re.search(rf"^{re.escape(name)} {value!r}$", self.http("/metrics"), re.M) is not None
            except OSError:  # the web server is not up yet
                return False

        peers.wait_until(reached, timeout_s, what, interval_s=0.2)

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return cli(*args, "--db", self.db, check=check)


def results_in(orthanc: peers.Orthanc, study_uid: str, count: int, timeout_s: float = 300) -> list[dict]:
    return peers.wait_until(
        lambda: (lambda found: found if len(found) >= count else None)(orthanc.instances_in_study(study_uid)),
        timeout_s,
        f"{count} result objects in Orthanc",
        interval_s=0.5,
    )


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


@pytest.fixture
def nodes():
    started: list[Node] = []
    yield started
    for node in started:
        node.stop()


def test_a_study_through_send_page_metrics_jobs_and_exports(tmp_path, orthanc, fresh_j2kr, nodes):
    node = Node(tmp_path, orthanc).start()
    nodes.append(node)
    study = str(pydicom.dcmread(fresh_j2kr, stop_before_pixels=True).StudyInstanceUID)
    sop = str(pydicom.dcmread(fresh_j2kr, stop_before_pixels=True).SOPInstanceUID)

    assert "success" in cli("echo", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}").stdout
    sent = cli("send", str(fresh_j2kr), "--to", f"CXR_NODE@127.0.0.1:{node.port}", "--aet", "MOBILE_DR")
    assert "1 of 1 file(s) stored" in sent.stdout

    # Scrape while the study flows (the page and /metrics answer whatever state the job is in).
    during_page, during_metrics = node.http("/"), node.http("/metrics")
    assert "Recent images" in during_page and "cxr_node_images_received_total 1.0" in during_metrics
    results_in(orthanc, study, 2)
    peers.wait_until(
        lambda: 'cxr_node_results_exported_total{destination="pacs"} 2.0' in node.http("/metrics"),
        60,
        "both exports counted",
    )

    metrics = node.http("/metrics")
    assert metric(metrics, "cxr_node_images_analysed_total") == 1.0
    assert metric(metrics, 'cxr_node_stage_seconds_count{stage="decode"}') == 1.0
    assert 'cxr_node_model_info{name="UNTRAINED' in metrics or "cxr_node_model_info{" in metrics
    page = node.http("/")
    assert sop in page and "pacs" in page and "UNTRAINED" in page
    ready = json.loads(node.http("/readyz"))
    assert ready["ready"] is True and ready["checks"]["model"]["detail"] == "loaded"

    # The J2K image went as JPEG 2000 (cxr-node send keeps each file's transfer syntax).
    listed = json.loads(node.admin("jobs", "list", "--json").stdout)
    assert [(j["state"], j["sop_instance_uid"]) for j in listed] == [("done", sop)]
    job = listed[0]
    assert job["label"] in ("Normal", "Pathological", "COVID-19") and 0 <= job["p_abnormal"] <= 1
    assert str(pydicom.dcmread(job["path"], stop_before_pixels=True).file_meta.TransferSyntaxUID) == J2K_LOSSLESS

    shown = node.admin("jobs", "show", sop).stdout
    assert f"job {job['id']}: done" in shown and shown.count("-> pacs: sent") == 2 and "seconds" in shown
    assert node.admin("jobs", "list", "--state", "failed").stdout.strip() == "no jobs in state failed"
    assert "no jobs" not in node.admin("jobs", "list", "--since", "1h").stdout

    exports = json.loads(node.admin("exports", "list", "--json").stdout)
    assert sorted(e["kind"] for e in exports) == ["sc", "sr"] and {e["state"] for e in exports} == {"sent"}
    in_orthanc = {i["Tags"]["SOPInstanceUID"] for i in orthanc.instances_in_study(study)}
    assert {e["sop_instance_uid"] for e in exports} == in_orthanc

    sr = next(e for e in exports if e["kind"] == "sr")
    out = node.admin("exports", "resend", str(sr["id"])).stdout
    assert f"export {sr['id']}: SR {sr['sop_instance_uid']} to pacs queued again (was sent)" in out
    again = peers.wait_until(
        lambda: (lambda rows: rows if rows[0]["state"] == "sent" and rows[0]["sent_at"] != sr["sent_at"] else None)(
            [e for e in json.loads(node.admin("exports", "list", "--json").stdout) if e["id"] == sr["id"]]
        ),
        60,
        "the export to be sent again",
        interval_s=1.0,
    )
    assert again[0]["sop_instance_uid"] == sr["sop_instance_uid"]
    assert {i["Tags"]["SOPInstanceUID"] for i in orthanc.instances_in_study(study)} == in_orthanc
    assert node.admin("exports", "list", "--pending").stdout.strip() == "no pending exports"
    assert (
        "already" in node.admin("exports", "resend", "999999", check=False).stderr
        or "no such export" in node.admin("exports", "resend", "999999", check=False).stderr
    )

    # Logs at the default level: audit lines, and never the patient's name or ID.
    node.stop()
    log = node.log()
    assert "association from MOBILE_DR at 127.0.0.1:" in log and "1 instance(s) stored" in log
    for e in exports:  # one audit line per result object sent (twice for the resent SR)
        assert f"result {e['kind'].upper()} {e['sop_instance_uid']} to pacs: status 0x0000 (stored)" in log
    assert log.count(f"result SR {sr['sop_instance_uid']} to pacs") == 2
    header = pydicom.dcmread(fresh_j2kr, stop_before_pixels=True)
    for secret in (str(header.PatientName), str(header.PatientID)):
        assert secret not in log, f"{secret!r} appears in the default-level log"

    # Headless Chromium renders the page (no JavaScript needed); the screenshot goes to the docs on request.
    _screenshot(node, tmp_path, orthanc)


def _screenshot(node: Node, tmp_path: Path, orthanc) -> None:
    exe = shutil.which("chromium")
    if exe is None:
        message = "chromium not installed (Debian package chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    node.start()  # same storage and database: the page shows what the first run did
    shot = tmp_path / "status-page.png"
    subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1500,1100",
            f"http://127.0.0.1:{node.web_port}/",
        ],
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"http://127.0.0.1:{node.web_port}/"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "Recent images" in dom and "done" in dom
    assert shot.is_file() and shot.stat().st_size > 10_000
    if os.environ.get("CXR_NODE_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["CXR_NODE_DOCS_SCREENSHOT"])


def test_a_corrupted_image_fails_with_its_reason_and_comes_back_with_retry(tmp_path, orthanc, fresh_j2kr, nodes):
    # A receiver alone first: the image is acknowledged and stored, but no worker takes it yet.
    receiver = Node(tmp_path, orthanc, roles=("receiver",), web=False).start()
    nodes.append(receiver)
    header = pydicom.dcmread(fresh_j2kr, stop_before_pixels=True)
    cli("send", str(fresh_j2kr), "--to", f"CXR_NODE@127.0.0.1:{receiver.port}")
    receiver.stop()
    job = json.loads(receiver.admin("jobs", "list", "--json").stdout)[0]
    assert job["state"] == "queued"
    stored = Path(job["path"])
    good = stored.read_bytes()
    _truncate_codestream(stored)  # the J2K codestream loses its last third after the ACK

    node = Node(tmp_path, orthanc, extra=("--log-format", "json")).start()
    nodes.append(node)
    node.wait_metric("cxr_node_images_failed_total", 1.0, "the job to fail")
    failed = node.admin("jobs", "list", "--state", "failed").stdout.splitlines()
    assert len(failed) == 2  # header + the job
    reason = json.loads(node.admin("jobs", "list", "--state", "failed", "--json").stdout)[0]["why"]
    assert reason and "\n" not in reason and failed[1].endswith(reason)
    assert reason.startswith("PixelData cannot be decoded as JPEG 2000 Image Compression (Lossless Only): "), reason
    assert "J2K" in reason, reason
    assert "failed" in node.http("/") and reason.split(":")[0] in node.http("/")
    assert metric(node.http("/metrics"), "cxr_node_images_failed_total") == 1.0

    stored.write_bytes(good)  # the operator puts the file back
    out = node.admin("jobs", "retry", str(job["id"])).stdout
    assert f"job {job['id']}: queued again" in out
    results_in(orthanc, str(header.StudyInstanceUID), 2)
    # Orthanc holds them a moment before the dispatcher, told success, records the rows as sent
    node.wait_metric('cxr_node_results_exported_total{destination="pacs"}', 2.0, "both exports recorded as sent", 60)
    done = json.loads(node.admin("jobs", "show", str(job["id"]), "--json").stdout)
    assert done["state"] == "done" and done["error"] == "" and [e["state"] for e in done["exports"]] == ["sent", "sent"]
    refused = node.admin("jobs", "retry", str(job["id"]), check=False)
    assert refused.returncode == 1 and "is done, not failed" in refused.stderr
    assert node.admin("jobs", "retry", "--all-failed").stdout.strip() == "no failed jobs"

    # --log-format json: every log line is a JSON object; audit lines carry their fields as keys.
    node.stop()
    records = [json.loads(line) for line in node.log().splitlines()]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    sent = [r for r in records if r.get("event") == "result_sent"]
    assert {r["kind"] for r in sent} == {"sr", "sc"} and all(r["destination"] == "pacs" for r in sent)


def _truncate_codestream(path: Path) -> None:
    """Keep a well-formed DICOM file whose JPEG 2000 codestream stops two thirds of the way."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) * 2 // 3]])
    ds.save_as(path)


def test_admin_commands_refuse_a_missing_database_and_bad_peers(tmp_path):
    out = cli("jobs", "list", "--db", f"sqlite:///{tmp_path / 'none.db'}", check=False)
    assert out.returncode == 1 and "node.db: no database at" in out.stderr
    assert not (tmp_path / "none.db").exists()
    out = cli("echo", f"NOBODY@127.0.0.1:{peers.free_port()}", check=False)
    assert out.returncode == 1 and "no association (nothing listening" in out.stderr
    out = cli("echo", "not-a-peer", check=False)
    assert out.returncode == 2 and "AET@HOST:PORT" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[worker]\nlease_s = -1\n")
    out = cli("config", "check", str(bad), check=False)
    assert out.returncode == 1 and "worker.lease_s" in out.stderr
    assert cli("config", "check", str(Path(__file__).resolve().parents[1] / "configs" / "node.toml")).stdout.endswith(
        "status page off)\n"
    )


def test_send_refuses_what_the_peer_does_not_accept(tmp_path, orthanc, rg1_j2kr):
    # Orthanc accepts JPEG 2000; a file that is not DICOM is left out with a note.
    junk = tmp_path / "dir" / "notes.txt"
    junk.parent.mkdir()
    junk.write_text("not dicom")
    shutil.copyfile(rg1_j2kr, tmp_path / "dir" / "a.dcm")
    out = cli("send", str(tmp_path / "dir"), "--to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", check=False)
    assert out.returncode == 0, out.stderr
    assert "notes.txt: left out" in out.stderr and "1 of 1 file(s) stored" in out.stdout
    # Orthanc rejects a wrong called AET and closes at once; now and then (seen once in CI, Orthanc's
    # log saying "Rejected association") the reset overtakes its A-ASSOCIATE-RJ, and all the sender
    # can say is that the peer went away. A lost RJ is sent again; a received one must be named.
    for _ in range(3):
        out = cli(
            "send", str(tmp_path / "dir" / "a.dcm"), "--to", f"WRONG_AET@127.0.0.1:{orthanc.dicom_port}", check=False
        )
        assert out.returncode == 1, out.stderr
        if "or the peer aborted" not in out.stderr:
            break
    assert "association rejected" in out.stderr, out.stderr
