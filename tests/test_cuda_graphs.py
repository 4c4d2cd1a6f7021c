"""CUDA graph replay of the forwards: padding rules everywhere; same answers as eager, padded
batches, the stream and the eager fallback on a GPU (skipped without one)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from cxr_node.analysis.bundle import untrained_bundle
from cxr_node.analysis.cuda_graphs import GraphedForward, bucket, pad_batch, take_rows
from cxr_node.analysis.engine import Analyzer

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs exist only there)")


def test_batches_pad_to_the_next_power_of_two():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 16, 17, 64, 65, 256)] == [1, 2, 4, 4, 8, 16, 32, 64, 128, 256]
    with pytest.raises(ValueError, match="at least 1"):
        bucket(0)


def test_padding_adds_zero_rows_and_keeps_channels_last():
    x = torch.rand(3, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    p = pad_batch(x, 4)
    assert p.shape == (4, 3, 8, 8) and p.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(p[:3], x) and not p[3].any()
    assert pad_batch(x, 3) is x
    with pytest.raises(ValueError, match="does not fit"):
        pad_batch(x, 2)


def test_rows_are_copied_out_of_the_static_output():
    static = (torch.arange(8.0).reshape(4, 2), torch.ones(4))
    feats, logits = take_rows(static, 3)
    static[0].zero_()
    assert feats.shape == (3, 2) and feats[2, 1] == 5.0 and logits.shape == (3,)
    assert take_rows(torch.arange(4.0), 2).tolist() == [0.0, 1.0]


def test_cpu_tensors_run_the_plain_function():
    calls = []
    fwd = GraphedForward(lambda x: calls.append(x) or x * 2, "double")
    x = torch.ones(3, 2)
    assert torch.equal(fwd(x), x * 2) and calls == [x] and fwd.captured_sizes == []


def test_a_cpu_analyzer_does_not_use_graphs():
    assert not Analyzer(untrained_bundle(64), "cpu").cuda_graphs


# -- on a GPU -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_pair():
    bundle = untrained_bundle(64)
    graphed = Analyzer(bundle, "cuda", precision="fp32")
    eager = Analyzer(bundle, "cuda", precision="fp32", cuda_graphs=False)
    return graphed, eager


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return [rng.random((90 + 7 * i, 70 + 5 * i), dtype=np.float32) for i in range(5)]


@gpu
def test_graphs_give_the_eager_answers_for_full_and_padded_batches(gpu_pair, images):
    graphed, eager = gpu_pair
    assert graphed.cuda_graphs and not eager.cuda_graphs
    # Measured on an H200: identical to eager at 1 and 4; padded to 4 and 8, fp32 (TF32 convolutions,
    # torch's default) moved p by up to 6.5e-5 and the min-max normalised CAM by up to 1.5e-3 (the
    # padded size can get another cuDNN kernel); bf16 stayed identical. 5e-3 of the CAM range is far
    # below what a heatmap shows.
    for n in (1, 3, 4, 5):  # 3 -> 4 and 5 -> 8 are padded
        for g, e in zip(graphed.analyse(images[:n]), eager.analyse(images[:n]), strict=True):
            assert g.result.label == e.result.label
            assert g.result.p_abnormal == pytest.approx(e.result.p_abnormal, abs=1e-4)
            assert g.result.p_covid == pytest.approx(e.result.p_covid, abs=1e-4)
            np.testing.assert_allclose(g.cam_grid_a, e.cam_grid_a, atol=5e-3)
            np.testing.assert_allclose(g.cam_grid_b, e.cam_grid_b, atol=5e-3)
    assert graphed._fwd_a.captured_sizes == [1, 4, 8]
    # A replay must not hand out memory the next replay overwrites.
    first = graphed.analyse(images[:1])[0]
    graphed.analyse(images[1:2])
    assert first.result == graphed.analyse(images[:1])[0].result


@gpu
def test_graphs_in_the_stream_and_the_floor(gpu_pair, images):
    graphed, eager = gpu_pair
    batches = [images[:4], images[:2], images[:4]]
    for got, batch in zip(graphed.analyse_stream(batches), batches, strict=True):
        for g, e in zip(got, eager.analyse(batch), strict=True):
            assert g.result.p_abnormal == pytest.approx(e.result.p_abnormal, abs=1e-4)
    x, _ = graphed.preprocess(images[:2])
    la, lb = graphed.floor(x)
    ea, eb = eager.floor(x)
    torch.testing.assert_close(la, ea, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lb, eb, atol=1e-4, rtol=1e-4)


@gpu
def test_a_forward_that_cannot_be_captured_runs_eager(caplog):
    # .item() synchronises the stream, which is illegal inside a capture.
    fwd = GraphedForward(lambda x: x * float(x.sum().item()), "syncing forward")
    x = torch.ones(2, 3, device="cuda")
    with caplog.at_level(logging.WARNING):
        assert torch.equal(fwd(x), x * 6.0)
        assert torch.equal(fwd(x), x * 6.0)
    assert fwd.failed and fwd.captured_sizes == []
    assert sum("syncing forward failed" in r.message for r in caplog.records) == 1
