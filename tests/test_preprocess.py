"""Letterbox resize, normalisation and the map back to the source grid."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_node.analysis.preprocess import IMAGENET_MEAN, IMAGENET_STD, letterbox, map_to_source, to_model_input


def test_portrait_image_keeps_aspect_ratio_and_is_centred():
    img = np.ones((200, 100), dtype=np.float32)
    square, box = letterbox(img, 64)
    assert square.shape == (64, 64)
    assert (box.height, box.width) == (64, 32)
    assert (box.top, box.left) == (0, 16)
    assert square[:, :16].max() == 0 and square[:, 48:].max() == 0  # black padding
    np.testing.assert_allclose(square[:, 16:48], 1.0, atol=1e-6)


def test_landscape_image_pads_top_and_bottom():
    square, box = letterbox(np.ones((90, 180), dtype=np.float32), 60)
    assert (box.height, box.width, box.top, box.left) == (30, 60, 15, 0)
    assert square[:15].max() == 0 and square[45:].max() == 0


def test_normalisation_uses_imagenet_statistics_per_channel():
    x, _ = to_model_input(np.full((50, 50), 0.5, dtype=np.float32), 32)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 16, 16], (0.5 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-5)


def test_input_is_clipped_to_unit_range():
    x, _ = to_model_input(np.full((10, 10), 7.0, dtype=np.float32), 32)
    np.testing.assert_allclose(x[:, 5, 5], (1.0 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-5)


def test_map_to_source_puts_a_hot_spot_back_where_it_was():
    img = np.zeros((300, 150), dtype=np.float32)
    _, box = letterbox(img, 64)
    grid = np.zeros((64, 64), dtype=np.float32)
    # hot spot in the upper part of the image region (rows 8..16 of 64 = 1/8..1/4 of the height)
    grid[8:16, box.left : box.left + box.width] = 1.0
    back = map_to_source(grid, box)
    assert back.shape == (300, 150)
    hot_rows = np.where(back.mean(axis=1) > 0.5)[0]
    assert 30 < hot_rows.mean() < 60


def test_small_sizes_and_non_2d_inputs_are_refused():
    with pytest.raises(ValueError, match="too small"):
        letterbox(np.zeros((10, 10)), 16)
    with pytest.raises(ValueError, match="2-D"):
        letterbox(np.zeros((10, 10, 3)), 64)


def test_clipping_the_square_equals_clipping_the_source_for_decoded_images(rg1_uncr):
    import pydicom

    from cxr_node.analysis.preprocess import letterbox, square_input
    from cxr_node.decoding.pixels import dataset_to_float

    img = dataset_to_float(pydicom.dcmread(rg1_uncr)).pixels
    assert img.min() >= 0.0 and img.max() <= 1.0  # what every decoder delivers
    fast, box = square_input(img, 224)
    slow, slow_box = letterbox(np.clip(img, 0.0, 1.0), 224)
    assert box == slow_box and np.array_equal(fast, slow)
    wild = np.random.default_rng(3).normal(0.5, 1.0, (300, 200)).astype(np.float32)  # out of range
    square, _ = square_input(wild, 64)
    assert square.min() >= 0.0 and square.max() <= 1.0


def test_device_normalisation_is_the_same_arithmetic():
    import torch

    from cxr_node.analysis.preprocess import normalise, normalise_batch

    squares = np.random.default_rng(4).random((3, 40, 40), dtype=np.float32)
    on_host = np.stack([normalise(s) for s in squares])
    batched = normalise_batch(torch.from_numpy(squares)).numpy()
    assert batched.shape == (3, 3, 40, 40) and np.array_equal(batched, on_host)
