"""`run.parallel_mode = "grouped"` (issue 15): N DenseNet-161s as one grouped network.

The grouped network must compute exactly what its N members compute alone (outputs, gradients,
SGD steps; checked in float64, where the only difference, rounding, vanishes), hand each
member's weights back under torchvision's names, and run the real pipeline end to end with
resume. On a GPU, its CUDA-graph step must give the eager losses.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import DenseNet

from cxr_node.analysis.models import build_densenet, build_model
from training.config import ConfigError, config_from_dict
from training.distributed import DistEnv
from training.fast.grouped import BatchedPointwise, GroupedDenseNet, gcat
from training.fast.grouped_fit import fit_grouped, group_checkpoint, grouped_objective
from training.fast.step import TrainStep
from training.synthetic import write_synthetic

TINY = {
    "run": {
        "name": "tiny",
        "repetitions": 2,
        "num_workers": 0,
        "device": "cpu",
        "parallel": 4,
        "parallel_mode": "grouped",
    },
    "data": {"input_size": 64},
    "model": {"init": "scratch"},
    "optim": {"batch_size": 4, "epochs": 2},
    "report": {"gradcam_examples": 1},
}


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _members(n: int, small: bool = False) -> list[torch.nn.Module]:
    """n DenseNet-161s (build_model), or with small=True n torchvision DenseNets of the same
    structure (stem, four dense blocks, transitions, classifier) at a fraction of the width and depth."""
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        if small:
            out.append(
                DenseNet(growth_rate=8, block_config=(2, 3, 2, 2), num_init_features=16, bn_size=2, num_classes=2)
            )
        else:
            out.append(build_model(None))
    return out


def test_batched_pointwise_reads_both_layouts_and_matches_the_grouped_convolution(float64):
    conv = torch.nn.Conv2d(3 * 5, 3 * 4, 1, groups=3)
    x = torch.randn(2, 15, 6, 7)
    pointwise = BatchedPointwise(conv, 3)
    for layout in (torch.contiguous_format, torch.channels_last):
        y = pointwise(x.contiguous(memory_format=layout))
        torch.testing.assert_close(y, conv(x), rtol=1e-12, atol=1e-12)
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_gcat_keeps_each_models_channels_together_in_both_memory_formats():
    a, b = torch.randn(2, 3 * 4, 5, 5), torch.randn(2, 3 * 2, 5, 5)  # 3 models: 4 and 2 channels each
    expected = torch.cat([torch.cat([a[:, 4 * k : 4 * k + 4], b[:, 2 * k : 2 * k + 2]], 1) for k in range(3)], 1)
    assert torch.equal(gcat([a, b], 3), expected)
    cl = gcat([a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)], 3)
    assert torch.equal(cl, expected) and cl.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
@pytest.mark.parametrize("pointwise", ["conv", "matmul"])
def test_grouped_network_computes_what_its_members_compute(float64, pointwise):
    members = _members(3)
    grouped = GroupedDenseNet([copy.deepcopy(m) for m in members], pointwise)
    if pointwise == "matmul":  # both memory layouts of the batched GEMM path
        grouped.to(memory_format=torch.channels_last)
    x = torch.randn(3, 2, 3, 64, 64)
    y = torch.tensor([[0, 1], [1, 1], [1, 0]])
    for mode in ("eval", "train"):
        grouped.train(mode == "train")
        for m in members:
            m.train(mode == "train")
        out = grouped(x)
        ref = torch.stack([m(x[k]) for k, m in enumerate(members)])
        assert out.shape == (3, 2, 2)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    # gradients: the sum of the members' losses gives each member its own gradient
    sum(F.cross_entropy(out[k], y[k]) for k in range(3)).backward()
    sum(F.cross_entropy(ref[k], y[k]) for k in range(3)).backward()  # each member's own loss and graph
    grads = {name: p.grad for name, p in grouped.named_parameters()}
    for k, m in enumerate(members):
        for name, p in m.named_parameters():
            torch.testing.assert_close(grads[name].reshape(3, -1)[k].reshape(p.shape), p.grad, rtol=1e-8, atol=1e-12)
    # member k's state is model k's torchvision state dict (BatchNorm statistics included)
    for k, m in enumerate(members):
        state = grouped.member_state(k)
        assert list(state) == list(m.state_dict())
        for name, t in m.state_dict().items():
            torch.testing.assert_close(state[name], t, rtol=1e-10, atol=1e-12)
    fresh = build_densenet("densenet161")
    fresh.load_state_dict({k: v.float() for k, v in grouped.member_state(2).items()})


def test_grouped_sgd_steps_are_the_members_own_steps(float64):
    """Three SGD steps (momentum, weight decay, label smoothing) of the grouped network through TrainStep
    against each member trained alone through TrainStep on its own batches. Small DenseNets: the
    grouped layers are the same code for any torchvision DenseNet, and the test above checks them
    on DenseNet-161 itself (outputs, gradients, state); what this one adds is the step - objective,
    SGD over the grouped tensors, BatchNorm statistics across steps - which does not depend on width."""
    members = _members(2, small=True)
    grouped = GroupedDenseNet([copy.deepcopy(m) for m in members])
    cpu, ls = torch.device("cpu"), 0.1

    def sgd(params):
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)

    gstep = TrainStep(
        grouped,
        sgd(grouped.parameters()),
        mode="eager",
        device=cpu,
        amp=False,
        label_smoothing=ls,
        log=print,
        objective=grouped_objective(ls),
    )
    alone = [
        TrainStep(m, sgd(m.parameters()), mode="eager", device=cpu, amp=False, label_smoothing=ls, log=print)
        for m in members
    ]
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(2, 4, 3, 64, 64, generator=gen)
        y = torch.randint(0, 2, (2, 4), generator=gen)
        losses, correct = gstep(x, y)
        for k, step in enumerate(alone):
            loss_k, correct_k = step(x[k], y[k])
            torch.testing.assert_close(losses[k], loss_k, rtol=1e-9, atol=1e-12)
            assert int(correct[k]) == int(correct_k)
    for k, m in enumerate(members):
        for name, t in m.state_dict().items():
            torch.testing.assert_close(grouped.member_state(k)[name], t, rtol=1e-7, atol=1e-10)


@pytest.mark.slow
def test_grouped_training_runs_the_pipeline_and_resumes(tmp_path):
    from training.pipeline import plan_repetition, train

    folder = write_synthetic(tmp_path / "data", patients_per_label=5, images_per_patient=2, size=40)
    small = {**TINY, "model": {**TINY["model"], "arch": "densenet121"}}  # the pipeline, not the network, is tested
    whole = train(config_from_dict(small), folder, tmp_path / "whole")
    log = (tmp_path / "whole" / "train.log").read_text()
    assert "grouped: 4 training(s) as 1 grouped network(s) of up to 4" in log
    assert "one grouped network" in log and "captured" not in log  # CPU: eager steps
    for rep in whole["repetitions"]:
        for key in "AB":
            hist = rep[key]["history"]
            assert [h["epoch"] for h in hist] == [1, 2]
            assert all(h["train_images"] % 4 == 0 and np.isfinite(h["train_loss"]) for h in hist)

    # interrupted after epoch 1's checkpoint, then rerun: the same models as the uninterrupted run
    # above (whose group the pipeline trained through fit_grouped and kept as <stem>.final.pt;
    # run.checkpoint_every is a run setting, outside the fingerprint, so the jobs are the same)
    raw = {**small, "run": {**small["run"], "checkpoint_every": 1}}
    cfg = config_from_dict(raw)

    class Stop(Exception):
        pass

    def stop_in_epoch_2(line: str) -> None:
        if "epoch 2/2" in line:
            raise Stop(line)

    from training.data import load_data
    from training.pipeline import Context
    from training.splits import hash_all, near_duplicates

    data = load_data(folder, 64)
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    pairs = near_duplicates(hash_all(data.squares), cfg.split.near_duplicate_bits)
    fingerprint = "fp"
    ctx = Context(cfg, data, out, DistEnv(), torch.device("cpu"), None, fingerprint, print, None, pairs)
    jobs = [j for r in range(2) for j in plan_repetition(ctx, r).jobs.values()]
    kwargs = dict(cfg=cfg, squares=data.squares, weights=None, device=torch.device("cpu"), fingerprint=fingerprint)
    with pytest.raises(Stop):
        fit_grouped(jobs, log=stop_in_epoch_2, **kwargs)
    assert group_checkpoint(jobs).is_file() and not any(j.final_path.is_file() for j in jobs)
    lines: list[str] = []
    fit_grouped(jobs, log=lines.append, **kwargs)
    assert any("resuming after epoch 1" in line for line in lines)
    assert not group_checkpoint(jobs).is_file()
    assert len(jobs) == 4
    for j in jobs:
        resumed = torch.load(j.final_path, weights_only=False)
        uninterrupted = torch.load(tmp_path / "whole" / "checkpoints" / j.final_path.name, weights_only=False)
        drop = ("second", "unix")
        strip = [{k: v for k, v in h.items() if not any(d in k for d in drop)} for h in resumed["history"]]
        ref = [{k: v for k, v in h.items() if not any(d in k for d in drop)} for h in uninterrupted["history"]]
        assert json.dumps(strip, default=float) == json.dumps(ref, default=float)
        assert resumed["best_epoch"] == uninterrupted["best_epoch"]
        assert resumed["state"].keys() == uninterrupted["state"].keys()
        for name, t in resumed["state"].items():
            assert torch.equal(t, uninterrupted["state"][name]), name


def test_parallel_mode_is_checked_and_grouped_runs_have_their_own_fingerprint():
    with pytest.raises(ConfigError, match=r"^run.parallel_mode: must be one of processes, grouped, got 'streams'"):
        config_from_dict({**TINY, "run": {**TINY["run"], "parallel_mode": "streams"}})
    with pytest.raises(ConfigError, match=r"^run.grouped_pointwise: must be one of conv, matmul, got 'gemm'"):
        config_from_dict({**TINY, "run": {**TINY["run"], "grouped_pointwise": "gemm"}})
    matmul = config_from_dict({**TINY, "run": {**TINY["run"], "grouped_pointwise": "matmul"}})
    assert matmul.fingerprint() == config_from_dict(TINY).fingerprint()  # the same arithmetic
    grouped = config_from_dict(TINY)
    processes = config_from_dict({**TINY, "run": {**TINY["run"], "parallel_mode": "processes"}})
    sequential = config_from_dict({**TINY, "run": {**TINY["run"], "parallel": 1}})
    assert processes.fingerprint() == sequential.fingerprint() != grouped.fingerprint()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (run by deploy/gpu-check.sh)")
@pytest.mark.parametrize("pointwise", ["conv", "matmul"])
def test_gpu_grouped_step_gives_the_eager_losses(pointwise):
    """The grouped DenseNet-161 (3 members, bf16 autocast, channels_last) replayed from a CUDA graph
    against eager steps: 3 warm-up steps, the capture, 4 replays."""
    cuda = torch.device("cuda")

    def losses(step_mode: str) -> list[list[float]]:
        grouped = GroupedDenseNet(_members(3), pointwise).to(cuda).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(grouped.parameters(), lr=0.01, momentum=0.9)
        lines: list[str] = []
        step = TrainStep(
            grouped,
            opt,
            mode=step_mode,
            device=cuda,
            amp=True,
            label_smoothing=0.0,
            log=lines.append,
            objective=grouped_objective(0.0),
        )
        gen = torch.Generator().manual_seed(1)
        out = []
        for _ in range(8):
            x = torch.randn(3, 4, 3, 64, 64, generator=gen).to(cuda)
            y = torch.randint(0, 2, (3, 4), generator=gen).to(cuda)
            loss, _ = step(x, y)
            out.append(loss.tolist())
        assert not any("continuing eagerly" in line for line in lines), lines
        return out

    eager, graphed = losses("eager"), losses("cuda_graphs")
    assert np.allclose(graphed, eager, rtol=2e-2, atol=1e-3), (graphed, eager)
