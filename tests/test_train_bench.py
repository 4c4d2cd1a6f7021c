"""`cxr-node bench train` on the CPU with tiny settings: the command is reachable through the
runtime's CLI (entry point `bench.train`), runs N processes through the real training code and
reports consistent figures. No timing is asserted (benchmarks are written down in docs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.fast.bench import concurrent_rate, makespan

REPO = Path(__file__).resolve().parents[1]
CXR_NODE = str(Path(sys.executable).parent / "cxr-node")
ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")


def test_makespan_packs_longest_first():
    assert makespan([3, 3, 2, 2, 2], 2) == 7
    assert makespan([5, 1, 1], 4) == 5
    assert makespan([1, 1, 1, 1], 1) == 4


def _epoch(start, end, images=100):
    return {"train_images": images, "train_start_unix_seconds": start, "train_end_unix_seconds": end}


def test_concurrent_rate_spans_every_process_last_epoch():
    # two processes staggered by 5 s: each did 100 images in 10 s (10/s), side by side only half the time
    histories = [[_epoch(0, 8), _epoch(10, 20)], [_epoch(5, 13), _epoch(15, 25)]]
    rate, span = concurrent_rate(histories)
    assert span == 15 and rate == pytest.approx(200 / 15)  # not the 20/s the per-process rates sum to
    assert concurrent_rate([[{"train_images": 4, "train_seconds": 1.0}]]) is None  # no stamps: older checkpoints


def test_bench_is_a_sub_command_of_the_runtime_bench_group():
    proc = subprocess.run([CXR_NODE, "bench", "--help"], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 0 and "inference" in proc.stdout and "train" in proc.stdout
    # the runtime itself still imports nothing from training
    probe = "import sys, cxr_node.cli; assert not [m for m in sys.modules if m.split('.')[0] == 'training']"
    assert subprocess.run([sys.executable, "-c", probe], env=ENV, timeout=60).returncode == 0


@pytest.mark.slow
def test_bench_train_on_cpu_two_processes(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            CXR_NODE,
            "bench",
            "train",
            "--device",
            "cpu",
            "--parallel",
            "2",
            "--epochs",
            "2",
            "--images",
            "12",
            "--set",
            "data.input_size=64",
            "--set",
            "model.arch=densenet121",  # what the bench reports is tested here, not DenseNet-161's speed
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=400,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["settings"]["parallel"] == 2 and r["settings"]["training_images_per_process"] == 12
    assert r["settings"]["arch"] == "densenet121"
    assert len(r["per_process"]) == 2
    for p in r["per_process"]:
        assert p["steady_images_per_second"] > 0 and p["first_epoch_images_per_second"] > 0
        assert p["device_memory_peak_bytes"] is None  # CPU: no device allocator to ask
    assert r["aggregate"]["steady_images_per_second"] == pytest.approx(
        sum(p["steady_images_per_second"] for p in r["per_process"])
    )
    agg = r["aggregate"]
    assert agg["concurrent_images_per_second"] > 0 and agg["concurrent_span_seconds"] > 0
    mean_steady = sum(p["steady_images_per_second"] for p in r["per_process"]) / 2
    assert agg["projection_images_per_second_per_process"] <= mean_steady * (1 + 1e-9)
    assert agg["projection_images_per_second_per_process"] <= agg["concurrent_images_per_second"] / 2 + 1e-9
    proj = r["projection"]
    assert (proj["epochs"], proj["repetitions"], proj["parallel"]) == (200, 5, 2)  # the paper config's protocol
    assert len(proj["trainings"]) == 10 and {t["model"] for t in proj["trainings"]} == {"A", "B"}
    assert proj["training_images"] == 200 * sum(t["train"] for t in proj["trainings"])
    # the projection cannot beat the measured aggregate rate
    assert proj["wall_seconds"] >= proj["training_images"] / r["aggregate"]["steady_images_per_second"] * 0.99
    assert "projected full protocol" in proc.stdout and "aggregate" in proc.stdout


@pytest.mark.slow
def test_bench_train_grouped_matmul_with_profile(tmp_path):
    """--mode grouped: the N trainings in one grouped network of this process; --profile times the
    grouped step (here with the batched-GEMM 1x1 convolutions)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            CXR_NODE,
            "bench",
            "train",
            "--device",
            "cpu",
            "--parallel",
            "2",
            "--mode",
            "grouped",
            "--epochs",
            "2",
            "--images",
            "12",
            "--set",
            "data.input_size=64",
            "--set",
            "run.grouped_pointwise=matmul",
            "--set",
            "model.arch=densenet121",
            "--profile",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=400,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    s = r["settings"]
    assert (s["parallel"], s["parallel_mode"], s["grouped_pointwise"], s["arch"]) == (
        2,
        "grouped",
        "matmul",
        "densenet121",
    )
    assert "one grouped network (1x1 convolutions as matmul)" in proc.stderr
    steady = [p["steady_images_per_second"] for p in r["per_process"]]
    assert len(steady) == 2 and steady[0] == steady[1] > 0  # lockstep: one clock for both
    q = r["profile"]
    assert q["models_per_step"] == 2 and q["grouped_pointwise"] == "matmul"
    assert q["images_per_second"] == pytest.approx(2 * 4 / (q["uninstrumented_wall_ms_per_step"] / 1e3))
    assert (tmp_path / "bench.profile.txt").is_file()
    assert "2 trainings grouped in one network (1x1 as matmul" in proc.stdout
