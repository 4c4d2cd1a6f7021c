"""Analyzer: batch == single, CAMs on the source grid, floor == served forward, compile fallback; decode pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_node.analysis.bundle import untrained_bundle
from cxr_node.analysis.engine import STAGES, Analyzer
from cxr_node.decoding.pixels import PixelDataError
from cxr_node.decoding.pool import Decoded, DecodePool

SIZE = 64


@pytest.fixture(scope="module")
def analyzer():
    return Analyzer(untrained_bundle(SIZE), "cpu")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [rng.random((90, 70), dtype=np.float32), rng.random((50, 110), dtype=np.float32)]


def test_batch_equals_single(analyzer, images):
    both = analyzer.analyse(images)
    singles = [analyzer.analyse([img])[0] for img in images]
    for b, s, img in zip(both, singles, images, strict=True):
        assert b.result.label == s.result.label
        assert b.result.p_abnormal == pytest.approx(s.result.p_abnormal, abs=1e-5)
        assert b.result.p_covid == pytest.approx(s.result.p_covid, abs=1e-5)
        assert b.cam_a.shape == s.cam_a.shape == img.shape
        np.testing.assert_allclose(b.cam_a, s.cam_a, atol=1e-4)
        np.testing.assert_allclose(b.cam_b, s.cam_b, atol=1e-4)


def test_cams_on_source_grid_and_timings(analyzer, images):
    out = analyzer.analyse(images)
    for a, img in zip(out, images, strict=True):
        for cam in (a.cam_a, a.cam_b):
            assert cam.shape == img.shape and cam.dtype == np.float32
            assert cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6
        assert set(STAGES) <= set(a.timings)
    assert analyzer.last_batch == 2
    assert set(analyzer.last_timings) == {*STAGES, "models", "total"}
    assert analyzer.analyse([]) == []


def test_stream_gives_the_batch_by_batch_answers(analyzer, images):
    batches = [images, [], images[:1], [images[1]] * 3]
    streamed = list(analyzer.analyse_stream(batches))
    assert [len(r) for r in streamed] == [2, 0, 1, 3]
    for got, batch in zip(streamed, batches, strict=True):
        for g, e in zip(got, analyzer.analyse(batch) if batch else [], strict=True):
            assert g.result == e.result
            np.testing.assert_array_equal(g.cam_grid_a, e.cam_grid_a)
            np.testing.assert_array_equal(g.cam_b, e.cam_b)
    assert list(analyzer.analyse_stream([])) == []


def test_cams_leave_the_engine_on_the_feature_grid(analyzer, images):
    (a,) = analyzer.analyse(images[:1])
    assert a.cam_grid_a.shape == (SIZE // 32, SIZE // 32) and a.box.source_shape == images[0].shape
    assert a.cam_a is a.cam_a  # mapped once, on first read


def test_floor_is_the_same_forward(analyzer, images):
    x, _ = analyzer.preprocess(images[:1])
    la, lb = analyzer.floor(x)
    (a,) = analyzer.analyse(images[:1])
    assert torch.softmax(la, 1)[0, 1].item() == pytest.approx(a.result.p_abnormal, abs=1e-5)
    assert torch.softmax(lb, 1)[0, 1].item() == pytest.approx(a.result.p_covid, abs=1e-5)
    assert x.is_contiguous(memory_format=torch.channels_last)
    sa, sb = analyzer.floor(x, sequential=True)  # the benchmark's floor_sequential_s: same forwards, one thread
    torch.testing.assert_close(sa, la, rtol=0, atol=1e-5)
    torch.testing.assert_close(sb, lb, rtol=0, atol=1e-5)


def test_cpu_defaults_to_exact_fp32(analyzer):
    assert analyzer.precision == "fp32" and analyzer.autocast_dtype is None
    with pytest.raises(ValueError, match="precision"):
        Analyzer(analyzer.bundle, "cpu", precision="int8")


def test_compile_failure_falls_back_to_eager(analyzer, images, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    eager = Analyzer(analyzer.bundle, "cpu", compile=True)
    assert not eager.compiled
    assert len(eager.analyse(images[:1])) == 1


def test_decode_pool_keeps_order_and_errors(rg1_uncr, tmp_path):
    bad = tmp_path / "notes.dcm"
    bad.write_text("not a DICOM file")
    with DecodePool(kind="thread", workers=2) as pool:
        got = pool.decode_many([rg1_uncr, bad, rg1_uncr])
    assert isinstance(got[0], Decoded) and isinstance(got[2], Decoded)
    assert got[0].image.shape == (1955, 1841) and got[0].seconds > 0
    assert isinstance(got[1], Exception) and not isinstance(got[1], PixelDataError)


def test_process_pool_decodes_like_in_process(rg1_uncr):
    from cxr_node.decoding.pool import decode_file

    with DecodePool(kind="process", workers=1) as pool:
        remote = pool.submit(rg1_uncr).result(timeout=120)
    local = decode_file(rg1_uncr)
    np.testing.assert_array_equal(remote.image.pixels, local.image.pixels)


def test_models_in_parallel_give_the_same_answer_and_keep_the_callers_threads(analyzer, images):
    from cxr_node.analysis.engine import Analyzer

    threads = torch.get_num_threads()
    sequential = Analyzer(analyzer.bundle, "cpu", parallel_models=False)
    parallel = Analyzer(analyzer.bundle, "cpu", parallel_models=True)
    assert parallel.parallel_models and not sequential.parallel_models
    for s, p in zip(sequential.analyse(images), parallel.analyse(images), strict=True):
        assert s.result.p_abnormal == pytest.approx(p.result.p_abnormal, abs=1e-5)
        assert s.result.p_covid == pytest.approx(p.result.p_covid, abs=1e-5)
        np.testing.assert_allclose(s.cam_b, p.cam_b, atol=1e-4)
    assert torch.get_num_threads() == threads  # the pool's thread setting stays in the pool
