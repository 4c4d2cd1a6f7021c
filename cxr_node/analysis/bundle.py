"""Model bundles: one directory holding model A, model B and a JSON manifest that vouches for them.

manifest.json:
    format            "cxr-node-bundle/1"
    name, version     shown in every result (SR algorithm identification, SC legend)
    architecture      one of analysis.architectures.ARCHITECTURES ("densenet161", the paper's, or "densenet121")
    input_size        square model input in pixels
    thresholds        {"a": t_A, "b": t_B} for the joint rule (chosen on validation by training)
    models            {"A": {"file", "sha256", "classes"}, "B": {...}}
    domain            optional: {"file", "sha256", "threshold", "layers", ...} out-of-domain
                      statistics (domain.py); a bundle without them runs with that check off
    training          free-form summary written by `cxr-node train` (data, splits, metrics)
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr_node.analysis.architectures import ARCHITECTURES, DEFAULT_ARCH
from cxr_node.analysis.domain import FILE as DOMAIN_FILE
from cxr_node.analysis.domain import DomainError, DomainModel
from cxr_node.analysis.fusion import Thresholds
from cxr_node.analysis.models import MODEL_CLASSES, build_densenet
from cxr_node.storage import write_durably

FORMAT = "cxr-node-bundle/1"
MANIFEST = "manifest.json"
UNTRAINED_NAME = "untrained-densenet161"


class BundleError(ValueError):
    """The bundle is missing, corrupt or inconsistent; the message names the file or key."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Bundle:
    name: str
    version: str
    input_size: int
    thresholds: Thresholds
    model_a: nn.Module
    model_b: nn.Module
    trained: bool
    sha256: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    domain: DomainModel | None = None  # out-of-domain statistics; None: the check is off
    architecture: str = DEFAULT_ARCH  # a key of ARCHITECTURES

    @property
    def domain_status(self) -> str:
        """One line for logs and the status page: is the out-of-domain check on, and with what."""
        if self.domain is None:
            return "out-of-domain check off: the bundle has no feature statistics (train it again to add them)"
        return (
            f"out-of-domain check on: {len(self.domain.layers)} feature layer(s), threshold "
            f"{self.domain.threshold:.2f} ({self.domain.quantile:.1%} quantile of validation images)"
        )

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


def untrained_bundle(input_size: int = 224, seed: int = 0) -> Bundle:
    """Random weights, for demos and tests; every result made with it says so."""
    torch.manual_seed(seed)
    model_a, model_b = build_densenet(DEFAULT_ARCH), build_densenet(DEFAULT_ARCH)
    return Bundle(
        name=UNTRAINED_NAME,
        version="0",
        input_size=input_size,
        thresholds=Thresholds(0.5, 0.5),
        model_a=model_a.eval(),
        model_b=model_b.eval(),
        trained=False,
        sha256={"A": "untrained", "B": "untrained"},
    )


