"""The information check: images that decode but hold nothing to read are not analysable with a
plain reason naming the [image_check] key; real radiographs pass; the limits are typed config."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_node.config import ConfigError, parse_config
from cxr_node.decoding.information import DEFAULT_LIMITS, InformationLimits, check_information, information_problem
from cxr_node.decoding.pixels import dataset_to_float, measure, read_image
from cxr_node.decoding.pool import Decoded
from cxr_node.errors import NotAnalysable
from cxr_node.processing import OutcomeKind, process_batch
from tests.dicom_factory import gradient, make_radiograph

RNG = np.random.default_rng(19)


def verdict(pixels: np.ndarray, **attrs) -> NotAnalysable | None:
    image = dataset_to_float(make_radiograph(pixels, **attrs))
    assert image.info is not None
    return information_problem(image.info)


def texture(rows: int, cols: int) -> np.ndarray:
    return RNG.integers(0, 4096, size=(rows, cols))


@pytest.mark.parametrize(
    "pixels,attrs,code,words",
    [
        (np.full((256, 256), 1234), {}, "no-contrast", "every pixel shows the same grey"),
        (np.zeros((256, 256)), {"WindowCenter": 2048, "WindowWidth": 4096}, "no-contrast", "spread"),
        (np.zeros((256, 256)), {"photometric": "MONOCHROME1"}, "no-contrast", "image_check.min_spread 0.05"),
        (
            np.full((1, 1), 7),
            {},
            "too-small",
            "image 1 x 1 pixels: its shorter side 1 is under image_check.min_side 32",
        ),
        (texture(3, 40000), {}, "too-small", "image 3 x 40000 pixels"),
        (texture(200, 1000), {}, "aspect-ratio", "its sides' ratio 5.0 is over image_check.max_aspect_ratio 3"),
        (np.indices((256, 256)).sum(axis=0) % 2 * 4095, {}, "few-grey-levels", "only 2 distinct grey level(s)"),
    ],
)
def test_images_without_information_are_not_analysable_with_a_plain_reason(pixels, attrs, code, words):
    problem = verdict(pixels, **attrs)
    assert problem is not None and problem.code == code and words in problem.reason, problem


def test_a_small_bright_spot_on_a_flat_image_is_still_flat():
    pixels = np.full((512, 512), 100)
    pixels[:4, :4] = 4000  # 0.006 % of the pixels: a burned-in dot, not an image
    assert verdict(pixels).code == "no-contrast"


def test_padding_that_leaves_almost_nothing():
    pixels = np.full((256, 256), 4095)
    pixels[:20, :20] = texture(20, 20) % 4000
    assert verdict(pixels, PixelPaddingValue=4095).code == "padding"


def test_non_finite_values_are_counted_and_refused():
    pixels = np.linspace(0, 1, 256 * 256, dtype=np.float32).reshape(256, 256)
    info = measure(pixels, np.ones(pixels.shape, dtype=bool), pixels.shape, nonfinite=3)
    assert information_problem(info).code == "not-finite"


def test_real_radiographs_pass(rg1_uncr, public_cxr):
    assert information_problem(read_image(rg1_uncr).info) is None
    for png in sorted((public_cxr / "images").glob("*.png"))[:20]:
        assert information_problem(read_image(png).info) is None, png


def test_the_check_can_be_switched_off_and_limits_moved():
    flat = dataset_to_float(make_radiograph(np.full((8, 8), 5)))
    with pytest.raises(NotAnalysable):
        check_information(flat)
    check_information(flat, InformationLimits(enabled=False))
    small = dataset_to_float(make_radiograph(gradient(rows=24, cols=30)))
    assert information_problem(small.info, InformationLimits(min_side=16)) is None
    assert information_problem(small.info).code == "too-small"


def test_config_section_is_typed_and_errors_name_the_key():
    cfg = parse_config({"image_check": {"min_side": 128, "max_aspect_ratio": 2.5, "min_spread": 0.1}})
    assert cfg.image_check == InformationLimits(min_side=128, max_aspect_ratio=2.5, min_spread=0.1)
    assert parse_config({}).image_check == DEFAULT_LIMITS
    for table, key in (
        ({"min_side": "64"}, "image_check.min_side"),
        ({"max_aspect_ratio": 0.5}, "image_check.max_aspect_ratio"),
        ({"min_spread": 1.5}, "image_check.min_spread"),
        ({"min_grey_levels": 300}, "image_check.min_grey_levels"),
        ({"enabled": "yes"}, "image_check.enabled"),
        ({"min_sides": 1}, "image_check.min_sides: unknown key"),
    ):
        with pytest.raises(ConfigError, match=f"^{key}"):
            parse_config({"image_check": table})


class NoAnalysis:
    """An analyser that must not be reached: a not-analysable image is never given to the models."""

    def analyse(self, images):
        raise AssertionError("analysed an image that holds no information")


def test_process_batch_gives_such_images_no_analysis_and_no_files(tmp_path):
    path = tmp_path / "flat.dcm"
    ds = make_radiograph(np.full((128, 128), 9))
    ds.save_as(path, enforce_file_format=True)
    decoded = [Decoded(str(path), dataset_to_float(ds), 0.01), NotAnalysable("rescale-slope-zero", "RescaleSlope is 0")]
    outcomes = process_batch(
        [path, path], NoAnalysis(), None, None, lambda i, h: tmp_path / f"out{i}", None, decoded=decoded
    )
    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.NOT_ANALYSABLE, "no-contrast"),
        (OutcomeKind.NOT_ANALYSABLE, "rescale-slope-zero"),
    ]
    assert outcomes[1].error == "RescaleSlope is 0" and not outcomes[0].ok and outcomes[0].files is None
    assert not any(tmp_path.glob("out*"))
