"""Is this image like the training images? A distance from the models' own features.

The check reads the DenseNet activations the classification forward computes anyway (no second
network, no second pass): after chosen dense blocks of model A and/or B ("taps"), each map is
pooled to a short descriptor per image (channel means, a coarse spatial grid of channel means, or
channel standard deviations). A radiograph's layout survives a coarse grid: a lateral puts the
spine and one lung field where a frontal has two symmetric lungs, which a whole-image mean hides.

Per descriptor ("layer") `cxr-node train` fits a Gaussian to the training images with a
probabilistic PCA covariance (the top `k` principal directions with their own variances, one
shared variance for the rest: Tipping & Bishop 1999). With a few hundred training images and
thousands of channels a full covariance is singular; this one is well-conditioned, small to store
(k x D), and still weighs the directions the data never varies in, where out-of-domain images
stand out. An image's score in a layer is its squared Mahalanobis distance under that Gaussian;
the log of it is standardised by the validation images' mean and standard deviation, and the
image's distance is the largest standardised score over the layers (the layer that says "unlike"
most loudly decides, and is named). The threshold is a quantile of the validation images'
distances, chosen by training: the check flags that share of in-domain images by construction.

Statistics live in `domain.npz` next to the weights (sha256 in the bundle manifest); a bundle
without them runs with the check off, and says so.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr_node.analysis.domain_layers import MODELS, POOLS, TAPS

FORMAT = "cxr-node-domain/1"
FILE = "domain.npz"
_EPS = 1e-12


class DomainError(ValueError):
    """Statistics that are missing, malformed or do not fit; the message names the file or key."""


@dataclass(frozen=True)
class LayerSpec:
    """One descriptor: which model, after which block, pooled how."""

    model: str  # "A" or "B"
    tap: str  # one of TAPS
    pool: str  # one of POOLS

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise DomainError(f"layer model {self.model!r} must be one of {', '.join(MODELS)}")
        if self.tap not in TAPS:
            raise DomainError(f"layer tap {self.tap!r} must be one of {', '.join(TAPS)}")
        if self.pool not in POOLS:
            raise DomainError(f"layer pool {self.pool!r} must be one of {', '.join(POOLS)}")

    @property
    def name(self) -> str:
        return f"{self.model}:{self.tap}:{self.pool}"

    @classmethod
    def parse(cls, text: str) -> LayerSpec:
        parts = text.split(":")
        if len(parts) != 3:
            raise DomainError(f"layer {text!r} must read MODEL:TAP:POOL, e.g. A:denseblock2:grid4")
        return cls(*parts)


def pool_descriptor(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, C, H, W) activation -> (B, D) float32 descriptor."""
    x = x.float()
    if pool == "gap":
        return x.mean(dim=(2, 3))
    if pool in ("grid2", "grid4"):
        g = int(pool[-1])
        return F.adaptive_avg_pool2d(x, g).flatten(1)
    if pool == "std":
        return x.flatten(2).std(dim=2)
    raise DomainError(f"pool {pool!r} must be one of {', '.join(POOLS)}")


def forward_with_descriptors(
    model: nn.Module, x: torch.Tensor, layers: tuple[LayerSpec, ...]
) -> tuple[torch.Tensor, ...]:
    """One DenseNet forward returning (post-ReLU features, logits, descriptor_1, ..., descriptor_n).

    The same arithmetic as cam.forward_with_features (the torchvision-compatible `features` children run in
    order, then ReLU, pooling and the classifier), with the taps read on the way. A flat tuple,
    so the CUDA-graph and compile wrappers treat it like any other output.
    """
    features, classifier = model.features, model.classifier
    assert isinstance(features, nn.Sequential) and isinstance(classifier, nn.Module), (
        "not a torchvision-compatible DenseNet"
    )
    wanted = {layer.tap for layer in layers}
    seen: dict[str, torch.Tensor] = {}
    h = x
    for name, module in features.named_children():
        h = module(h)
        if name in wanted:
            seen[name] = h
    feats = F.relu(h)
    seen["final"] = feats
    logits = classifier(torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1))
    return (feats, logits, *(pool_descriptor(seen[layer.tap], layer.pool) for layer in layers))


def parse_layers(text: str) -> tuple[LayerSpec, ...]:
    """ "A:denseblock2:grid4, B:final:gap" -> LayerSpecs (the training config's domain.layers)."""
    return tuple(LayerSpec.parse(part.strip()) for part in text.split(",") if part.strip())


