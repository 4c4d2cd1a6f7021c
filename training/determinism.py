"""run.deterministic: deterministic kernels where PyTorch has them (the cost is in docs/training.md)."""

from __future__ import annotations

import os

import torch


def apply_determinism(deterministic: bool) -> None:
    """Process-wide by nature (PyTorch's switches are global): call once per training process."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        # warn_only: a few CUDA kernels (pooling backward) have no deterministic version
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True  # pick the fastest convolution per shape
