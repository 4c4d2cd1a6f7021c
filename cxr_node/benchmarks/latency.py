"""`cxr-node bench latency`: seconds from `dcmsend` of a radiograph to its SR and SC stored in a real Orthanc.

Starts a private Orthanc (Debian `orthanc`) and `cxr-node serve` (the installed console code, its own
process, SQLite in a temp dir), sends one warm-up image, then N copies of RG1_J2KR.dcm with fresh
UIDs one after another with DCMTK `dcmsend`, and for each waits until Orthanc's REST API lists both
result objects in the study (polled every `--look-s`). Per image it also reads what the node recorded:
stage seconds, receipt -> result, result -> last export sent. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import click

from cxr_node.benchmarks.sending import free_port, fresh_copies, program, stop, timed_dcmsend, wait_until

DECODE_MODES = ("reduced", "full", "both")


@dataclass
class Orthanc:
    proc: subprocess.Popen
    dicom_port: int
    http_port: int

    def post(self, path: str, body: dict):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def count(self, study_uid: str) -> int:
        return len(self.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}))

    def holds(self, study_uid: str, n: int) -> bool:
        return self.count(study_uid) >= n

    def alive(self) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/system", timeout=2).read()
            return True
        except OSError:
            return False


def start_orthanc(workdir: Path) -> Orthanc:
    exe = program("Orthanc", "orthanc")
    dicom_port, http_port = free_port(), free_port()
    cfg = {
        "Name": "cxr-bench",
        "StorageDirectory": str(workdir / "orthanc"),
        "IndexDirectory": str(workdir / "orthanc"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "Plugins": [],
    }
    (workdir / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        [exe, str(workdir / "orthanc.json")], stdout=open(workdir / "orthanc.log", "wb"), stderr=subprocess.STDOUT
    )
    orthanc = Orthanc(proc, dicom_port, http_port)
    wait_until(lambda: proc.poll() is not None or orthanc.alive(), 60, "Orthanc")
    return orthanc


@dataclass
class Sample:
    seconds: float  # dcmsend start -> both objects listed by Orthanc
    dcmsend_s: float
    recorded: dict = field(default_factory=dict)


def _recorded(db_url: str, sop_uid: str) -> dict:
    """What the node wrote down for this image: stage seconds and the hand-off times."""
    from cxr_node.queue.reports import Reports
    from cxr_node.queue.tables import make_engine

    engine = make_engine(db_url)
    try:
        reports = Reports(engine)
        job = reports.find_job(sop_uid)
        exports = reports.list_exports(job_id=job.id) if job else []
    finally:
        engine.dispose()
    if job is None or job.result_at is None or job.received_at is None:
        return {}
    last_sent = max((e.sent_at for e in exports if e.sent_at), default=None)
    return {
        **{k: v for k, v in job.timings.items() if isinstance(v, (int, float))},
        "received_to_result": (job.result_at - job.received_at).total_seconds(),
        "result_to_sent": (last_sent - job.result_at).total_seconds() if last_sent else None,
    }


def run_latency_bench(image: Path, sends: int, look_s: float, workdir: Path, serve_args: list[str]) -> dict:
    program("dcmsend")  # before anything is started
    orthanc = start_orthanc(workdir)
    port = free_port()
    storage = workdir / "node"
    db_url = f"sqlite:///{storage / 'cxr-node.db'}"
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxr_node.cli",
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage",
            str(storage),
            "--destination",
            f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
            "--no-web",
            *serve_args,
        ],
        stdout=open(workdir / "serve.log", "wb"),
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")},
    )
    try:
        wait_until(
            lambda: (
                serve.poll() is not None or "cxr-node: roles" in (workdir / "serve.log").read_text(errors="replace")
            ),
            300,
            "cxr-node serve to start",
        )
        if serve.poll() is not None:
            raise click.ClickException(f"serve exited: {(workdir / 'serve.log').read_text()[-2000:]}")
        copies = fresh_copies(image, workdir, sends + 1)
        samples = []
        load_before = os.getloadavg()
        for i, copy in enumerate(copies):
            t0 = time.perf_counter()
            dcmsend_s = timed_dcmsend(port, [copy.path], "the node", timeout_s=120)
            wait_until(partial(orthanc.holds, copy.study_uid, 2), 300, "SR and SC in Orthanc", interval_s=look_s)
            seconds = time.perf_counter() - t0
            if i == 0:
                continue  # warm-up: first-use costs (lazy imports, allocator growth) are not the steady state
            samples.append(Sample(seconds, dcmsend_s, _recorded(db_url, copy.sop_uid)))
        load_after = os.getloadavg()
    finally:
        stop(serve, 60)
        stop(orthanc.proc)
    return _summary(samples, sends, look_s, load_before, load_after)


def _summary(samples: list[Sample], sends: int, look_s: float, load_before, load_after) -> dict:
    secs = sorted(s.seconds for s in samples)
    stages: dict[str, list[float]] = {}
    for s in samples:
        for k, v in s.recorded.items():
            if v is not None:
                stages.setdefault(k, []).append(v)
    return {
        "sends": sends,
        "look_interval_s": look_s,
        "p50_s": statistics.median(secs),
        "min_s": secs[0],
        "max_s": secs[-1],
        "p90_s": secs[min(len(secs) - 1, int(round(0.9 * (len(secs) - 1))))],
        "dcmsend_p50_s": statistics.median(s.dcmsend_s for s in samples),
        "stage_p50_s": {k: statistics.median(v) for k, v in stages.items()},
        "seconds": [round(s, 3) for s in (x.seconds for x in samples)],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def report(result: dict) -> str:
    lines = [
        f"{result['sends']} sends of {result.get('image', 'RG1_J2KR.dcm')} (after 1 warm-up), dcmsend -> SR and SC listed by Orthanc "
        f"(looked every {result['look_interval_s'] * 1000:.0f} ms)",
        f"  p50 {result['p50_s']:.2f} s   p90 {result['p90_s']:.2f} s   min {result['min_s']:.2f} s   max {result['max_s']:.2f} s",
        f"  dcmsend itself p50 {result['dcmsend_p50_s']:.2f} s",
        "  node's own record, p50 per image:",
    ]
    for k, v in result["stage_p50_s"].items():
        lines.append(f"    {k:<20} {v:.3f} s")
    lines.append(
        f"  {result['cpus']} CPUs, load average before {result['loadavg_before']} after {result['loadavg_after']}, {result['date']}"
    )
    return "\n".join(lines)


@click.command("latency")
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Radiograph to send [default: RG1_J2KR.dcm from pydicom-data].",
)
@click.option("--sends", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--look-s", type=float, default=0.02, show_default=True, help="Seconds between looks at Orthanc.")
@click.option(
    "--models", type=click.Path(path_type=Path), default=None, help="Model bundle [default: untrained weights]."
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--decode",
    type=click.Choice(DECODE_MODES),
    default="reduced",
    show_default=True,
    help="The node's analysis.reduced_decode: reduced, full, or both one after the other (side by side).",
)
@click.option("--json", "as_json", is_flag=True)
def command(image, sends, look_s, models, device, decode, as_json) -> None:
    """Median seconds from dcmsend to SR + SC stored in a real Orthanc (starts both itself)."""
    if image is None:
        from pydicom.data import get_testdata_file

        image = Path(str(get_testdata_file("RG1_J2KR.dcm")))
    results = {}
    for mode in ("full", "reduced") if decode == "both" else (decode,):
        with tempfile.TemporaryDirectory(prefix="cxr-latency-") as tmp:
            config = Path(tmp) / "latency.toml"
            config.write_text(f"[analysis]\nreduced_decode = {'true' if mode == 'reduced' else 'false'}\n")
            serve_args = [
                "--config",
                str(config),
                "--device",
                device,
                *(["--models", str(models)] if models else ["--allow-untrained"]),
            ]
            run = run_latency_bench(image, sends, look_s, Path(tmp), serve_args)
            results[mode] = {"decode": mode, "image": image.name, **run}
    if as_json:
        click.echo(json.dumps(results if decode == "both" else results[decode], indent=1))
        return
    click.echo("\n\n".join(f"decode {mode}:\n{report(r)}" for mode, r in results.items()))


if __name__ == "__main__":  # pragma: no cover
    command()
