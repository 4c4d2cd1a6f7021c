"""Model bundles: round trip, and refusal of corrupt or inconsistent ones with a clear message."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from cxr_node.analysis.bundle import BundleError, load_bundle, untrained_bundle, write_bundle
from cxr_node.analysis.densenet import DenseNet
from cxr_node.analysis.fusion import Thresholds
from cxr_node.analysis.models import build_densenet
from cxr_node.cli import main


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    src = untrained_bundle(input_size=96, seed=3)
    return write_bundle(
        tmp_path_factory.mktemp("bundle"),
        src.model_a,
        src.model_b,
        name="test-cxr",
        version="1.2.3",
        input_size=96,
        thresholds=Thresholds(0.3, 0.7),
        training={"note": "random weights for tests"},
    )


@pytest.fixture
def copy(bundle_dir, tmp_path):
    return shutil.copytree(bundle_dir, tmp_path / "b")


def test_round_trip_keeps_weights_thresholds_and_identity(bundle_dir):
    b = load_bundle(bundle_dir)
    assert (b.name, b.version, b.input_size, b.trained) == ("test-cxr", "1.2.3", 96, True)
    assert b.thresholds == Thresholds(0.3, 0.7)
    ref = untrained_bundle(input_size=96, seed=3)
    for key, _model in (("A", b.model_a), ("B", b.model_b)):
        assert len(b.sha256[key]) == 64
    for loaded, original in ((b.model_a, ref.model_a), (b.model_b, ref.model_b)):
        for (k1, v1), (k2, v2) in zip(loaded.state_dict().items(), original.state_dict().items(), strict=True):
            assert k1 == k2 and torch.equal(v1, v2)


def test_flipped_byte_is_caught_by_sha256(copy):
    weights = copy / "model_b.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model_b\.pt: sha256 .* does not match manifest models\.B\.sha256"):
        load_bundle(copy)


def test_missing_manifest_and_missing_weights_name_the_file(copy, tmp_path):
    with pytest.raises(BundleError, match="manifest.json: no model bundle manifest"):
        load_bundle(tmp_path / "nowhere")
    (copy / "model_a.pt").unlink()
    with pytest.raises(BundleError, match="model_a.pt: weights file of model A is missing"):
        load_bundle(copy)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m.update(format="something-else"), "key 'format'"),
        (lambda m: m.pop("input_size"), "key 'input_size' is missing"),
        (lambda m: m.update(input_size="224"), "key 'input_size' must be int"),
        (lambda m: m.update(thresholds={"a": 0.5}), "key 'thresholds'"),
        (lambda m: m.update(thresholds={"a": 0.5, "b": 1.0}), "between 0 and 1"),
        (
            lambda m: m.update(architecture="resnet50"),
            r"key 'architecture' 'resnet50' is not supported \(densenet161, densenet121\)",
        ),
    ],
)
def test_manifest_errors_name_the_key(copy, edit, message):
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises((BundleError, ValueError), match=message):
        load_bundle(copy)


def test_weights_of_another_shape_are_refused_even_with_matching_sha(copy):
    from cxr_node.analysis.bundle import sha256_file

    torch.save(build_densenet("densenet161", num_classes=3).state_dict(), copy / "model_a.pt")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["models"]["A"]["sha256"] = sha256_file(copy / "model_a.pt")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not a DenseNet-161 2-class state dict"):
        load_bundle(copy)


def test_densenet121_bundle_round_trip(tmp_path):
    torch.manual_seed(4)
    a, b = build_densenet("densenet121"), build_densenet("densenet121")
    write_bundle(tmp_path, a, b, name="small", version="1", input_size=64, thresholds=Thresholds(0.5, 0.5),
                 architecture="densenet121")  # fmt: skip
    assert json.loads((tmp_path / "manifest.json").read_text())["architecture"] == "densenet121"
    loaded = load_bundle(tmp_path)
    assert loaded.architecture == "densenet121" and isinstance(loaded.model_a, DenseNet)
    assert loaded.model_a.features.denseblock3.denselayer24.conv2.out_channels == 32  # 121: growth 32, 24 layers
    for original, model in ((a, loaded.model_a), (b, loaded.model_b)):
        assert all(torch.equal(v, original.state_dict()[k]) for k, v in model.state_dict().items())
    # weights of one architecture under a manifest naming the other: refused, the file named
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["architecture"] = "densenet161"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"model_a\.pt: not a DenseNet-161 2-class state dict"):
        load_bundle(tmp_path)
    assert untrained_bundle(64).architecture == "densenet161"


def test_serve_refuses_a_corrupt_bundle_with_the_file_named(copy, tmp_path):
    (copy / "model_a.pt").write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["serve", "--models", str(copy), "--storage", str(tmp_path / "s"), "--port", "0"])
    assert result.exit_code != 0
    assert "models.dir" in result.output and "model_a.pt" in result.output and "sha256" in result.output
