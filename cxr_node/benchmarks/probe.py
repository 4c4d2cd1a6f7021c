"""The worker-like memory probe: what a worker process holds at its peak.

Run in a fresh interpreter (a forked child would inherit the parent's peak):

    python -m cxr_node.benchmarks.probe --image RG1_J2KR.dcm --input-size 224 --device cpu --batch 4

It does what `serve`'s worker does: malloc settings at start-up, both models loaded, then two
batches through cxr_node.processing.process_batch (decode, header, analysis, SR + SC written
durably). Decoding runs in a thread of this process, not in the worker's process pool, so the
decoded images are counted here as they are in the worker (which receives them from its pool).
Prints one JSON object: VmHWM after the models loaded and at the end, in MiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset

PROBE_TIMEOUT_S = 600


def own_peak_mb() -> float | None:
    """Peak RSS of this process image (VmHWM). ru_maxrss survives fork + exec on Linux, so a
    child would report its parent's peak; VmHWM belongs to the new address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def result_dirs(root: Path, prefix: str) -> Callable[[int, Dataset], Path]:
    """process_batch's out_dir: image i of the batch -> root/<prefix><i>."""
    return lambda i, _header: root / f"{prefix}{i}"


def worker_rss_probe(image: Path, models: Path | None, input_size: int, device: str, batch: int) -> dict:
    """Two batches of `batch` copies of `image` through the worker's processing path."""
    from cxr_node.analysis.bundle import load_bundle, untrained_bundle
    from cxr_node.analysis.engine import Analyzer
    from cxr_node.decoding.pool import DecodePool
    from cxr_node.memory import tune_malloc
    from cxr_node.processing import process_batch
    from cxr_node.results.identity import ModelIdentity, NodeIdentity
    from cxr_node.results.writer import warm_up

    tune_malloc()  # as serve does before Node.build
    bundle = load_bundle(models) if models else untrained_bundle(input_size)
    analyzer = Analyzer(bundle, device)
    warm_up()
    after_load = own_peak_mb()
    node, model = NodeIdentity("CXR_NODE"), ModelIdentity.from_bundle(bundle)
    with tempfile.TemporaryDirectory(prefix="cxr-probe-") as tmp, DecodePool(kind="thread", workers=1) as pool:
        for round_ in range(2):
            outcomes = process_batch(
                [image] * batch, analyzer, node, model, result_dirs(Path(tmp), f"{round_}-"), pool.decode_many
            )
            failed = [o.error for o in outcomes if not o.ok]
            if failed:
                raise RuntimeError(failed[0])
            # Worker.run_once drops a batch's outcomes (and their source-grid CAMs) before the next one.
            del outcomes
    peak = own_peak_mb()
    return {
        "after_model_load_mb": round(after_load, 1) if after_load else None,
        "peak_mb": round(peak, 1) if peak else None,
        "batch": batch,
        "measure": "VmHWM",
    }


def run_probe(image: Path, models: Path | None, input_size: int, device: str, batch: int) -> dict:
    """worker_rss_probe in a fresh interpreter; {"error": last line of its stderr} if it fails."""
    args = [
        sys.executable,
        "-m",
        "cxr_node.benchmarks.probe",
        "--image",
        str(image),
        "--input-size",
        str(input_size),
        "--device",
        device,
        "--batch",
        str(batch),
    ]
    if models:
        args += ["--models", str(models)]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"worker-like probe took more than {PROBE_TIMEOUT_S} s"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxr_node.benchmarks.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    a = parser.parse_args(argv)
    print(json.dumps(worker_rss_probe(a.image, a.models, a.input_size, a.device, a.batch)))


if __name__ == "__main__":
    main()
