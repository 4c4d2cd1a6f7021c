"""Fit the out-of-domain statistics of a finished bundle (cxr_node.analysis.domain).

Descriptors come from the bundle's models A and B on the un-augmented letterboxed squares (the
serving path): the Gaussians are fitted on the training split of the bundled repetition, the
standardisation and the threshold on its validation split; the test split says how often the
check flags in-domain images it has never seen (the honest rate: validation's is set by the
quantile).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_node.analysis.domain import DomainError, DomainModel, extract, fit_domain, flagged_summary, parse_layers
from training.config import DomainConfig


def descriptors(
    models: dict[str, nn.Module], squares: np.ndarray, layers, device: torch.device, batch_size: int = 32
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, model in models.items():
        mine = tuple(layer for layer in layers if layer.model == key)
        if mine:
            out.update(extract(model, squares, mine, device, batch_size))
    return out


def fit_bundle_domain(
    cfg: DomainConfig,
    models: dict[str, nn.Module],
    squares: np.ndarray,
    parts: dict[str, np.ndarray],
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[DomainModel, dict[str, Any]]:
    """Statistics over `parts["train"]`, threshold on `parts["val"]`, rates on val and test."""
    layers = parse_layers(cfg.layers)
    for part in ("train", "val"):
        if len(parts[part]) < 3:
            raise DomainError(f"the {part} split has {len(parts[part])} image(s), at least 3 needed")
    desc = {part: descriptors(models, squares[idx], layers, device) for part, idx in parts.items() if len(idx)}
    domain = fit_domain(desc["train"], desc["val"], layers, components=cfg.components, quantile=cfg.quantile)
    rates = {part: flagged_summary(domain.distances(d), domain.threshold) for part, d in desc.items()}
    summary = {
        "statistic": "max over layers of the standardised log squared Mahalanobis distance (PPCA covariance)",
        "components": cfg.components,
        "fitted_on_images": int(len(parts["train"])),
        "flagged": rates,
    }
    domain.summary = summary
    log(
        f"out-of-domain statistics: {len(layers)} layer(s), threshold {domain.threshold:.3f} "
        f"({cfg.quantile:.1%} of validation); flagged "
        + ", ".join(f"{p} {r['flagged']}/{r['n']}" for p, r in rates.items())
    )
    return domain, summary