@torch.inference_mode()
def extract(
    model: nn.Module,
    squares: np.ndarray,
    layers: tuple[LayerSpec, ...],
    device: torch.device | str = "cpu",
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Descriptors of letterboxed (N, S, S) squares in [0, 1], fp32, as the engine computes them
    on the CPU: {layer name: (N, D) float32}. For fitting (training) and evaluation."""
    from cxr_node.analysis.preprocess import normalise_batch

    device = torch.device(device)
    model = model.to(device).eval()
    out: dict[str, list[np.ndarray]] = {layer.name: [] for layer in layers}
    for start in range(0, len(squares), batch_size):
        x = normalise_batch(torch.from_numpy(np.ascontiguousarray(squares[start : start + batch_size])).to(device))
        _, _, *descriptors = forward_with_descriptors(model, x.contiguous(memory_format=torch.channels_last), layers)
        for layer, d in zip(layers, descriptors, strict=True):
            out[layer.name].append(d.float().cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in out.items()}


# -- statistics -----------------------------------------------------------------------------


@dataclass
class LayerStats:
    """A Gaussian with a probabilistic-PCA covariance over one descriptor, and how to standardise
    its log squared distance (mean and sd over the validation images)."""

    spec: LayerSpec
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D) orthonormal rows
    variances: np.ndarray  # (k,)
    residual_variance: float  # per dimension, outside the k components
    z_mean: float = 0.0
    z_std: float = 1.0

    def squared_distance(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, D) -> (N,) squared Mahalanobis distance under the PPCA Gaussian (numpy, float64)."""
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        xc = x.astype(np.float64) - self.mean
        p = xc @ self.components.T
        r = np.maximum((xc * xc).sum(1) - (p * p).sum(1), 0.0)
        return (p * p / self.variances).sum(1) + r / self.residual_variance

    def standardised(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        return (np.log(self.squared_distance(x) + _EPS) - self.z_mean) / self.z_std


def fit_layer(spec: LayerSpec, train: np.ndarray, k: int) -> LayerStats:
    """PPCA Gaussian of the (N, D) training descriptors: the top k directions of the sample
    covariance keep their variances, the other D - k share their mean variance."""
    x = np.asarray(train, dtype=np.float64)
    n, d = x.shape
    if n < 3:
        raise DomainError(f"{spec.name}: {n} training image(s), at least 3 needed to fit statistics")
    mean = x.mean(0)
    xc = x - mean
    eig, vt = _principal(xc)
    eig = eig / (n - 1)  # min(n, d) eigenvalues of the covariance, largest first; the rest (d > n) are 0
    k = max(1, min(k, len(eig) - 1))
    floor = max(float(eig[0]) * 1e-6, _EPS)  # a constant channel must not divide by zero
    rest = float(eig[k:].sum()) / max(1, d - k)
    return LayerStats(
        spec=spec,
        mean=mean,
        components=np.ascontiguousarray(vt[:k]),
        variances=np.maximum(eig[:k], floor),
        residual_variance=max(rest, floor),
    )


def _principal(xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (largest first, of xc^T xc) and unit directions (rows) of centred data, from the
    smaller of the two Gram matrices: n x n for wide descriptors (a 4 x 4 grid after dense block 3
    has 33,792 values, a few hundred images), d x d for narrow ones. The same as an SVD of xc, and
    far cheaper for wide data (one matrix product, then an n x n eigenproblem)."""
    n, d = xc.shape
    if d <= n:
        w, v = np.linalg.eigh(xc.T @ xc)
        order = np.argsort(w)[::-1]
        return np.maximum(w[order], 0.0), v[:, order].T
    w, u = np.linalg.eigh(xc @ xc.T)
    order = np.argsort(w)[::-1]
    w, u = np.maximum(w[order], 0.0), u[:, order]
    keep = w > w[0] * 1e-12  # directions of (numerically) zero variance have no defined direction
    vt = (u[:, keep].T @ xc) / np.sqrt(w[keep])[:, None]
    return w, np.vstack([vt, np.zeros((int((~keep).sum()), d))])


@dataclass
class DomainScore:
    """One image's distance from the training images."""

    distance: float  # the largest standardised layer score
    threshold: float
    layer: str  # the layer that gave it (LayerSpec.name)

    @property
    def outside(self) -> bool:
        return self.distance > self.threshold

    @property
    def reason(self) -> str:
        return (
            f"outside the training images: feature distance {self.distance:.2f} > threshold "
            f"{self.threshold:.2f} ({self.layer})"
        )


@dataclass
class DomainModel:
    """All layers' statistics, the threshold and how it was chosen."""

    layers: list[LayerStats]
    threshold: float
    quantile: float  # of the validation distances
    summary: dict[str, Any]  # counts and rates recorded by training (for the manifest and reports)

    @property
    def specs(self) -> tuple[LayerSpec, ...]:
        return tuple(layer.spec for layer in self.layers)

    def specs_of(self, model: str) -> tuple[LayerSpec, ...]:
        return tuple(s for s in self.specs if s.model == model)

    def standardised(self, descriptors: Mapping[str, np.ndarray | torch.Tensor]) -> np.ndarray:
        """{layer name: (N, D)} -> (N, L) standardised layer scores."""
        missing = [layer.spec.name for layer in self.layers if layer.spec.name not in descriptors]
        if missing:
            raise DomainError(f"descriptors missing for layer(s) {', '.join(missing)}")
        return np.stack([layer.standardised(descriptors[layer.spec.name]) for layer in self.layers], axis=1)

    def distances(self, descriptors: Mapping[str, np.ndarray | torch.Tensor]) -> np.ndarray:
        return self.standardised(descriptors).max(axis=1)

    def score(self, descriptors: Mapping[str, np.ndarray | torch.Tensor]) -> list[DomainScore]:
        z = self.standardised(descriptors)
        best = z.argmax(axis=1)
        return [DomainScore(float(z[i, j]), self.threshold, self.layers[j].spec.name) for i, j in enumerate(best)]

    # -- storage ------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        arrays: dict[str, Any] = {
            "format": np.array(FORMAT),
            "layers": np.array([layer.spec.name for layer in self.layers]),
            "threshold": np.array(self.threshold),
            "quantile": np.array(self.quantile),
        }
        for i, layer in enumerate(self.layers):
            arrays[f"{i}.mean"] = layer.mean.astype(np.float64)
            arrays[f"{i}.components"] = layer.components.astype(np.float32)
            arrays[f"{i}.variances"] = layer.variances.astype(np.float64)
            arrays[f"{i}.scalars"] = np.array([layer.residual_variance, layer.z_mean, layer.z_std], np.float64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, summary: dict[str, Any] | None = None, where: str = FILE) -> DomainModel:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:
            raise DomainError(f"{where}: not a readable .npz file: {exc}") from exc
        if str(arrays.get("format")) != FORMAT:
            raise DomainError(f"{where}: format must be {FORMAT!r}, got {arrays.get('format')!r}")
        try:
            layers = []
            for i, name in enumerate(arrays["layers"].tolist()):
                residual, z_mean, z_std = arrays[f"{i}.scalars"].tolist()
                layers.append(
                    LayerStats(
                        LayerSpec.parse(str(name)),
                        arrays[f"{i}.mean"].astype(np.float64),
                        arrays[f"{i}.components"].astype(np.float64),
                        arrays[f"{i}.variances"].astype(np.float64),
                        float(residual),
                        float(z_mean),
                        float(z_std),
                    )
                )
            threshold, quantile = float(arrays["threshold"]), float(arrays["quantile"])
        except (KeyError, ValueError) as exc:
            raise DomainError(f"{where}: missing or malformed entry: {exc}") from exc
        if not layers:
            raise DomainError(f"{where}: no layers")
        for layer in layers:
            d = layer.mean.shape[0]
            if layer.components.ndim != 2 or layer.components.shape[1] != d or not np.isfinite(layer.components).all():
                raise DomainError(f"{where}: layer {layer.spec.name}: components do not fit the mean ({d} values)")
        if not np.isfinite(threshold):
            raise DomainError(f"{where}: threshold {threshold} is not a finite number")
        return cls(layers, threshold, quantile, summary or {})


def fit_domain(
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    specs: tuple[LayerSpec, ...],
    *,
    components: int,
    quantile: float,
) -> DomainModel:
    """Fit each layer on the training descriptors, standardise on the validation ones, and set the
    threshold at `quantile` of the validation distances (so 1 - quantile of in-domain validation
    images are flagged, by construction; test images tell the honest rate)."""
    if not 0.5 <= quantile < 1.0:
        raise DomainError(f"quantile {quantile} must be in [0.5, 1)")
    if not specs:
        raise DomainError("no layers to fit")
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise DomainError(f"layer {name} is named twice")
    layers = []
    for spec in specs:
        if spec.name not in train or spec.name not in val:
            raise DomainError(f"descriptors missing for layer {spec.name}")
        for part, desc in (("training", train[spec.name]), ("validation", val[spec.name])):
            if not np.isfinite(desc).all():  # overflowed activations: the threshold would be nan
                raise DomainError(f"{spec.name}: {part} descriptors hold values that are not finite numbers")
        layer = fit_layer(spec, train[spec.name], components)
        v = np.log(layer.squared_distance(val[spec.name]) + _EPS)
        if len(v) < 2:
            raise DomainError(f"{spec.name}: {len(v)} validation image(s), at least 2 needed")
        layer.z_mean, layer.z_std = float(v.mean()), float(max(v.std(ddof=1), 1e-6))
        layers.append(layer)
    model = DomainModel(layers, 0.0, quantile, {})
    threshold = float(np.quantile(model.distances(val), quantile))
    if not np.isfinite(threshold):
        raise DomainError(f"the validation distances give no finite threshold ({threshold})")
    model.threshold = threshold
    return model


def flagged_summary(distances: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts for reports: n, flagged, rate."""
    n = int(len(distances))
    flagged = int((np.asarray(distances) > threshold).sum())
    return {"n": n, "flagged": flagged, "rate": flagged / n if n else None}


__all__ = [
    "FILE",
    "FORMAT",
    "DomainError",
    "DomainModel",
    "DomainScore",
    "LayerSpec",
    "LayerStats",
    "fit_domain",
    "extract",
    "fit_layer",
    "flagged_summary",
    "forward_with_descriptors",
    "parse_layers",
    "pool_descriptor",
]
