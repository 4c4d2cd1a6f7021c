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