def _require(manifest: dict, key: str, kind: type, where: Path):
    if key not in manifest:
        raise BundleError(f"{where}: key {key!r} is missing")
    value = manifest[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BundleError(f"{where}: key {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def load_bundle(directory: str | Path) -> Bundle:
    """Load and verify a bundle; refuses a wrong format, a bad sha256 or weights that do not fit."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: no model bundle manifest here")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: top level must be an object")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: key 'format' must be {FORMAT!r}, got {manifest.get('format')!r}")
    arch = _require(manifest, "architecture", str, manifest_path)
    if arch not in ARCHITECTURES:
        raise BundleError(f"{manifest_path}: key 'architecture' {arch!r} is not supported ({', '.join(ARCHITECTURES)})")
    name = _require(manifest, "name", str, manifest_path)
    version = _require(manifest, "version", str, manifest_path)
    input_size = _require(manifest, "input_size", int, manifest_path)
    if not 32 <= input_size <= 2048:
        raise BundleError(f"{manifest_path}: key 'input_size' {input_size} is outside 32..2048")
    th = _require(manifest, "thresholds", dict, manifest_path)
    try:
        thresholds = Thresholds(float(th["a"]), float(th["b"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{manifest_path}: key 'thresholds' needs numbers 'a' and 'b' in (0, 1): {exc}") from exc
    models = _require(manifest, "models", dict, manifest_path)

    loaded: dict[str, nn.Module] = {}
    digests: dict[str, str] = {}
    for key in ("A", "B"):
        entry = models.get(key)
        if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
            raise BundleError(f"{manifest_path}: key 'models.{key}' needs 'file' and 'sha256'")
        weights = directory / entry["file"]
        if not weights.is_file():
            raise BundleError(f"{weights}: weights file of model {key} is missing")
        actual = sha256_file(weights)
        if actual != entry["sha256"]:
            raise BundleError(
                f"{weights}: sha256 {actual[:12]}… does not match manifest models.{key}.sha256 "
                f"{str(entry['sha256'])[:12]}… (corrupt or replaced file)"
            )
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model = build_densenet(arch)
            model.load_state_dict(state)
        except Exception as exc:
            raise BundleError(f"{weights}: not a {ARCHITECTURES[arch].title} 2-class state dict: {exc}") from exc
        loaded[key] = model.eval()
        digests[key] = actual

    return Bundle(
        name=name,
        version=version,
        input_size=input_size,
        thresholds=thresholds,
        model_a=loaded["A"],
        model_b=loaded["B"],
        trained=True,
        sha256=digests,
        training=manifest.get("training", {}),
        path=directory,
        domain=_load_domain(directory, manifest, manifest_path),
        architecture=arch,
    )


def _load_domain(directory: Path, manifest: dict, manifest_path: Path) -> DomainModel | None:
    """The optional out-of-domain statistics, verified like the weights."""
    entry = manifest.get("domain")
    if entry is None:
        return None
    if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
        raise BundleError(f"{manifest_path}: key 'domain' needs 'file' and 'sha256'")
    path = directory / str(entry["file"])
    if not path.is_file():
        raise BundleError(f"{path}: out-of-domain statistics file named by key 'domain.file' is missing")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry["sha256"]:
        raise BundleError(
            f"{path}: sha256 {actual[:12]}… does not match manifest domain.sha256 "
            f"{str(entry['sha256'])[:12]}… (corrupt or replaced file)"
        )
    try:
        return DomainModel.from_bytes(data, summary=dict(entry), where=str(path))
    except DomainError as exc:
        raise BundleError(str(exc)) from exc


def write_bundle(
    directory: str | Path,
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    name: str,
    version: str,
    input_size: int,
    thresholds: Thresholds,
    training: dict[str, Any] | None = None,
    domain: DomainModel | None = None,
    architecture: str = DEFAULT_ARCH,
) -> Path:
    """Write weights (and out-of-domain statistics) then the manifest (last, so a half-written
    bundle has no manifest). `architecture` names the models' DenseNet (a key of ARCHITECTURES)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture {architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    for key, model in (("A", model_a), ("B", model_b)):
        path = directory / f"model_{key.lower()}.pt"
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        write_durably(path, data)
        digest = hashlib.sha256(data).hexdigest()
        entries[key] = {"file": path.name, "sha256": digest, "classes": list(MODEL_CLASSES[key])}
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "architecture": architecture,
        "input_size": int(input_size),
        "thresholds": {"a": thresholds.a, "b": thresholds.b},
        "models": entries,
        "training": training or {},
    }
    if domain is not None:
        data = domain.to_bytes()
        write_durably(directory / DOMAIN_FILE, data)
        manifest["domain"] = {
            "file": DOMAIN_FILE,
            "sha256": hashlib.sha256(data).hexdigest(),
            "threshold": domain.threshold,
            "quantile": domain.quantile,
            "layers": [spec.name for spec in domain.specs],
            **domain.summary,
        }
    write_durably(directory / MANIFEST, json.dumps(manifest, indent=2).encode("utf-8"))
    return directory
