"""cxr_node.analysis.densenet against torchvision's DenseNet, the reference it copies.

The node and training build their models from our module so that they do not import
torchvision (~2 CPU-s and ~200 MB per process, docs/benchmarks.md); torchvision stays a
dependency as this reference. Same tree and keys, the same initial weights from the same seed,
the same outputs, batch statistics and gradients after loading torchvision's weights.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torchvision.models
from torch import nn

from cxr_node.analysis.densenet import ARCHITECTURES, densenet

SIZE = 64  # 2 x 2 final feature grid: small, and every layer still runs


@pytest.fixture(autouse=True)
def _one_thread():
    # reductions split across threads can sum in another order; one thread gives both models one order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pair(arch: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ours = densenet(arch, num_classes=2)
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(weights=None, num_classes=2)
    return ours, reference


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_tree_keys_and_initial_weights_are_torchvisions(arch):
    ours, reference = _pair(arch)
    assert ARCHITECTURES[arch].imagenet_file.startswith(f"{arch}-")
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in reference.named_modules()]
    assert [type(m).__bases__ for _, m in ours.named_modules()] == [
        type(m).__bases__ for _, m in reference.named_modules()
    ]  # Sequential / ModuleDict / Module where torchvision has them: domain.py and grouped.py walk these
    mine, theirs = ours.state_dict(), reference.state_dict()
    assert list(mine) == list(theirs)
    for key, value in mine.items():
        # same construction order and init => the same random draws, so the same tensors
        assert value.shape == theirs[key].shape and torch.equal(value, theirs[key]), key
    # and torchvision's init scheme itself: BN 1/0, Linear bias 0, convolutions He-normal (fan_in)
    for name, m in ours.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert bool((m.weight == 1).all() and (m.bias == 0).all()), name
        elif isinstance(m, nn.Linear):
            assert bool((m.bias == 0).all()), name
    conv = ours.features.denseblock3.denselayer5.conv2
    fan_in = conv.weight[0].numel()
    assert abs(conv.weight.std().item() / math.sqrt(2 / fan_in) - 1) < 0.05


def _randomise_statistics(model: nn.Module) -> None:
    """BatchNorm's defaults (mean 0, var 1, weight 1, bias 0) would hide a misplaced norm in eval mode."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.out_features, generator=g))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_same_outputs_statistics_and_gradients_with_torchvisions_weights(arch):
    torch.manual_seed(5)
    ours = densenet(arch, num_classes=3)
    reference = getattr(torchvision.models, arch)(weights=None, num_classes=3)
    _randomise_statistics(reference)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))

    ours.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))

    ours.train(), reference.train()  # batch statistics, and the running averages they update
    inputs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = [model(inp) for model, inp in zip((ours, reference), inputs, strict=True)]
    assert torch.equal(outs[0], outs[1])
    for out in outs:
        (out * torch.arange(1.0, 4.0)).sum().backward()  # a different weight per class
    assert torch.equal(inputs[0].grad, inputs[1].grad)
    theirs = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.equal(p.grad, theirs[name].grad), name
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in ours.state_dict().items())


def test_unknown_architecture_is_refused():
    with pytest.raises(KeyError):
        densenet("resnet50")


@pytest.mark.slow  # a fresh interpreter importing the runtime and training (~5 CPU-s)
def test_the_node_and_training_do_not_import_torchvision():
    code = (
        "import sys\n"
        "import cxr_node.analysis.bundle, cxr_node.node, cxr_node.cli, training.pipeline, training.cli\n"
        "from cxr_node.analysis.bundle import untrained_bundle\n"
        "untrained_bundle(64)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout
