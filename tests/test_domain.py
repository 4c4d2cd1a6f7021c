"""Out-of-domain check: PPCA statistics and threshold on synthetic features, storage in the bundle,
descriptors from the same forward, the engine's score, and processing's not_analysable outcome."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cxr_node.analysis.bundle import BundleError, load_bundle, untrained_bundle, write_bundle
from cxr_node.analysis.cam import forward_with_features
from cxr_node.analysis.domain import (
    DomainError,
    DomainModel,
    LayerSpec,
    extract,
    fit_domain,
    fit_layer,
    flagged_summary,
    forward_with_descriptors,
    parse_layers,
)
from cxr_node.analysis.engine import Analyzer
from cxr_node.decoding.pixels import read_image
from cxr_node.decoding.pool import Decoded
from cxr_node.processing import OutcomeKind, process_batch
from cxr_node.results.identity import ModelIdentity, NodeIdentity

SIZE = 64
SPEC = LayerSpec("A", "final", "gap")


def _gaussian(n: int, d: int, rank: int, seed: int) -> np.ndarray:
    """n points in d dims that vary mostly along `rank` directions (like CNN features)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(99).normal(size=(d, rank)))[0].T  # (rank, d), fixed
    return rng.normal(size=(n, rank)) * np.linspace(5, 1, rank) @ basis + 0.1 * rng.normal(size=(n, d)) + 3.0


def test_ppca_distance_is_small_inside_and_large_off_the_training_subspace():
    train, held_out = _gaussian(400, 50, 5, 0), _gaussian(200, 50, 5, 1)
    layer = fit_layer(SPEC, train, k=5)
    inside = layer.squared_distance(held_out)
    assert inside.mean() == pytest.approx(50, rel=0.2)  # chi-square with d degrees of freedom
    # the same norm of shift, once along the largest training direction, once where training never varies
    along = held_out + 1.0 * layer.components[0]
    off = held_out.copy()
    off_dir = np.linalg.qr(np.c_[layer.components.T, np.random.default_rng(5).normal(size=50)])[0][:, -1]
    off += 1.0 * off_dir
    assert np.median(layer.squared_distance(along)) < np.median(inside) * 1.1
    assert np.median(layer.squared_distance(off)) > np.median(inside) + 80  # + 1.0**2 / residual variance 0.01


def test_fit_layer_survives_more_dimensions_than_images_and_constant_channels():
    x = _gaussian(20, 300, 4, 2)
    x[:, 7] = 1.0  # a dead channel
    layer = fit_layer(SPEC, x, k=64)  # k larger than the data allows
    assert layer.components.shape == (19, 300) and np.isfinite(layer.squared_distance(x)).all()
    assert layer.residual_variance > 0 and (layer.variances > 0).all()
    with pytest.raises(DomainError, match="at least 3"):
        fit_layer(SPEC, x[:2], k=4)


def _fitted(quantile: float = 0.95) -> tuple[DomainModel, dict, dict]:
    specs = (LayerSpec("A", "denseblock1", "grid4"), LayerSpec("B", "final", "gap"))
    train = {specs[0].name: _gaussian(300, 40, 4, 10), specs[1].name: _gaussian(300, 30, 3, 11)}
    val = {specs[0].name: _gaussian(200, 40, 4, 12), specs[1].name: _gaussian(200, 30, 3, 13)}
    return fit_domain(train, val, specs, components=4, quantile=quantile), train, val


def test_threshold_is_the_validation_quantile_and_shifted_images_are_flagged():
    domain, _, val = _fitted(0.95)
    d = domain.distances(val)
    assert flagged_summary(d, domain.threshold)["flagged"] == int(np.sum(d > domain.threshold))
    assert 0.04 <= np.mean(d > domain.threshold) <= 0.06
    # one layer alone moving away is enough: the largest standardised score decides and is named
    away = dict(val)
    away["B:final:gap"] = val["B:final:gap"] + 3 * np.random.default_rng(0).normal(size=val["B:final:gap"].shape)
    scores = domain.score(away)
    assert np.mean([s.outside for s in scores]) > 0.95
    assert all(s.layer == "B:final:gap" for s in scores if s.outside)
    text = scores[0].reason
    assert text.startswith("outside the training images: feature distance ") and "> threshold" in text


def test_fit_refuses_bad_settings():
    domain, train, val = _fitted()
    with pytest.raises(DomainError, match="quantile"):
        fit_domain(train, val, domain.specs, components=4, quantile=1.0)
    with pytest.raises(DomainError, match="missing"):
        fit_domain(train, {}, domain.specs, components=4, quantile=0.9)
    with pytest.raises(DomainError, match="twice"):
        fit_domain(train, val, (*domain.specs, domain.specs[0]), components=4, quantile=0.9)
    # a diverged model's overflowed activations (seen at 32 px: threshold nan in a written bundle)
    broken = dict(train)
    broken["B:final:gap"] = train["B:final:gap"].copy()
    broken["B:final:gap"][7, 3] = np.inf
    with pytest.raises(DomainError, match=r"^B:final:gap: training descriptors hold values that are not finite"):
        fit_domain(broken, val, domain.specs, components=4, quantile=0.9)
    with pytest.raises(DomainError, match="MODEL:TAP:POOL"):
        parse_layers("A:final")
    with pytest.raises(DomainError, match="tap"):
        parse_layers("A:denseblock9:gap")


