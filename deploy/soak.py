"""Soak the node under load and faults; print acknowledged / delivered / lost / duplicated per scenario.

Run through deploy/soak.sh. Every scenario starts its own node (`cxr-node serve`, untrained
models on the CPU, SQLite unless said otherwise), its own Orthanc as the PACS and sends with
DCMTK storescu (several senders in parallel, one association each). Each image is its own
study, so "delivered" = the SR and the SC of that study are in Orthanc, "lost" = acknowledged
(C-STORE success) but not delivered within the wait, "duplicated" = more than the two result
objects in a study. "refused" counts images that got a failure status and "no answer" those that got
none (node killed mid-association, file not sendable): neither is acknowledged, the modality
keeps them. Lost and duplicated must be 0 everywhere.

Scenarios: load, kill9 (kill -9 rounds while sending and analysing), pacs_outage (Orthanc down
while images arrive), disk_full (a small tmpfs as the storage dir: watermark refusals, then the
disk filled to 100 % while results are written, then freed), postgres_restart (PostgreSQL as the
queue, restarted while images arrive), hostile (20 hostile connections and malformed images next
to the valid senders), hostile_pixels (issue 19: J2K/RLE/Deflated bombs, flat, 1 x 1, sliver and
sliver images, each its own study, next to good ones, under a 4 GiB memory limit - a cgroup
when possible, tests/memlimit.py - with decoder processes killed while /readyz is watched; "not
analysable" and "failed" count hostile images acknowledged and then withheld with a reason).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from tests import peers  # noqa: E402  (Orthanc / PostgreSQL / DCMTK helpers shared with the tests)
from tests.dicom_factory import make_radiograph  # noqa: E402


@dataclass
class Row:
    scenario: str
    sent: int = 0
    acknowledged: int = 0
    refused: int = 0
    unanswered: int = 0  # storescu never got a status (connection lost, node killed, file not sendable)
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    not_analysable: int = 0  # acknowledged, then recorded not analysable with a reason (no class)
    failed: int = 0  # acknowledged, then failed with a reason (no class)
    seconds: float = 0.0
    note: str = ""
    acked_studies: set = field(default_factory=set)


# -- images and senders ------------------------------------------------------------------------


def make_images(directory: Path, count: int, tag: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(tag)) % 2**32)
    out = []
    for i in range(count):
        rows, cols = 256, 208
        yy, xx = np.mgrid[0:rows, 0:cols]
        pixels = 1500 + 1000 * np.sin(xx / (9 + i % 7)) * np.cos(yy / 13.0) + rng.integers(0, 200, (rows, cols))
        ds = make_radiograph(pixels.round().clip(0, 4095), study_uid=generate_uid())
        path = directory / f"{tag}-{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def study_of(path: Path) -> str:
    import pydicom

    with warnings.catch_warnings():  # the malformed images' UIDs are malformed on purpose
        warnings.simplefilter("ignore")
        return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


_SENDING = re.compile(r"Sending file: (\S+)")
_RESPONSE = re.compile(r"Received Store Response \((\w+)")


def storescu(port: int, files: list[Path], timeout_s: float = 600) -> dict[Path, bool | None]:
    """One association for `files`; per file: True on C-STORE success, False on a failure status, None if never answered."""
    if not files:
        return {}
    exe = peers.find_program("storescu")
    try:
        out = subprocess.run([exe, "-v", "-aet", "SOAK", "-aec", "CXR_NODE", "127.0.0.1", str(port), *map(str, files)],
                             capture_output=True, text=True, timeout=timeout_s)
        text = out.stdout + out.stderr
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
    result: dict[Path, bool | None] = {f: None for f in files}
    current = None
    for line in text.splitlines():
        m = _SENDING.search(line)
        if m:
            current = Path(m.group(1))
            continue
        m = _RESPONSE.search(line)
        if m and current is not None:
            result[current] = m.group(1) == "Success"
            current = None
    return result


def pynetdicom_send(port: int, files: list[Path]) -> dict[Path, bool | None]:
    """A hostile sender: pynetdicom sends each data set as it is (DCMTK refuses to read some of them)."""
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title="HOSTILE")
    datasets = {}
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            datasets[f] = pydicom.dcmread(f)
    for ds in datasets.values():
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    result: dict[Path, bool | None] = {f: None for f in files}
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_NODE")
    if not assoc.is_established:
        return result
    try:
        for f, ds in datasets.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                status = assoc.send_c_store(ds)
            result[f] = None if "Status" not in status else status.Status == 0x0000
    finally:
        assoc.release()
    return result


def send_parallel(port: int, files: list[Path], senders: int) -> dict[Path, bool | None]:
    groups = [files[i::senders] for i in range(senders)]
    results: dict[Path, bool | None] = {}
    lock = threading.Lock()

    def run(group):
        r = storescu(port, group)
        with lock:
            results.update(r)

    threads = [threading.Thread(target=run, args=(g,)) for g in groups if g]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- node --------------------------------------------------------------------------------------


class Node:
    def __init__(self, work: Path, pacs_port: int, config: str = "", db: str | None = None, storage: Path | None = None):
        self.work = work
        self.port = peers.free_port()
        self.storage = storage or work / "storage"
        self.config = work / "node.toml"
        self.config.write_text(
            "[worker]\npoll_interval_s = 0.2\nlease_s = 30.0\n"
            "[dispatcher]\nretry_delays_s = [0.5, 1.0, 2.0, 5.0]\n" + config
        )
        self.args = [sys.executable, "-m", "cxr_node.cli", "serve", "--config", str(self.config),
                     "--bind", "127.0.0.1", "--port", str(self.port), "--storage", str(self.storage),
                     "--destination", f"ORTHANC@127.0.0.1:{pacs_port}", "--allow-untrained", "--device", "cpu"]
        if db:
            self.args += ["--db", db]
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Node:
        self.starts += 1
        log = open(self.work / f"serve-{self.starts}.log", "ab")
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=self.work, env=env)
        echo = peers.find_program("echoscu")
        peers.wait_until(lambda: self.proc.poll() is not None or subprocess.run(
            [echo, "-aec", "CXR_NODE", "127.0.0.1", str(self.port)], capture_output=True, timeout=30).returncode == 0,
            300, "the node to answer C-ECHO", interval_s=0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited {self.proc.returncode}; see {self.work}/serve-{self.starts}.log")
        return self

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def results_in_orthanc(orthanc: peers.Orthanc, study: str) -> int:
    """Instances of the study in Orthanc: only the node sends there, so these are its result objects."""
    return len(orthanc.post_json("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}}))


def settle(row: Row, orthanc: peers.Orthanc, all_studies: list[str], wait_s: float) -> None:
    """Wait for every acknowledged study's 2 results (or wait_s), then fill in delivered/lost/duplicated."""
    acked = sorted(row.acked_studies)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if all(results_in_orthanc(orthanc, s) >= 2 for s in acked):
            break
        time.sleep(2)
    time.sleep(3)  # a late duplicate would show up now
    counts = {s: results_in_orthanc(orthanc, s) for s in all_studies}
    row.delivered = sum(1 for s in acked if counts[s] >= 2)
    row.lost = sum(1 for s in acked if counts[s] < 2)
    row.duplicated = sum(max(0, c - 2) for c in counts.values())
    stray = [s for s in all_studies if s not in row.acked_studies and counts[s] > 0]
    if stray:
        row.note += f" {len(stray)} not-acknowledged images got results (re-sent by nobody: check)"


