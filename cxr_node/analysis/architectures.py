"""The DenseNet variants a bundle may hold, torch-free (training's config validates against them).

Each entry is torchvision's configuration of that DenseNet-BC, so torchvision's ImageNet files
load into cxr_node.analysis.densenet's module unchanged (same state-dict keys and shapes).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    name: str  # the bundle manifest's `architecture` and the training config's `model.arch`
    title: str  # for humans: reports, error messages
    growth_rate: int
    block_config: tuple[int, int, int, int]  # dense layers per block
    num_init_features: int
    bn_size: int  # bottleneck width = bn_size * growth_rate
    imagenet_file: str  # torchvision's published weights file name (looked up locally, never downloaded)


DEFAULT_ARCH = "densenet161"  # the paper's (de Moura et al. 2020)

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("densenet161", "DenseNet-161", 48, (6, 12, 36, 24), 96, 4, "densenet161-8d451a50.pth"),
        # ~3x cheaper per training step on a CPU (docs/training.md); for tests and quick runs
        Architecture("densenet121", "DenseNet-121", 32, (6, 12, 24, 16), 64, 4, "densenet121-a639ec97.pth"),
    )
}