def test_statistics_round_trip_and_refuse_damage():
    domain, _, val = _fitted()
    back = DomainModel.from_bytes(domain.to_bytes())
    assert back.specs == domain.specs and back.threshold == domain.threshold
    np.testing.assert_allclose(back.distances(val), domain.distances(val), atol=1e-4)  # components kept as float32
    with pytest.raises(DomainError, match="readable"):
        DomainModel.from_bytes(b"not an npz")


@pytest.fixture(scope="module")
def bundle():
    return untrained_bundle(SIZE)


def test_descriptors_come_from_the_classification_forward(bundle):
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32))
    specs = parse_layers("A:denseblock1:grid4,A:denseblock2:std,A:final:gap,A:denseblock3:grid2")
    with torch.inference_mode():
        feats, logits = forward_with_features(bundle.model_a, x)
        f2, l2, *desc = forward_with_descriptors(bundle.model_a, x, specs)
    torch.testing.assert_close(f2, feats)
    torch.testing.assert_close(l2, logits)
    assert [tuple(d.shape) for d in desc] == [(2, 384 * 16), (2, 768), (2, 2208), (2, 2112 * 4)]
    torch.testing.assert_close(desc[2], feats.mean(dim=(2, 3)))  # the classifier's own pooled features


def _domain_for(bundle, threshold: float | None = None) -> DomainModel:
    """Statistics fitted on random letterboxed noise through the bundle's own models."""
    rng = np.random.default_rng(1)
    squares = rng.random((24, SIZE, SIZE), dtype=np.float32)
    specs = parse_layers("A:denseblock1:grid4,B:final:gap")
    desc = {}
    for key, model in (("A", bundle.model_a), ("B", bundle.model_b)):
        desc.update(extract(model, squares, tuple(s for s in specs if s.model == key)))
    half = {k: v[:12] for k, v in desc.items()}, {k: v[12:] for k, v in desc.items()}
    domain = fit_domain(half[0], half[1], specs, components=4, quantile=0.9)
    if threshold is not None:
        domain.threshold = threshold
    return domain


@pytest.mark.slow
def test_bundle_stores_the_statistics_and_verifies_them(bundle, tmp_path):
    domain = _domain_for(bundle)
    domain.summary = {"fitted_on_images": 12}
    write_bundle(
        tmp_path / "b",
        bundle.model_a,
        bundle.model_b,
        name="t",
        version="1",
        input_size=SIZE,
        thresholds=bundle.thresholds,
        domain=domain,
    )
    loaded = load_bundle(tmp_path / "b")
    assert loaded.domain is not None and loaded.domain.threshold == domain.threshold
    assert "out-of-domain check on: 2 feature layer(s)" in loaded.domain_status
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["domain"]["layers"] == ["A:denseblock1:grid4", "B:final:gap"]
    assert manifest["domain"]["fitted_on_images"] == 12
    (tmp_path / "b" / "domain.npz").write_bytes(b"replaced")
    with pytest.raises(BundleError, match="domain.sha256"):
        load_bundle(tmp_path / "b")
    # a bundle without statistics loads with the check off and says so
    write_bundle(
        tmp_path / "old",
        bundle.model_a,
        bundle.model_b,
        name="t",
        version="1",
        input_size=SIZE,
        thresholds=bundle.thresholds,
    )
    old = load_bundle(tmp_path / "old")
    assert old.domain is None and old.domain_status.startswith("out-of-domain check off: the bundle has no")


def test_engine_scores_in_the_same_forward_and_matches_extract(bundle):
    domain = _domain_for(bundle)
    analyzer = Analyzer(replace(bundle, domain=domain), "cpu")
    plain = Analyzer(bundle, "cpu")
    images = [np.random.default_rng(7).random((80, 60), dtype=np.float32), np.zeros((70, 70), np.float32)]
    got, ref = analyzer.analyse(images), plain.analyse(images)
    for g, r in zip(got, ref, strict=True):
        assert g.result == r.result  # the check changes no probability
        assert g.domain is not None and r.domain is None
    from cxr_node.analysis.preprocess import square_input

    squares = np.stack([square_input(i, SIZE)[0] for i in images])
    desc = {
        **extract(bundle.model_a, squares, domain.specs_of("A")),
        **extract(bundle.model_b, squares, domain.specs_of("B")),
    }
    np.testing.assert_allclose([g.domain.distance for g in got], domain.distances(desc), rtol=1e-4, atol=1e-4)
    assert "domain" in analyzer.last_timings
    assert Analyzer(replace(bundle, domain=domain), "cpu", domain_check=False).analyse(images[:1])[0].domain is None
    assert (
        "models.domain_threshold" in Analyzer(replace(bundle, domain=domain), "cpu", domain_threshold=9.5).domain_status
    )


def test_an_image_outside_gets_no_class_but_not_analysable_with_the_numbers(bundle, rg1_uncr, tmp_path):
    domain = _domain_for(bundle, threshold=-1e6)  # everything is outside
    analyzer = Analyzer(replace(bundle, domain=domain), "cpu")
    img = read_image(rg1_uncr)
    (outcome,) = process_batch(
        [rg1_uncr],
        analyzer,
        NodeIdentity("CXR_NODE"),
        ModelIdentity.from_bundle(bundle),
        lambda i, h: tmp_path / "out",
        None,
        decoded=[Decoded(str(rg1_uncr), img, 0.0)],
    )
    assert outcome.kind == OutcomeKind.NOT_ANALYSABLE and outcome.code == "out-of-domain"
    assert outcome.error.startswith("outside the training images: feature distance ")
    assert "> threshold -1000000.00" in outcome.error
    assert outcome.analysis is None and outcome.files is None and not (tmp_path / "out").exists()