def record(row: Row, results: dict[Path, bool]) -> None:
    row.sent += len(results)
    for path, ok in results.items():
        if ok:
            row.acknowledged += 1
            row.acked_studies.add(study_of(path))
        elif ok is None:
            row.unanswered += 1
        else:
            row.refused += 1


# -- scenarios ---------------------------------------------------------------------------------


def scenario_load(work: Path, a) -> Row:
    row = Row("load")
    pacs = peers.start_orthanc(work / "orthanc")
    node = Node(work, pacs.dicom_port).start()
    try:
        files = make_images(work / "img", a.senders * a.studies, "load")
        record(row, send_parallel(node.port, files, a.senders))
        settle(row, pacs, [study_of(f) for f in files], a.wait)
    finally:
        node.stop()
        peers.stop_process(pacs.process)
    row.note = f"{a.senders} senders x {a.studies} studies"
    return row


def scenario_kill9(work: Path, a) -> Row:
    row = Row("kill9")
    pacs = peers.start_orthanc(work / "orthanc")
    node = Node(work, pacs.dicom_port).start()
    all_files = []
    rng = random.Random(11)
    try:
        for r in range(a.kill_rounds):
            files = make_images(work / f"img{r}", a.per_round, f"kill{r}")
            all_files += files
            results: dict[Path, bool] = {}
            sender = threading.Thread(target=lambda f=files, r=results: r.update(send_parallel(node.port, f, a.senders)))
            sender.start()
            time.sleep(rng.uniform(0.5, 3.0))  # while images arrive or are analysed
            node.kill9()
            sender.join()
            record(row, results)
            node.start()
        settle(row, pacs, [study_of(f) for f in all_files], a.wait)
    finally:
        node.stop()
        peers.stop_process(pacs.process)
    row.note = f"{a.kill_rounds} rounds of {a.per_round} images, kill -9 0.5-3 s into each"
    return row


