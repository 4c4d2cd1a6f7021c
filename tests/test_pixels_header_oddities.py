"""Header oddities are decided in the grey-scale pipeline, never left to fail later: a broken
window, VOI LUT, Modality LUT or rescale is ignored in favour of the node's robust window, and
a note names the attribute; RescaleSlope 0 is not analysable. Values read from a file as a
modality sends them (pydicom converts lazily, so a non-number raises only when read)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxr_node.decoding.pixels import ROBUST_WINDOW, dataset_to_float, robust_window
from cxr_node.errors import NotAnalysable
from tests.dicom_factory import gradient, make_radiograph

RAMP = gradient(rows=32, cols=200, maximum=4000)


def robust(values=RAMP) -> np.ndarray:
    return robust_window(values.astype(np.float64), np.ones(values.shape, dtype=bool)).astype(np.float32)


def as_sent(ds: Dataset, **raw_text: str) -> Dataset:
    """The dataset written to bytes with some DS/IS attributes holding raw text, then read back."""
    for keyword, text in raw_text.items():
        setattr(ds, keyword, "0")
        ds[keyword]._value = text  # bypass pydicom's own checks: a modality's bytes are what they are
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def lut_item(descriptor=None, data=None) -> Dataset:
    item = Dataset()
    if descriptor is not None:
        item.LUTDescriptor = descriptor
    if data is not None:
        item.LUTData = data
    return item


@pytest.mark.parametrize(
    "attrs,note",
    [
        ({"WindowCenter": 2000, "WindowWidth": 0}, "WindowWidth 0 ignored"),
        ({"WindowCenter": 2000, "WindowWidth": 0.5}, "WindowWidth 0.5 ignored"),
        ({"WindowCenter": 2000, "WindowWidth": -10}, "WindowWidth -10 ignored"),
        ({"WindowCenter": 2000}, "WindowWidth missing"),
        ({"VOILUTSequence": Sequence([lut_item()])}, "VOI LUT (VOILUTSequence) ignored: it has no LUTDescriptor"),
        (
            {"VOILUTSequence": Sequence([lut_item([4096, 0, 12])])},
            "VOI LUT (VOILUTSequence) ignored: it has no LUTData",
        ),
        (
            {"VOILUTSequence": Sequence([lut_item([4096, 0, 12], [0, 1, 2])])},
            "its LUTData holds 3 entries, its LUTDescriptor says 4096",
        ),
        (
            {"VOILUTSequence": Sequence([lut_item([3, 0], [0, 1, 2])])},
            "its LUTDescriptor is not three numbers",
        ),
        (
            {"VOILUTSequence": Sequence([lut_item([3, 0, 40], [0, 1, 2])])},
            "its LUTDescriptor gives 40 bits per entry",
        ),
    ],
)
def test_broken_window_or_voi_lut_falls_back_to_the_robust_window_and_says_so(attrs, note):
    img = dataset_to_float(make_radiograph(RAMP, **attrs))
    np.testing.assert_allclose(img.pixels, robust(), atol=1e-6)
    assert len(img.notes) == 1 and img.notes[0].startswith(f"window: {ROBUST_WINDOW} (") and note in img.notes[0]
    assert img.window.startswith(ROBUST_WINDOW)


def test_a_broken_voi_lut_gives_way_to_a_good_window_of_the_same_image():
    ds = make_radiograph(RAMP, VOILUTSequence=Sequence([lut_item()]), WindowCenter=2000, WindowWidth=4001)
    img = dataset_to_float(ds)
    assert img.window == "WindowCenter 2000 / WindowWidth 4001 LINEAR"
    assert img.notes == (
        "window: the image's WindowCenter 2000 / WindowWidth 4001 LINEAR "
        "(VOI LUT (VOILUTSequence) ignored: it has no LUTDescriptor)",
    )
    assert dataset_to_float(make_radiograph(RAMP, WindowCenter=2000, WindowWidth=4001)).notes == ()  # nothing odd


@pytest.mark.parametrize(
    "raw,note",
    [
        ({"WindowCenter": "abc"}, "WindowCenter 'abc' ignored"),
        ({"WindowWidth": "wide"}, "WindowWidth 'wide' ignored"),
        ({"WindowCenter": "NaN"}, "WindowCenter nan ignored"),
        ({"WindowWidth": "inf"}, "WindowWidth inf ignored"),
    ],
)
def test_non_numeric_or_non_finite_window_values_as_sent(raw, note):
    ds = as_sent(make_radiograph(RAMP, WindowCenter=2000, WindowWidth=4001), **raw)
    img = dataset_to_float(ds)
    np.testing.assert_allclose(img.pixels, robust(), atol=1e-6)
    assert img.notes == (f"window: {ROBUST_WINDOW} ({note})",)


@pytest.mark.parametrize(
    "raw,note",
    [
        ({"RescaleSlope": "NaN"}, "RescaleSlope nan"),
        ({"RescaleSlope": "abc"}, "RescaleSlope 'abc'"),
        ({"RescaleIntercept": "NaN"}, "RescaleIntercept nan"),
        ({"RescaleIntercept": "-inf"}, "RescaleIntercept -inf"),
    ],
)
def test_broken_rescale_is_ignored_and_so_is_the_window_that_depends_on_it(raw, note):
    ds = make_radiograph(RAMP, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=10, WindowWidth=20)
    img = dataset_to_float(as_sent(ds, **raw))
    np.testing.assert_allclose(img.pixels, robust(), atol=1e-6)
    assert img.notes[0] == f"{note} ignored: the stored values are used as they are"
    assert img.notes[1] == (f"window: {ROBUST_WINDOW} (the image's own window does not apply to unrescaled values)")


def test_rescale_slope_zero_is_not_analysable_naming_the_attribute():
    with pytest.raises(NotAnalysable) as caught:
        dataset_to_float(make_radiograph(RAMP, RescaleSlope=0, RescaleIntercept=-1024))
    assert caught.value.code == "rescale-slope-zero"
    assert str(caught.value) == "RescaleSlope is 0: the Modality LUT maps every pixel to the same value (-1024)"


def test_modality_lut_sequence_applied_or_ignored_when_malformed():
    values = np.array([[0, 1, 2, 3]] * 4)
    good = lut_item([4, 0, 16], [100, 200, 300, 400])
    img = dataset_to_float(
        make_radiograph(values, ModalityLUTSequence=Sequence([good]), WindowCenter=250, WindowWidth=301)
    )
    expected = np.clip((np.array([100, 200, 300, 400]) - 249.5) / 300 + 0.5, 0, 1)  # the window over LUT output
    np.testing.assert_allclose(img.pixels[0], expected, atol=1e-6)
    bad = dataset_to_float(
        make_radiograph(values, ModalityLUTSequence=Sequence([lut_item([4, 0, 16])]), WindowCenter=250, WindowWidth=301)
    )
    assert bad.notes[0] == "Modality LUT (ModalityLUTSequence) ignored: it has no LUTData"
    assert bad.window.startswith(ROBUST_WINDOW)


def test_voi_lut_with_more_entries_than_its_bit_depth_holds():
    # 8-bit entries, 4096 of them: the lookup index is not an 8-bit number (pydicom 3.0's own
    # apply_voi wraps it around), so stored 4000 must map to the 4000th entry.
    data = list(np.linspace(0, 255, 4096).round().astype(int))
    img = dataset_to_float(make_radiograph(RAMP, VOILUTSequence=Sequence([lut_item([4096, 0, 8], data)])))
    assert img.window == "VOI LUT sequence" and img.notes == ()
    assert abs(img.pixels[0, -1] - data[4000] / 255) < 1e-6 and np.all(np.diff(img.pixels[0]) >= 0)


def test_an_image_without_any_window_says_the_node_chose_it():
    assert dataset_to_float(make_radiograph(RAMP)).notes == (f"window: {ROBUST_WINDOW} (the image has none)",)


def test_an_empty_padding_value_is_ignored():
    img = dataset_to_float(as_sent(make_radiograph(RAMP, PixelPaddingValue=None)))
    assert img.mask.all() and img.notes[0] == "PixelPaddingValue empty ignored: no pixel is treated as padding"


def test_undecodable_pixel_data_fails_with_a_sentence_naming_the_syntax():
    from cxr_node.decoding.pixels import PixelDataError

    ds = make_radiograph(RAMP)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # says JPEG 2000, holds raw pixels
    with pytest.raises(PixelDataError) as caught:
        dataset_to_float(ds)
    message = str(caught.value)
    assert message.startswith("PixelData cannot be decoded as JPEG 2000 Image Compression (Lossless Only): ")
    assert "\n" not in message and "object has no attribute" not in message


def test_a_window_far_from_the_pixel_values_gives_way_to_the_robust_window():
    # A CT lung window (-1200..0) on a CR's 0..4000 values: every pixel is white.
    img = dataset_to_float(make_radiograph(RAMP, WindowCenter=-600, WindowWidth=1200))
    np.testing.assert_allclose(img.pixels, robust(), atol=1e-6)
    assert img.notes == (
        f"window: {ROBUST_WINDOW} (the image's WindowCenter -600 / WindowWidth 1200 LINEAR shows it as a single grey)",
    )
    # A flat image stays flat: the information check, not the window, decides about it.
    flat = dataset_to_float(make_radiograph(np.full((64, 64), 900), WindowCenter=-600, WindowWidth=1200))
    assert flat.notes == () and flat.info.spread == 0
