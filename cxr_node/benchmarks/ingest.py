"""`cxr-node bench ingest`: seconds to receive N radiographs durably, next to DCMTK storescp.

One `dcmsend` association sends the same N files (copies of RG1_UNCR.dcm, 7.2 MB each, with fresh
UIDs) to each receiver in turn, started fresh for every run on a free loopback port:

  storescp   DCMTK `storescp --output-directory DIR` (writes each file; no fsync)
  node       `cxr-node serve --role receiver` from this source tree (fsync + rename + committed row
             before each success, SQLite in the run's directory)
  baseline   the same from another source tree (`--baseline-tree DIR`, e.g. a git worktree of the
             commit before a change), so before and after are measured side by side in one run

Receivers take turns round by round (storescp, node, baseline, then again), so other load on a
shared machine falls on all of them alike. The figure is dcmsend's wall time for all N; after each
run the files (storescp) or the committed rows (node) are counted, so a run that lost an image
fails instead of looking fast. The load average is read before and after. Figures go to
docs/benchmarks.md; nothing here is asserted on time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from cxr_node.benchmarks.sending import NODE_AET, free_port, fresh_copies, listening, program, stop, timed_dcmsend


@dataclass
class Receiver:
    """A receiver to time: how to start it in `workdir` on `port`, and how many images it holds."""

    name: str
    tree: Path | None  # a source tree for `cxr-node serve`; None: DCMTK storescp

    def start(self, workdir: Path, port: int) -> subprocess.Popen:
        log = open(workdir / f"{self.name}.log", "wb")
        if self.tree is None:
            out = workdir / "storescp"
            out.mkdir()
            args = [program("storescp"), "--output-directory", str(out), "-aet", NODE_AET, str(port)]
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        args = [sys.executable, "-m", "cxr_node.cli", "serve", "--role", "receiver", "--no-web"]
        args += ["--bind", "127.0.0.1", "--port", str(port), "--storage", str(workdir / "node")]
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)

    def held(self, workdir: Path) -> int:
        if self.tree is None:
            return sum(1 for p in (workdir / "storescp").iterdir() if p.is_file())
        with sqlite3.connect(workdir / "node" / "cxr-node.db") as conn:
            return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_one(receiver: Receiver, files: list[Path], workdir: Path) -> tuple[float, float]:
    """dcmsend's wall time for `files` in one association to a freshly started `receiver`, and the
    CPU seconds the receiver used meanwhile (less sensitive than wall time to other load)."""
    workdir.mkdir(parents=True)
    port = free_port()
    proc = receiver.start(workdir, port)
    try:
        deadline = time.monotonic() + 120
        while not listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (workdir / f"{receiver.name}.log").read_text(errors="replace")[-2000:]
                raise click.ClickException(f"{receiver.name} did not start listening:\n{log}")
            time.sleep(0.05)
        cpu0 = _cpu_s(proc.pid)
        seconds = timed_dcmsend(port, files, receiver.name, options=("-ma", "-dn"))
        cpu = _cpu_s(proc.pid) - cpu0
    finally:
        stop(proc)
    held = receiver.held(workdir)
    if held != len(files):
        raise click.ClickException(f"{receiver.name} holds {held} of {len(files)} images after the run")
    return seconds, cpu


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_ingest_bench(
    image: Path, images: int, rounds: int, tree: Path, baseline: Path | None, workdir: Path, progress=None
) -> dict:
    files = [copy.path for copy in fresh_copies(image, workdir / "images", images)]
    size_mb = sum(p.stat().st_size for p in files) / len(files) / 1e6
    receivers = [Receiver("storescp", None), Receiver("node", tree)]
    if baseline is not None:
        receivers.append(Receiver("baseline", baseline))
    seconds: dict[str, list[float]] = {r.name: [] for r in receivers}
    cpu: dict[str, list[float]] = {r.name: [] for r in receivers}
    loads: list[list[float]] = []
    for i in range(rounds):
        for receiver in receivers:
            load = _load()
            s, c = time_one(receiver, files, workdir / f"round{i}-{receiver.name}")
            seconds[receiver.name].append(round(s, 3))
            cpu[receiver.name].append(round(c, 2))
            loads.append(load)
            if progress:
                progress(f"round {i + 1}: {receiver.name} {s:.2f} s, receiver CPU {c:.2f} s (load {load[0]})")
    median = {name: statistics.median(v) for name, v in seconds.items()}
    return {
        "images": images,
        "image": image.name,
        "image_mb": round(size_mb, 2),
        "rounds": rounds,
        "seconds": seconds,
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "receiver_cpu_s": cpu,
        "median_receiver_cpu_s": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
        "node_over_storescp": round(median["node"] / median["storescp"], 3),
        "baseline_over_storescp": round(median["baseline"] / median["storescp"], 3) if baseline else None,
        "loadavg_per_run": loads,
        "loadavg_end": _load(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def report(r: dict) -> str:
    lines = [
        f"{r['images']} x {r['image']} ({r['image_mb']} MB) in one dcmsend association, {r['rounds']} rounds, "
        f"receivers in turn; {r['cpus']} CPUs, {r['date']}",
    ]
    for name, secs in r["seconds"].items():
        lines.append(
            f"  {name:<9} median {r['median_s'][name]:.2f} s   runs {', '.join(f'{s:.2f}' for s in secs)}   "
            f"receiver CPU median {r['median_receiver_cpu_s'][name]:.2f} s"
        )
    lines.append(f"  node / storescp = {r['node_over_storescp']:.2f}")
    if r["baseline_over_storescp"] is not None:
        lines.append(f"  baseline / storescp = {r['baseline_over_storescp']:.2f}")
    lines.append(
        f"  load average (1 min) before each run: {[x[0] for x in r['loadavg_per_run']]}, end {r['loadavg_end']}"
    )
    return "\n".join(lines)


@click.command("ingest")
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Image to send [default: RG1_UNCR.dcm from pydicom-data, 7.2 MB uncompressed].",
)
@click.option("--images", type=click.IntRange(1, 10000), default=40, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option(
    "--baseline-tree",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Also time `serve` from this source tree (e.g. a worktree of the previous commit).",
)
@click.option("--json", "as_json", is_flag=True)
def command(image, images, rounds, baseline_tree, as_json) -> None:
    """dcmsend of N radiographs to storescp and to the node's receiver (and a baseline tree), in turn."""
    if image is None:
        from pydicom.data import get_testdata_file

        image = Path(str(get_testdata_file("RG1_UNCR.dcm")))
    tree = Path(__file__).resolve().parents[2]  # the tree this code runs from
    with tempfile.TemporaryDirectory(prefix="cxr-ingest-") as tmp:
        result = run_ingest_bench(
            image,
            images,
            rounds,
            tree,
            baseline_tree.resolve() if baseline_tree else None,
            Path(tmp),
            progress=None if as_json else (lambda m: click.echo(f"... {m}", err=True)),
        )
    click.echo(json.dumps(result, indent=1) if as_json else report(result))
