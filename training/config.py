"""Typed training configuration read from TOML; every error names the offending key.

Sections and keys are documented in docs/training.md. Unknown keys are errors
(a typo such as `optim.learning_rate` must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_node import validation as V
from cxr_node.analysis.architectures import ARCHITECTURES, DEFAULT_ARCH
from cxr_node.analysis.domain_layers import DEFAULT_LAYERS as DEFAULT_DOMAIN_LAYERS
from cxr_node.analysis.domain_layers import MODELS as DOMAIN_MODELS
from cxr_node.analysis.domain_layers import POOLS as DOMAIN_POOLS
from cxr_node.analysis.domain_layers import TAPS as DOMAIN_TAPS

STEP_MODES = ("auto", "eager", "compile", "cuda_graphs")
PIPELINES = ("auto", "device", "loader")
PARALLEL_MODES = ("processes", "grouped")
POINTWISE = ("conv", "matmul")  # training.fast.grouped.POINTWISE (not imported: config stays torch-free)
SCHEDULES = ("constant", "cosine")


# One config system for the node and training: the same error class and checkers (cxr_node.validation).
ConfigError = V.ConfigError


@dataclass(frozen=True)
class RunConfig:
    name: str = "cxr-covid"
    version: str = "1"
    seed: int = 0
    repetitions: int = 5
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 4  # DataLoader workers (and image decoding threads)
    amp: bool = True  # bfloat16 autocast, only on CUDA
    channels_last: bool = True  # only on CUDA
    deterministic: bool = True
    # Processes training repetitions (and models A and B) side by side on the one device;
    # 1 = one after the other in this process. Same results either way.
    parallel: int = 1
    # How N > 1 trainings share the device: "processes" (N processes, fit's exact results) or
    # "grouped" (one network whose every layer holds the N models; far fewer, larger GPU kernels).
    parallel_mode: str = "processes"
    # Grouped mode: 1x1 convolutions as grouped cuDNN convolutions ("conv") or batched GEMMs
    # ("matmul"); the same arithmetic, a different kernel count (docs/training.md).
    grouped_pointwise: str = "conv"
    # Training step: auto (cuda_graphs on CUDA, eager on CPU) | eager | compile | cuda_graphs.
    step: str = "auto"
    # Write the resumable checkpoint every N epochs (and after the last); 1 = every epoch.
    checkpoint_every: int = 1


@dataclass(frozen=True)
class DataConfig:
    input_size: int = 224
    # 0 = every image; N > 0 = a random subset of N images drawn by patient (for quick runs).
    subset: int = 0
    # Where augmentation runs: auto (device when the squares fit) | device (the letterboxed
    # squares live on the training device; scaling/flip there, in batch) | loader (DataLoader
    # workers, OpenCV on the CPU).
    pipeline: str = "auto"


@dataclass(frozen=True)
class SplitConfig:
    unit: str = "patient"  # patient (grouped, stratified) | image (the paper's image-level split)
    train: float = 0.6
    val: float = 0.2
    test: float = 0.2
    # Two images whose 64-bit perceptual hashes differ in at most this many bits are near-duplicates.
    near_duplicate_bits: int = 6
    # Keep near-duplicate images (and so their patients) in the same split.
    group_near_duplicates: bool = True


@dataclass(frozen=True)
class ModelConfig:
    init: str = "imagenet"  # imagenet | scratch
    imagenet_weights: str = ""  # empty: $TORCH_HOME/hub/checkpoints/<arch's torchvision file>
    # densenet161 (the paper's) | densenet121 (~3x cheaper per CPU step; tests and quick runs)
    arch: str = DEFAULT_ARCH


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 4  # global batch; divided among DDP processes
    epochs: int = 200
    schedule: str = "constant"  # constant | cosine (per epoch, after warm-up)
    warmup_epochs: int = 0  # linear warm-up from lr / (warmup_epochs + 1) to lr
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class AugmentConfig:
    scale_min: float = 0.9
    scale_max: float = 1.1
    hflip: float = 0.5  # probability
    rotate: float = 0.0  # degrees: a random rotation in [-rotate, rotate]
    translate: float = 0.0  # fraction of the side: a random shift in [-translate, translate] per axis


@dataclass(frozen=True)
class ApproachConfig:
    # Approach B on a balanced 1:1:1 normal/pathological/COVID subset of each split (the paper's option).
    b_balanced: bool = True
    # Validation quantity that picks the epoch kept: auc | balanced_accuracy | accuracy | loss.
    select_metric: str = "auc"


@dataclass(frozen=True)
class ReportConfig:
    gradcam_examples: int = 6


@dataclass(frozen=True)
class DomainConfig:
    """The out-of-domain check's statistics (cxr_node.analysis.domain), fitted after training."""

    enabled: bool = True
    # Descriptors, MODEL:TAP:POOL separated by commas (docs/training.md, "Out-of-domain check").
    layers: str = DEFAULT_DOMAIN_LAYERS
    components: int = 16  # principal directions per layer that keep their own variance
    quantile: float = 0.975  # threshold = this quantile of the validation images' distances


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    approach: ApproachConfig = field(default_factory=ApproachConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights (not device or worker count)."""
        d = self.to_dict()
        # how and where it runs, not what it computes (parallel processes give the same weights)
        for key in ("device", "num_workers", "parallel", "step", "checkpoint_every", "grouped_pointwise"):
            d["run"].pop(key)
        # grouped trainings leave a few images out of each epoch (training.fast.grouped_fit): other weights
        if self.run.parallel == 1 or self.run.parallel_mode == "processes":
            d["run"].pop("parallel_mode")
        d["report"] = {}
        d.pop("domain")  # statistics fitted after training: the weights do not depend on them
        # the default architecture hashes as before the key existed, so earlier runs' fingerprints
        # (and their checkpoints, which resume only under the same fingerprint) stay valid
        if self.model.arch == DEFAULT_ARCH:
            d["model"].pop("arch")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_SECTION_TYPES = {
    "run": RunConfig,
    "data": DataConfig,
    "split": SplitConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "augment": AugmentConfig,
    "approach": ApproachConfig,
    "report": ReportConfig,
    "domain": DomainConfig,
}


def _check(cfg: TrainConfig) -> None:
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    r, d, s, m, o, a, ap = cfg.run, cfg.data, cfg.split, cfg.model, cfg.optim, cfg.augment, cfg.approach
    need(bool(r.name.strip()), "run.name", "must not be empty")
    need(bool(r.version.strip()), "run.version", "must not be empty")
    need(r.repetitions >= 1, "run.repetitions", f"must be >= 1, got {r.repetitions}")
    need(r.num_workers >= 0, "run.num_workers", f"must be >= 0, got {r.num_workers}")
    V.device("run.device", r.device)
    need(r.parallel >= 1, "run.parallel", f"must be >= 1, got {r.parallel}")
    need(
        r.parallel_mode in PARALLEL_MODES,
        "run.parallel_mode",
        f"must be one of {', '.join(PARALLEL_MODES)}, got {r.parallel_mode!r}",
    )
    need(
        r.grouped_pointwise in POINTWISE,
        "run.grouped_pointwise",
        f"must be one of {', '.join(POINTWISE)}, got {r.grouped_pointwise!r}",
    )
    need(r.step in STEP_MODES, "run.step", f"must be one of {', '.join(STEP_MODES)}, got {r.step!r}")
    need(r.checkpoint_every >= 1, "run.checkpoint_every", f"must be >= 1, got {r.checkpoint_every}")
    need(d.pipeline in PIPELINES, "data.pipeline", f"must be one of {', '.join(PIPELINES)}, got {d.pipeline!r}")
    need(32 <= d.input_size <= 2048, "data.input_size", f"must lie in 32..2048, got {d.input_size}")
    need(d.subset >= 0, "data.subset", f"must be >= 0 (0 = all images), got {d.subset}")
    need(s.unit in ("patient", "image"), "split.unit", f"must be 'patient' or 'image', got {s.unit!r}")
    for key in ("train", "val", "test"):
        need(0.0 < getattr(s, key) < 1.0, f"split.{key}", f"must lie in (0, 1), got {getattr(s, key)}")
    need(
        abs(s.train + s.val + s.test - 1.0) < 1e-6,
        "split.test",
        f"split.train + split.val + split.test must be 1, got {s.train + s.val + s.test:g}",
    )
    need(
        0 <= s.near_duplicate_bits <= 32, "split.near_duplicate_bits", f"must lie in 0..32, got {s.near_duplicate_bits}"
    )
    need(m.init in ("imagenet", "scratch"), "model.init", f"must be 'imagenet' or 'scratch', got {m.init!r}")
    need(m.arch in ARCHITECTURES, "model.arch", f"must be one of {', '.join(ARCHITECTURES)}, got {m.arch!r}")
    need(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    need(0 <= o.momentum < 1, "optim.momentum", f"must lie in [0, 1), got {o.momentum}")
    need(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    need(o.batch_size >= 2, "optim.batch_size", f"must be >= 2 (BatchNorm needs two images), got {o.batch_size}")
    need(o.epochs >= 1, "optim.epochs", f"must be >= 1, got {o.epochs}")
    need(o.schedule in SCHEDULES, "optim.schedule", f"must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}")
    need(
        0 <= o.warmup_epochs < o.epochs,
        "optim.warmup_epochs",
        f"must lie in 0..optim.epochs - 1 ({o.epochs - 1}), got {o.warmup_epochs}",
    )
    need(0 <= o.label_smoothing < 1, "optim.label_smoothing", f"must lie in [0, 1), got {o.label_smoothing}")
    need(
        0 < a.scale_min <= a.scale_max,
        "augment.scale_min",
        f"need 0 < scale_min <= scale_max, got {a.scale_min}, {a.scale_max}",
    )
    need(a.scale_max <= 2.0, "augment.scale_max", f"must be <= 2, got {a.scale_max}")
    need(0 <= a.hflip <= 1, "augment.hflip", f"is a probability in [0, 1], got {a.hflip}")
    need(0 <= a.rotate <= 45, "augment.rotate", f"must lie in 0..45 degrees, got {a.rotate}")
    need(
        0 <= a.translate <= 0.25,
        "augment.translate",
        f"must lie in [0, 0.25] (fraction of the side), got {a.translate}",
    )
    need(
        ap.select_metric in ("auc", "balanced_accuracy", "accuracy", "loss"),
        "approach.select_metric",
        f"must be auc, balanced_accuracy, accuracy or loss, got {ap.select_metric!r}",
    )
    need(cfg.report.gradcam_examples >= 0, "report.gradcam_examples", "must be >= 0")
    dm = cfg.domain
    need(1 <= dm.components <= 1024, "domain.components", f"must lie in 1..1024, got {dm.components}")
    need(0.5 <= dm.quantile < 1, "domain.quantile", f"must lie in [0.5, 1), got {dm.quantile}")
    layers = [x.strip() for x in dm.layers.split(",") if x.strip()]
    need(bool(layers) or not dm.enabled, "domain.layers", "must name at least one MODEL:TAP:POOL layer")
    for layer in layers:
        parts = layer.split(":")
        need(
            len(parts) == 3 and parts[0] in DOMAIN_MODELS and parts[1] in DOMAIN_TAPS and parts[2] in DOMAIN_POOLS,
            "domain.layers",
            f"{layer!r} must read MODEL:TAP:POOL with MODEL A or B, TAP one of {', '.join(DOMAIN_TAPS)}, "
            f"POOL one of {', '.join(DOMAIN_POOLS)}",
        )


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    sections = {}
    for name, value in raw.items():
        if name not in _SECTION_TYPES:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(_SECTION_TYPES)})")
        sections[name] = V.section_from_table(name, value, _SECTION_TYPES[name])
    cfg = TrainConfig(**sections)
    _check(cfg)
    return cfg


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{key.strip()}: --set needs section.key")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # bare words are strings: --set run.device=cpu
    return parts, value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for item in overrides:
        (section, key), value = _parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: must be a table")
        raw[section][key] = value
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
