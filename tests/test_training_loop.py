"""Training loop: exact resume after an interruption, refusal of foreign checkpoints, and DDP
with torchrun + gloo on CPU (2 processes). Synthetic images at 64 px keep it short."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_node.analysis.bundle import load_bundle
from training.config import config_from_dict
from training.data import load_data
from training.dataset import Augment, SquareDataset
from training.distributed import DistEnv
from training.fast import ENGINE
from training.loop import PLAIN, CheckpointMismatch, fit
from training.metrics import target_a
from training.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "run": {"name": "tiny", "repetitions": 1, "num_workers": 0, "device": "cpu"},
    "data": {"input_size": 64},  # at 32 px the last dense block sees 1x1 maps and BatchNorm blows up
    "model": {"init": "scratch", "arch": "densenet121"},  # the loop is tested, not the network
    "optim": {"batch_size": 4, "epochs": 2},
    "report": {"gradcam_examples": 1},
}


class Interrupted(Exception):
    pass


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # each trains DenseNet-121s


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_synthetic(tmp_path_factory.mktemp("tiny"), patients_per_label=5, images_per_patient=2, size=40)
    data = load_data(folder, 32)
    idx = np.random.default_rng(0).permutation(len(data.samples))
    cfg = config_from_dict(TINY)

    def sets():
        train = SquareDataset(data.squares, idx[:20], target_a(data.labels[idx[:20]]), Augment(0.9, 1.1, 0.5), seed=5)
        val = SquareDataset(data.squares, idx[20:], target_a(data.labels[idx[20:]]))
        return train, val

    return folder, cfg, sets


def _fit(cfg, sets, stem, fingerprint="fp", on_epoch_end=None, engine=ENGINE):
    train, val = sets()
    return fit(
        cfg=cfg,
        train_set=train,
        val_set=val,
        imagenet_weights=None,
        device=torch.device("cpu"),
        env=DistEnv(),
        ckpt_stem=stem,
        fingerprint=fingerprint,
        seed=5,
        label="t",
        log=lambda m: None,
        on_epoch_end=on_epoch_end,
        engine=engine,
    )


def test_interrupted_run_resumes_to_the_same_weights(tiny, tmp_path):
    _, cfg, sets = tiny
    straight = _fit(cfg, sets, tmp_path / "a" / "m")

    (tmp_path / "b").mkdir()
    stem = tmp_path / "b" / "m"

    def stop(epoch):
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        _fit(cfg, sets, stem, on_epoch_end=stop)
    assert (tmp_path / "b" / "m.ckpt.pt").is_file() and not (tmp_path / "b" / "m.final.pt").exists()
    with pytest.raises(CheckpointMismatch, match="different configuration"):
        _fit(cfg, sets, stem, fingerprint="other")
    resumed = _fit(cfg, sets, stem)

    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    assert resumed.best_epoch == straight.best_epoch
    assert straight.state.keys() == resumed.state.keys()
    assert all(torch.equal(straight.state[k], resumed.state[k]) for k in straight.state)
    assert not (tmp_path / "b" / "m.ckpt.pt").exists() and (tmp_path / "b" / "m.final.pt").is_file()
    # a finished model is reused, not retrained
    again = _fit(cfg, sets, stem, on_epoch_end=lambda e: pytest.fail("retrained a finished model"))
    assert all(torch.equal(again.state[k], resumed.state[k]) for k in resumed.state)


def test_torchrun_ddp_two_processes_gloo(tiny, tmp_path):
    folder, _, _ = tiny
    config = tmp_path / "tiny.toml"
    config.write_text(
        "[run]\nname='ddp'\nrepetitions=1\nnum_workers=0\ndevice='cpu'\n[data]\ninput_size=64\n"
        "[model]\ninit='scratch'\narch='densenet121'\n[optim]\nbatch_size=4\nepochs=1\n[report]\ngradcam_examples=1\n"
    )
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "training",
        "train",
        "--config",
        str(config),
        "--data",
        str(folder),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["environment"]["world_size"] == 2
    rep = metrics["repetitions"][0]
    for key in "AB":
        assert rep[key]["replicas_identical"] is True
        seen = rep[key]["history"][0]["train_images"]
        # all_reduce sums both ranks' counts: about the whole training split, not half of it
        # (DistributedSampler pads to an even count; a last batch of one image is dropped)
        n_train = rep["split"]["sizes"]["train"] if key == "A" else rep["split"]["b_sizes"]["train"]
        assert n_train - 2 <= seen <= n_train + 1, (key, seen, n_train)
    log = (out / "train.log").read_text()
    assert log.count("model A epoch 1/1") == 1  # rank 0 logs alone
    bundle = load_bundle(out / "bundle")
    assert (bundle.name, bundle.architecture) == ("ddp", "densenet121")


def test_dataloader_workers_do_not_change_the_result(tiny, tmp_path):
    _, cfg, sets = tiny
    loader = {**TINY["data"], "pipeline": "loader"}
    one_epoch = config_from_dict({**TINY, "data": loader, "optim": {"batch_size": 4, "epochs": 1}})
    with_workers = config_from_dict(
        {**TINY, "data": loader, "optim": {"batch_size": 4, "epochs": 1}, "run": {**TINY["run"], "num_workers": 2}}
    )
    # The plain engine: on the CPU with data.pipeline = loader the fast one takes this same path.
    a = _fit(one_epoch, sets, tmp_path / "w0" / "m", engine=PLAIN)
    b = _fit(with_workers, sets, tmp_path / "w2" / "m", engine=PLAIN)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"run": {**TINY["run"], "step": "compile"}}, "run.step = compile needs training.fast's engine"),
        ({"data": {**TINY["data"], "pipeline": "device"}}, "data.pipeline = device needs training.fast's engine"),
    ],
)
def test_the_plain_loop_refuses_what_only_the_fast_layer_does(tiny, tmp_path, table, message):
    _, _, sets = tiny
    with pytest.raises(ValueError, match=message):
        _fit(config_from_dict({**TINY, **table}), sets, tmp_path / "m", engine=PLAIN)


@pytest.mark.slow  # a fresh interpreter importing torch: about 6 s
def test_the_research_core_imports_nothing_from_the_fast_layer():
    fast = "sorted(m for m in sys.modules if m.startswith('training.fast'))"
    probe = f"import sys, training.loop; print({fast}); import training.pipeline; print({fast})"
    run = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    core, pipeline = run.stdout.splitlines()
    assert core == "[]"
    assert "'training.fast.engine'" in pipeline  # the probe sees the layer where it is used