def scenario_pacs_outage(work: Path, a) -> Row:
    row = Row("pacs_outage")
    pacs = peers.start_orthanc(work / "orthanc")
    node = Node(work, pacs.dicom_port).start()
    try:
        peers.stop_process(pacs.process)  # the PACS goes away
        files = make_images(work / "img", a.per_round * 2, "outage")
        record(row, send_parallel(node.port, files, a.senders))
        time.sleep(a.outage)
        pacs = peers.start_orthanc(work / "orthanc", dicom_port=pacs.dicom_port)  # back, same storage
        settle(row, pacs, [study_of(f) for f in files], a.wait)
    finally:
        node.stop()
        peers.stop_process(pacs.process)
    row.note = f"Orthanc down for {a.outage:g} s while images arrived"
    return row


def _free_mib(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**20


def _fill(path: Path, leave_mib: float) -> Path:
    filler = path / "filler.bin"
    with open(filler, "ab") as fh:
        chunk = b"\0" * 2**20
        try:
            while _free_mib(path) > leave_mib + 1:
                fh.write(chunk)
                fh.flush()
        except OSError:
            pass
    return filler


def scenario_disk_full(work: Path, a) -> Row:
    row = Row("disk_full")
    mnt = work / "small-fs"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0750", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        row.note = f"NOT RUN: cannot mount a tmpfs ({mounted.stderr.strip()}); needs root"
        return row
    pacs = peers.start_orthanc(work / "orthanc")
    # The queue database lives off the small file system, so what fills up is the storage alone.
    node = Node(work, pacs.dicom_port, "[receiver]\nmin_free_mb = 16.0\n", db=f"sqlite:///{work / 'q.db'}",
                storage=mnt / "storage")
    try:
        node.start()
        filler = _fill(mnt, leave_mib=8)  # under the watermark: refused with 0xA700
        refused = make_images(work / "img-a", a.per_round, "full-a")
        record(row, send_parallel(node.port, refused, a.senders))
        filler.unlink()
        files = make_images(work / "img-b", a.per_round * 2, "full-b")
        record(row, send_parallel(node.port, files, a.senders))
        filler = _fill(mnt, leave_mib=0)  # 100 % while the results are being written
        time.sleep(a.outage)
        filler.unlink()
        settle(row, pacs, [study_of(f) for f in refused + files], a.wait)
    finally:
        node.stop()
        peers.stop_process(pacs.process)
        subprocess.run(["umount", str(mnt)], capture_output=True)
    row.note = (f"64 MiB tmpfs: {a.per_round} sent under min_free_mb (0xA700 expected), then "
                f"{a.per_round * 2} acknowledged and the disk filled to 100 % for {a.outage:g} s")
    return row


def scenario_postgres_restart(work: Path, a) -> Row:
    row = Row("postgres_restart")
    pg = peers.start_postgres()
    pacs = peers.start_orthanc(work / "orthanc")
    node = Node(work, pacs.dicom_port, db=pg.url).start()
    try:
        files = make_images(work / "img", a.per_round * 3, "pg")
        results: dict[Path, bool] = {}
        sender = threading.Thread(target=lambda: results.update(send_parallel(node.port, files, a.senders)))
        sender.start()
        time.sleep(1.0)
        pg_ctl = str(Path(peers.find_program("initdb")).parent / "pg_ctl")
        # -l: the restarted server must not inherit this process's pipes (run() would wait for them)
        peers._as_postgres_user([pg_ctl, "-D", str(pg.datadir), "-l", str(pg.workdir / "pg.log"), "-m", "fast",
                                 "-w", "restart"], timeout=120)
        sender.join()
        record(row, results)
        settle(row, pacs, [study_of(f) for f in files], a.wait)
    finally:
        node.stop()
        peers.stop_process(pacs.process)
        peers.stop_postgres(pg)
    row.note = "PostgreSQL restarted (pg_ctl -m fast) 1 s into the sends"
    return row


def _hostile_sockets(port: int) -> list[socket.socket]:
    out = []
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2 == 0:  # half an A-ASSOCIATE-RQ declaring 4 GB
            s.sendall(struct.pack(">BBL", 1, 0, 0xFFFFFFFF) + struct.pack(">HH", 1, 0) + b"CXR_NODE".ljust(16) + b"EVIL".ljust(16))
        out.append(s)
    return out


def _malformed(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cases = {}
    base = generate_uid()
    ds = make_radiograph(np.zeros((64, 48)), study_uid=f"{base[:40]}.2:2")
    cases["uid-colon"] = ds
    ds = make_radiograph(np.zeros((64, 48)), study_uid=f"{base[:40]}.2;2")
    cases["uid-semicolon"] = ds
    ds = make_radiograph(np.zeros((64, 48)))
    ds.PixelData = ds.PixelData[:1000]
    cases["cut-short"] = ds
    ds = make_radiograph(np.zeros((32, 64)))
    ds.Rows = ds.Columns = 30000
    cases["30000x30000"] = ds
    ds = make_radiograph(np.zeros((64, 48)))
    ds.SamplesPerPixel = 3
    cases["spp3"] = ds
    ds = make_radiograph(np.zeros((64, 48)))
    ds.NumberOfFrames = 5
    cases["frames5"] = ds
    ds = make_radiograph(np.zeros((64, 48)))
    ds.SpecificCharacterSet = "ISO_IR 999"
    cases["charset"] = ds
    paths = []
    for name, ds in cases.items():
        path = directory / f"{name}.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def scenario_hostile(work: Path, a) -> Row:
    row = Row("hostile")
    pacs = peers.start_orthanc(work / "orthanc")
    node = Node(work, pacs.dicom_port).start()
    sockets: list[socket.socket] = []
    try:
        sockets = _hostile_sockets(node.port)
        bad = _malformed(work / "bad")
        files = make_images(work / "img", a.per_round * 2, "hostile")
        results: dict[Path, bool | None] = {}
        hostile = threading.Thread(target=lambda: results.update(pynetdicom_send(node.port, bad)))
        hostile.start()
        results.update(send_parallel(node.port, files, a.senders))
        hostile.join()
        record(row, results)
        bad_acked = [p.name for p in bad if results.get(p)]
        studies = [study_of(f) for f in files + bad]
        settle(row, pacs, studies, a.wait)
        row.note = (f"20 hostile connections open + {len(bad)} malformed images (bad UIDs, cut short, "
                    f"30000x30000, SPP 3, 5 frames, bad charset; sent by pynetdicom) beside {len(files)} valid (storescu)")
        if bad_acked:
            row.note += f"; MALFORMED ACKNOWLEDGED: {bad_acked}"
    finally:
        for s in sockets:
            s.close()
        node.stop()
        peers.stop_process(pacs.process)
    return row


# -- hostile pixels (issue 19) -----------------------------------------------------------------

MEMORY_LIMIT = 4 * 2**30


def _hostile_pixel_images(directory: Path) -> dict[str, Path]:
    """Each its own study: bombs the header gives away, bombs within the pixel budget, images without information."""
    from tests.bombs import deflated_bomb, j2k_bomb, rle_bomb

    directory.mkdir(parents=True, exist_ok=True)
    side = 5792  # 5792^2 x 2 bytes = 64 MiB = decoding.max_pixel_bytes: admitted, ~1.1 GB to decode
    cases = {
        "j2k-20000": j2k_bomb(20000, 20000),
        "rle-20000": rle_bomb(20000, 20000),
        "deflated-15000": deflated_bomb(15000, 15000),
        "j2k-5792": j2k_bomb(side, side),
        "rle-5792": rle_bomb(side, side),
        "flat": make_radiograph(np.full((512, 400), 1000)),
        "1x1": make_radiograph(np.full((1, 1), 1000)),
        "sliver-3x4000": make_radiograph(np.tile(np.arange(4000) % 4096, (3, 1))),
    }
    paths = {}
    for name, ds in cases.items():
        path = directory / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths[name] = path
    return paths


def _job_states(storage: Path) -> dict[str, tuple[str, str | None]]:
    import sqlite3

    with sqlite3.connect(storage / "cxr-node.db") as conn:
        rows = conn.execute(
            "select i.study_instance_uid, j.state, j.error from jobs j join instances i on i.id = j.instance_id"
        ).fetchall()
    return {study: (state, error) for study, state, error in rows}


def _readyz(port: int) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _decoder_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def scenario_hostile_pixels(work: Path, a) -> Row:
    """Pixel bombs and images without information, each in its own study, next to good images,
    under a 4 GiB memory limit; then decoder processes killed twice for real while /readyz is watched."""
    from tests.memlimit import memory_limit

    row = Row("hostile_pixels")
    limit = memory_limit(MEMORY_LIMIT, "cxr-soak")
    pacs = peers.start_orthanc(work / "orthanc")
    web_port = peers.free_port()
    node = Node(work, pacs.dicom_port, f"[web]\nenabled = true\nport = {web_port}\n")
    node.args = limit.wrap(node.args)
    try:
        node.start()
        pid = node.proc.pid
        hostile = _hostile_pixel_images(work / "hostile")
        results = pynetdicom_send(node.port, list(hostile.values()))
        good = make_images(work / "good", a.per_round, "pixels-good")
        results.update(send_parallel(node.port, good, a.senders))
        # three good images in one association with an in-budget bomb among them
        mixed = make_images(work / "mixed", 3, "pixels-mixed")
        from tests.bombs import j2k_bomb

        mixed_bomb = work / "mixed" / "j2k-5792-mixed.dcm"
        j2k_bomb(5792, 5792).save_as(mixed_bomb, enforce_file_format=True)
        results.update(pynetdicom_send(node.port, [mixed[0], mixed_bomb, mixed[1], mixed[2]]))
        record(row, results)
        hostile_paths = [*hostile.values(), mixed_bomb]
        good_acked = {study_of(p) for p in [*good, *mixed] if results.get(p)}
        hostile_acked = {study_of(p): p.stem for p in hostile_paths if results.get(p)}

        # wait for every good study's results and every hostile job's end
        row.acked_studies = set(good_acked)
        settle(row, pacs, [study_of(p) for p in [*good, *mixed]], a.wait)
        deadline = time.monotonic() + a.wait
        while time.monotonic() < deadline:
            states = _job_states(node.storage)
            if all(states.get(s, ("queued",))[0] not in ("queued", "running") for s in hostile_acked):
                break
            time.sleep(2)
        states = _job_states(node.storage)
        given_a_class = []
        for study, name in hostile_acked.items():
            state, error = states.get(study, ("missing", None))
            if state == "not_analysable":
                row.not_analysable += 1
            elif state == "failed":
                row.failed += 1
            else:
                row.lost += 1  # neither a result withheld with a reason nor anything else: unaccounted
            if results_in_orthanc(pacs, study) or state == "done":
                given_a_class.append(name)
            print(f"  {name}: {state}: {error}", file=sys.stderr)
        # /readyz while decoder processes are killed for real, twice, once the queue is empty (a kill
        # during a decode would count against that image), then one more good image
        ready_notes = []
        for _ in range(2):
            killed_at = time.monotonic()
            for child in _decoder_pids(pid):
                os.kill(child, signal.SIGKILL)
            not_ready = None
            while time.monotonic() - killed_at < 120:
                code = _readyz(web_port)
                if code == 503 and not_ready is None:
                    not_ready = time.monotonic() - killed_at
                if code == 200 and not_ready is not None:
                    break
                time.sleep(0.05)
            back = time.monotonic() - killed_at
            ready_notes.append("never not-ready" if not_ready is None else f"503 after {not_ready:.1f} s, 200 after {back:.1f} s")
        after = make_images(work / "after", 1, "pixels-after")
        after_ok = storescu(node.port, after).get(after[0])
        after_delivered = False
        deadline = time.monotonic() + a.wait
        while after_ok and time.monotonic() < deadline and not after_delivered:
            after_delivered = results_in_orthanc(pacs, study_of(after[0])) >= 2
            time.sleep(2)
        alive = node.proc.poll() is None and node.proc.pid == pid
        peak, kills = limit.peak_bytes(), limit.oom_kills()
        row.note = (
            f"{limit.how}; peak {'?' if peak is None else f'{peak / 2**30:.2f} GiB'}, OOM kills "
            f"{'?' if kills is None else kills}, node {'never restarted' if alive else 'DIED'}; "
            f"{len(hostile_paths)} hostile (refused {sum(1 for p in hostile_paths if results.get(p) is False)}), "
            f"{len(good) + len(mixed)} good; /readyz with decoders killed: {'; '.join(ready_notes)}; a good image "
            f"after: {'delivered' if after_delivered else 'NOT DELIVERED'}"
        )
        if given_a_class:
            row.note += f"; HOSTILE GIVEN A CLASS: {given_a_class}"
        if not alive:
            row.note += "; NODE DIED"
    finally:
        node.stop()
        peers.stop_process(pacs.process)
        limit.close()
    return row


SCENARIOS = {
    "load": scenario_load,
    "kill9": scenario_kill9,
    "pacs_outage": scenario_pacs_outage,
    "disk_full": scenario_disk_full,
    "postgres_restart": scenario_postgres_restart,
    "hostile": scenario_hostile,
    "hostile_pixels": scenario_hostile_pixels,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--studies", type=int, default=25, help="studies per sender in the load scenario")
    p.add_argument("--kill-rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=8, help="images per round / per fault scenario step")
    p.add_argument("--outage", type=float, default=20.0, help="seconds the PACS is down / the disk is full")
    p.add_argument("--wait", type=float, default=900.0, help="seconds to wait for the results of acknowledged images")
    p.add_argument("--only", action="append", choices=list(SCENARIOS), help="run only these scenarios")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args(argv)
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # malformed test images are malformed on purpose

    root = Path(tempfile.mkdtemp(prefix="cxr-soak-"))
    rows = []
    started = time.monotonic()
    try:
        for name in a.only or SCENARIOS:
            work = root / name
            work.mkdir()
            t0 = time.monotonic()
            try:
                row = SCENARIOS[name](work, a)
            except Exception as exc:  # a scenario that cannot run says why; the others still run
                row = Row(name, note=f"ERROR: {type(exc).__name__}: {exc}")
            row.seconds = time.monotonic() - t0
            rows.append(row)
            print(f"{name}: done in {row.seconds:.0f} s", file=sys.stderr, flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"cxr-node soak, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, total {time.monotonic() - started:.0f} s")
    print()
    print("| scenario | sent | acknowledged | refused | no answer | not analysable | failed | delivered | lost | duplicated "
          "| seconds | notes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.scenario} | {r.sent} | {r.acknowledged} | {r.refused} | {r.unanswered} | {r.not_analysable} | "
              f"{r.failed} | {r.delivered} | {r.lost} | {r.duplicated} | {r.seconds:.0f} | {r.note.strip()} |")
    flags = ("ERROR", "MALFORMED", "GIVEN A CLASS", "NODE DIED", "NOT DELIVERED")
    bad = [r.scenario for r in rows if r.lost or r.duplicated or any(f in r.note for f in flags)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
