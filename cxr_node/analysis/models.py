"""DenseNet binary classifiers (model A and model B) and ImageNet initialisation from local files.

The models are cxr_node.analysis.densenet's torchvision-compatible DenseNets (DenseNet-161 by
default, the paper's); torchvision's ImageNet files load into them unchanged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from cxr_node.analysis.architectures import ARCHITECTURES, DEFAULT_ARCH
from cxr_node.analysis.densenet import densenet

# Class order of each model's 2-way head (index 1 is the positive finding).
MODEL_CLASSES = {
    "A": ("normal", "abnormal"),
    "B": ("not_covid", "covid"),
}


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable or does not fit the DenseNet."""


def build_densenet(arch: str = DEFAULT_ARCH, num_classes: int = 2) -> nn.Module:
    """A DenseNet of ARCHITECTURES with a `num_classes` head, random initialisation."""
    return densenet(arch, num_classes)


def find_imagenet_weights(explicit: str | Path | None = None, arch: str = DEFAULT_ARCH) -> Path | None:
    """An explicit file, else TORCH_HOME/hub/checkpoints/<torchvision's name for arch>, else None."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise WeightsError(f"ImageNet weights file {path} does not exist")
        return path
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    cached = torch_home / "hub" / "checkpoints" / ARCHITECTURES[arch].imagenet_file
    return cached if cached.is_file() else None


# The 2017 checkpoint names layers "norm.1"; current torchvision names them "norm1".
_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _upgrade_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = _OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def load_imagenet_backbone(model: nn.Module, weights: Path, arch: str = DEFAULT_ARCH) -> nn.Module:
    """Copy ImageNet DenseNet features into `model` (of `arch`), keeping its own (new) classifier head."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{weights}: not a readable PyTorch state dict: {exc}") from exc
    state = {k: v for k, v in _upgrade_keys(state).items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise WeightsError(
            f"{weights}: does not fit {ARCHITECTURES[arch].title} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def build_model(imagenet_weights: Path | None = None, num_classes: int = 2, arch: str = DEFAULT_ARCH) -> nn.Module:
    """Model for training: ImageNet features when a local weights file is given, else scratch."""
    model = build_densenet(arch, num_classes)
    if imagenet_weights is not None:
        load_imagenet_backbone(model, imagenet_weights, arch)
    return model
