"""The fast training path on CPU (issue 15): device-resident augmentation equals the DataLoader
path's, no host synchronisation per step, compiled step == eager step, `run.parallel` gives the
sequential path's results, schedules and new config keys. Synthetic images at 64 px keep it short.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxr_node.analysis.models import build_model
from training.config import ConfigError, config_from_dict, load_config
from training.data import load_data
from training.dataset import Augment, SquareDataset, augment_rng
from training.distributed import DistEnv
from training.fast import ENGINE
from training.fast.device_data import DeviceBatches, DevicePipeline, DeviceSet, affine_thetas, warp
from training.fast.step import TrainStep
from training.loop import _LoaderBatches, fit, learning_rate
from training.metrics import target_a
from training.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "run": {"name": "tiny", "repetitions": 1, "num_workers": 0, "device": "cpu"},
    "data": {"input_size": 64},
    "model": {"init": "scratch"},
    "optim": {"batch_size": 4, "epochs": 1},
    "report": {"gradcam_examples": 1},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_synthetic(tmp_path_factory.mktemp("fast"), patients_per_label=5, images_per_patient=2, size=40)
    data = load_data(folder, 64)
    idx = np.random.default_rng(0).permutation(len(data.samples))
    return folder, data, idx


def _sets(data, idx, augment=Augment(0.9, 1.1, 0.5)):
    train = SquareDataset(data.squares, idx[:21], target_a(data.labels[idx[:21]]), augment, seed=5)
    val = SquareDataset(data.squares, idx[21:], target_a(data.labels[idx[21:]]))
    return train, val


# --- device augmentation ------------------------------------------------------------------------


@pytest.mark.parametrize("augment", [Augment(0.9, 1.1, 0.5), Augment(0.8, 1.25, 0.5, rotate=15, translate=0.1)])
def test_device_warp_equals_the_opencv_augmentation(tiny, augment):
    _, data, idx = tiny
    images = idx[:8]
    thetas = torch.from_numpy(affine_thetas(augment, 64, 7, 3, images))
    on_device = warp(torch.from_numpy(data.squares[images]), thetas).numpy()
    for k, i in enumerate(images):
        reference = augment(data.squares[i], augment_rng(7, 3, i))
        assert np.abs(on_device[k] - reference).max() < 1e-4, k


@pytest.mark.parametrize("env", [DistEnv(), DistEnv(rank=1, world_size=2)])
def test_device_batches_are_the_loader_batches(tiny, env):
    """Same order (the DistributedSampler's, per rank), same draws, same normalised inputs."""
    _, data, idx = tiny
    cfg = config_from_dict(TINY)
    train, val = _sets(data, idx)
    device_batches = DeviceBatches(DeviceSet(train, torch.device("cpu")), 4, env, seed=5, drop_last=False)
    loader = _LoaderBatches(train, val, 4, env, 5, False, cfg, torch.device("cpu"))
    for epoch in (0, 3):
        got, want = list(device_batches.epoch(epoch)), list(loader.epoch(epoch))
        assert len(got) == len(want) == len(device_batches) == len(loader)
        for (xd, yd), (xl, yl) in zip(got, want, strict=True):
            assert torch.equal(yd, yl)
            assert (xd - xl).abs().max() < 1e-3  # normalised: 1e-4 in [0, 1] over ImageNet std


@pytest.mark.slow
def test_device_and_loader_paths_train_alike(tiny, tmp_path):
    """Same first step to float precision. Later steps drift apart: DenseNet-161 from scratch at
    batch 4 amplifies any 1e-6 input difference (a 1e-6 noise on the loader's own inputs drifts as much),
    so whole-epoch losses are compared loosely."""
    _, data, idx = tiny
    results, first = {}, {}
    for pipeline in ("device", "loader"):
        cfg = config_from_dict({**TINY, "data": {"input_size": 64, "pipeline": pipeline}})
        train, val = _sets(data, idx)
        batches = (_LoaderBatches if pipeline == "loader" else DevicePipeline)(
            train, val, 4, DistEnv(), 5, True, cfg, torch.device("cpu")
        )
        torch.manual_seed(5)
        model = build_model(None)
        step = TrainStep(
            model,
            torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
            mode="eager",
            device=torch.device("cpu"),
            amp=False,
            label_smoothing=0.0,
            log=print,
        )
        x, y = next(iter(batches.epoch(0)))
        first[pipeline] = float(step(x, y)[0])
        results[pipeline] = fit(
            cfg=cfg,
            train_set=train,
            val_set=val,
            imagenet_weights=None,
            device=torch.device("cpu"),
            env=DistEnv(),
            ckpt_stem=tmp_path / pipeline / "m",
            fingerprint="fp",
            seed=5,
            label=pipeline,
            log=lambda m: None,
            engine=ENGINE,
        )
    assert first["device"] == pytest.approx(first["loader"], rel=1e-5)
    d, lo = results["device"].history[0], results["loader"].history[0]
    assert d["train_images"] == lo["train_images"] == 20  # 21 % 4 == 1: a last batch of one is dropped
    assert d["train_loss"] == pytest.approx(lo["train_loss"], rel=0.2)


class _SyncCounter:
    """Counts the ways a tensor's value reaches the host (each one a device synchronisation on a GPU)."""

    NAMES = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "cpu")

    def __init__(self, monkeypatch):
        self.calls = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(t, *a, _original=original, **k):
                self.calls += 1
                return _original(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.slow
def test_no_host_synchronisation_per_training_step(tiny, tmp_path, monkeypatch):
    """Host reads per epoch must not grow with the number of steps (the old loop made two per step)."""
    _, data, idx = tiny
    cfg = config_from_dict({**TINY, "run": {**TINY["run"], "step": "eager"}})
    counts = {}
    for n_train in (8, 20):  # 2 and 5 steps
        train = SquareDataset(data.squares, idx[:n_train], target_a(data.labels[idx[:n_train]]), Augment(), seed=5)
        val = SquareDataset(data.squares, idx[20:], target_a(data.labels[idx[20:]]))
        counter = _SyncCounter(monkeypatch)
        fit(
            cfg=cfg,
            train_set=train,
            val_set=val,
            imagenet_weights=None,
            device=torch.device("cpu"),
            env=DistEnv(),
            ckpt_stem=tmp_path / str(n_train) / "m",
            fingerprint="fp",
            seed=5,
            label="s",
            log=lambda m: None,
            engine=ENGINE,
        )
        counts[n_train] = counter.calls
        monkeypatch.undo()
    assert counts[8] == counts[20], counts


# --- training step forms ----------------------------------------------------------------------


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def _losses(mode: str, device: torch.device, steps: int = 4) -> list[float]:
    model = _tiny_net().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def log(line: str) -> None:
        assert "continuing eagerly" not in line, line  # a fallback would compare eager with eager

    step = TrainStep(model, opt, mode=mode, device=device, amp=False, label_smoothing=0.1, log=log, label=mode)
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        x = torch.randn(4, 3, 16, 16, generator=g).to(device)
        y = torch.randint(0, 2, (4,), generator=g).to(device)
        loss, _ = step(x, y)
        out.append(float(loss))
    return out


def test_compiled_step_gives_the_eager_losses():
    """torch.compile (Inductor's default mode on the CPU) against eager, four SGD steps."""
    eager, compiled = _losses("eager", torch.device("cpu")), _losses("compile", torch.device("cpu"))
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-6)
    assert eager[0] != eager[-1]  # the steps did train


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (run by deploy/gpu-check.sh)")
@pytest.mark.parametrize("mode", ["cuda_graphs", "compile"])
def test_gpu_step_forms_give_the_eager_losses(mode):
    cuda = torch.device("cuda")
    eager, other = _losses("eager", cuda, steps=8), _losses(mode, cuda, steps=8)  # 3 warm-up, capture, 4 replays
    assert other == pytest.approx(eager, rel=1e-3, abs=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (run by deploy/gpu-check.sh)")
def test_gpu_fit_replays_densenet_steps_from_a_cuda_graph(tiny, tmp_path):
    """The real model (DenseNet-161, bf16 autocast, channels_last) through fit with run.step = cuda_graphs."""
    _, data, idx = tiny
    cfg = config_from_dict(
        {
            **TINY,
            "run": {**TINY["run"], "device": "cuda", "step": "cuda_graphs"},
            "optim": {"batch_size": 4, "epochs": 2},
        }
    )
    train, val = _sets(data, idx)
    lines = []
    result = fit(
        cfg=cfg,
        train_set=train,
        val_set=val,
        imagenet_weights=None,
        device=torch.device("cuda"),
        env=DistEnv(),
        ckpt_stem=tmp_path / "m",
        fingerprint="fp",
        seed=5,
        label="g",
        log=lines.append,
        engine=ENGINE,
    )
    assert any("captured in a CUDA graph" in line for line in lines), lines
    assert not any("continuing eagerly" in line for line in lines), lines
    assert [h["train_images"] for h in result.history] == [20, 20]
    assert all(np.isfinite(h["train_loss"]) and h["device_memory_peak_bytes"] > 0 for h in result.history)


def test_a_failing_compiled_step_falls_back_to_eager_with_the_same_weights(monkeypatch):
    def broken(model, **_):
        def run(x):
            model(x)  # touched BatchNorm statistics before failing
            raise RuntimeError("inductor: no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    model = _tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    lines = []
    step = TrainStep(
        model,
        opt,
        mode="compile",
        device=torch.device("cpu"),
        amp=False,
        label_smoothing=0.0,
        log=lines.append,
        label="m",
    )
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    loss, _ = step(x, y)
    reference = _tiny_net()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9)
    ref_step = TrainStep(
        reference, ref_opt, mode="eager", device=torch.device("cpu"), amp=False, label_smoothing=0.0, log=lines.append
    )
    ref_loss, _ = ref_step(x, y)
    assert step.mode == "eager" and "continuing eagerly" in lines[0]
    assert torch.equal(loss, ref_loss)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# --- parallel runner -----------------------------------------------------------------------------


def _comparable(metrics: dict) -> dict:
    """metrics.json without what legitimately differs between runs (clock, timings, parallelism)."""
    drop = {"created", "elapsed_seconds", "throughput_images_per_second", "environment", "config", "gradcam"}
    out = {k: v for k, v in metrics.items() if k not in drop}
    for rep in out["repetitions"]:
        for key in "AB":
            rep[key]["history"] = [{k: v for k, v in h.items() if "second" not in k} for h in rep[key]["history"]]
    return json.loads(json.dumps(out, default=float))


@pytest.mark.slow
def test_parallel_processes_give_the_sequential_results(tiny, tmp_path):
    from training.pipeline import train

    folder, _, _ = tiny
    runs = {}
    for parallel in (1, 2):
        raw = {
            **TINY,
            "run": {**TINY["run"], "repetitions": 2, "parallel": parallel},
            "model": {**TINY["model"], "arch": "densenet121"},  # process plumbing is tested, not the network
        }
        runs[parallel] = train(config_from_dict(raw), folder, tmp_path / f"p{parallel}")
    assert runs[2]["config"]["run"]["parallel"] == 2 and runs[2]["config"]["model"]["arch"] == "densenet121"
    assert _comparable(runs[1]) == _comparable(runs[2])
    log = (tmp_path / "p2" / "train.log").read_text()
    assert "run.parallel = 2: 4 training(s) side by side" in log
    assert not list((tmp_path / "p2" / "checkpoints").glob("squares-*.npy"))  # shared cache removed


# --- configuration and schedule ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"run": {"parallel": 0}}, "run.parallel: must be >= 1"),
        ({"run": {"step": "graphs"}}, "run.step: must be one of"),
        ({"run": {"checkpoint_every": 0}}, "run.checkpoint_every"),
        ({"data": {"pipeline": "gpu"}}, "data.pipeline: must be one of"),
        ({"optim": {"schedule": "step"}}, "optim.schedule"),
        ({"optim": {"epochs": 5, "warmup_epochs": 5}}, "optim.warmup_epochs"),
        ({"optim": {"label_smoothing": 1.0}}, "optim.label_smoothing"),
        ({"augment": {"rotate": 90}}, "augment.rotate"),
        ({"augment": {"translate": 0.5}}, "augment.translate"),
    ],
)
def test_new_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert str(err.value).startswith(key)


def test_warmup_and_cosine_schedule():
    o = config_from_dict({"optim": {"lr": 0.1, "epochs": 10, "warmup_epochs": 2, "schedule": "cosine"}}).optim
    lrs = [learning_rate(o, e) for e in range(10)]
    assert lrs[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False)) and lrs[-1] > 0
    paper = load_config(REPO / "configs/train-paper.toml").optim
    assert {learning_rate(paper, e) for e in range(paper.epochs)} == {0.01}


def test_run_settings_do_not_change_the_fingerprint():
    base = config_from_dict(TINY)
    faster = config_from_dict({**TINY, "run": {**TINY["run"], "parallel": 4, "step": "compile", "checkpoint_every": 9}})
    assert base.fingerprint() == faster.fingerprint()
    assert base.fingerprint() != config_from_dict({**TINY, "optim": {"label_smoothing": 0.1}}).fingerprint()


def test_paper_config_keeps_the_paper_and_public_config_is_the_scratch_recipe():
    paper = load_config(REPO / "configs/train-paper.toml")
    assert (paper.optim.schedule, paper.optim.warmup_epochs, paper.optim.label_smoothing) == ("constant", 0, 0.0)
    assert (paper.augment.rotate, paper.augment.translate, paper.optim.batch_size) == (0.0, 0.0, 4)
    public = load_config(REPO / "configs/train-public.toml")
    assert public.model.init == "scratch" and public.optim.schedule == "cosine" and public.optim.warmup_epochs > 0
    assert public.optim.weight_decay > 0 and public.optim.label_smoothing > 0 and public.augment.rotate > 0
    # the protocol itself (splits, repetitions, B balanced, validation selection) is the paper config's
    assert (public.split, public.run.repetitions, public.approach) == (
        paper.split,
        paper.run.repetitions,
        paper.approach,
    )


@pytest.mark.slow
def test_a_failing_parallel_training_raises_its_own_error(tiny, tmp_path):
    from training.fast.parallel import run_parallel
    from training.loop import CheckpointMismatch, FitJob

    _, data, idx = tiny
    cfg = config_from_dict({**TINY, "run": {**TINY["run"], "parallel": 2}})
    y = target_a(data.labels[idx])
    jobs = [FitJob(r, "A", 5 + r, idx[:12], y[:12], idx[12:20], y[12:20], tmp_path / f"rep{r}_A") for r in range(2)]
    torch.save({"fingerprint": "someone else's"}, tmp_path / "rep1_A.ckpt.pt")  # refused by fit in its worker
    with pytest.raises(CheckpointMismatch, match="rep1_A.ckpt.pt: made with a different configuration"):
        run_parallel(
            jobs,
            cfg=cfg,
            squares=data.squares,
            workdir=tmp_path,
            weights=None,
            device=torch.device("cpu"),
            fingerprint="fp",
            log=lambda m: None,
            log_path=None,
            processes=2,
        )
    assert not list(tmp_path.glob("squares-*.npy"))
