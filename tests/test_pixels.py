"""Decoding radiographs: Modality LUT, VOI, polarity, bit depths, signed pixels, padding."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxr_node.decoding.pixels import PixelDataError, dataset_to_float, read_image
from tests.dicom_factory import gradient, make_radiograph


def test_real_monochrome1_cr_is_shown_with_bone_white(rg1_uncr, rg1_j2kr):
    img = read_image(rg1_uncr)
    assert img.pixels.shape == (1955, 1841)
    assert img.pixels.dtype == np.float32
    assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0
    rows, cols = img.pixels.shape
    band = img.pixels[int(rows * 0.35) : int(rows * 0.55)]
    spine = band[:, int(cols * 0.47) : int(cols * 0.53)].mean()
    lungs = np.concatenate(
        [band[:, int(cols * 0.22) : int(cols * 0.32)], band[:, int(cols * 0.68) : int(cols * 0.78)]], axis=1
    ).mean()
    # Displayed correctly, the mediastinum/spine is brighter than the aerated lungs.
    # Without the MONOCHROME1 inversion this comparison flips.
    assert spine > lungs + 0.05, (spine, lungs)
    # Lossless JPEG 2000 of the same image decodes to the same picture.
    np.testing.assert_array_equal(read_image(rg1_j2kr).pixels, img.pixels)


def test_monochrome1_is_the_inverse_of_monochrome2():
    ramp = gradient()
    m2 = dataset_to_float(make_radiograph(ramp, photometric="MONOCHROME2", WindowCenter=2048, WindowWidth=4096))
    m1 = dataset_to_float(make_radiograph(ramp, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=4096))
    np.testing.assert_allclose(m1.pixels, 1.0 - m2.pixels, atol=1e-6)
    assert m2.pixels[0, 0] < m2.pixels[0, -1]  # higher stored value = brighter for MONOCHROME2


def test_presentation_lut_inverse_inverts_monochrome2_once():
    ramp = gradient()
    plain = dataset_to_float(make_radiograph(ramp, WindowCenter=2048, WindowWidth=4096))
    inverse = dataset_to_float(
        make_radiograph(ramp, WindowCenter=2048, WindowWidth=4096, PresentationLUTShape="INVERSE")
    )
    np.testing.assert_allclose(inverse.pixels, 1.0 - plain.pixels, atol=1e-6)
    # DX requires INVERSE together with MONOCHROME1: one inversion, not two.
    both = dataset_to_float(
        make_radiograph(
            ramp, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=4096, PresentationLUTShape="INVERSE"
        )
    )
    np.testing.assert_allclose(both.pixels, inverse.pixels, atol=1e-6)


def test_linear_window_follows_the_standard_formula():
    values = np.array([[0, 100, 150, 200, 300]])
    ds = make_radiograph(values, WindowCenter=150, WindowWidth=101)
    out = dataset_to_float(ds).pixels[0]
    # PS3.3 C.11.2.1.2: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped.
    expected = np.clip((values[0] - 149.5) / 100 + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[0] == 0.0 and out[-1] == 1.0


def test_first_of_several_windows_is_used():
    values = np.array([[0, 1000, 2000]])
    ds = make_radiograph(values, WindowCenter=[1000, 500], WindowWidth=[2001, 10])
    out = dataset_to_float(ds).pixels[0]
    assert 0.45 < out[1] < 0.55  # centre of the first window, not saturated by the second


def test_voi_lut_sequence_is_applied():
    values = np.array([[0, 1, 2, 3]])
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.LUTData = [0, 10, 200, 255]
    ds = make_radiograph(values, bits_stored=8, VOILUTSequence=Sequence([item]))
    out = dataset_to_float(ds).pixels[0]
    np.testing.assert_allclose(out, np.array([0, 10, 200, 255]) / 255.0, atol=1e-6)


def test_modality_lut_rescale_comes_before_window():
    values = np.array([[0, 100, 200]])
    # Stored 100 -> 100 * 2 - 100 = 100 after rescale: the window centre.
    ds = make_radiograph(values, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=100, WindowWidth=201)
    out = dataset_to_float(ds).pixels[0]
    assert abs(out[1] - 0.5) < 0.01
    assert out[0] == 0.0 and out[2] == 1.0


@pytest.mark.parametrize("bits_stored,maximum", [(8, 255), (12, 4095), (16, 65535)])
def test_bit_depths_map_monotonically_to_unit_range(bits_stored, maximum):
    ramp = gradient(maximum=maximum)
    out = dataset_to_float(make_radiograph(ramp, bits_stored=bits_stored)).pixels
    assert out.min() == 0.0 and out.max() == 1.0  # robust window without VOI attributes
    assert np.all(np.diff(out[0]) >= 0)


def test_signed_pixels_are_decoded_as_signed():
    ramp = gradient(maximum=2000) - 1000  # -1000 .. 1000
    ds = make_radiograph(ramp, bits_stored=12, signed=True, WindowCenter=0, WindowWidth=2001)
    out = dataset_to_float(ds).pixels[0]
    assert out[0] < 0.001 and out[-1] > 0.999
    mid = np.argmin(np.abs(ramp[0]))
    assert abs(out[mid] - 0.5) < 0.02  # -1000..1000 centred on 0; read as unsigned it would not be


def test_pixel_padding_value_is_masked_black():
    ramp = gradient(maximum=4000)
    ramp[:, :5] = 4095
    ds = make_radiograph(ramp, photometric="MONOCHROME1", PixelPaddingValue=4095)
    img = dataset_to_float(ds)
    assert not img.mask[:, :5].any() and img.mask[:, 5:].all()
    assert (img.pixels[:, :5] == 0).all()
    # Padding is excluded from the robust window: the darkest real pixel still maps to 1 (inverted).
    assert img.pixels[:, 5:].max() == 1.0


def test_colour_and_missing_pixels_are_refused_with_the_attribute_named():
    ds = make_radiograph(gradient())
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(PixelDataError, match="PhotometricInterpretation"):
        dataset_to_float(ds)
    ds = make_radiograph(gradient())
    del ds.PixelData
    with pytest.raises(PixelDataError, match="PixelData"):
        dataset_to_float(ds)


def test_read_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(PixelDataError, match="broken.dcm"):
        read_image(bad)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_png_from_the_shared_set(public_cxr):
    first = next(iter(sorted((public_cxr / "images").glob("*.png"))))
    img = read_image(first)
    assert img.pixels.ndim == 2 and max(img.pixels.shape) <= 512
    assert 0.0 <= img.pixels.min() < img.pixels.max() <= 1.0


def test_linear_exact_and_sigmoid_windows():
    values = np.array([[0, 50, 100]])
    exact = dataset_to_float(
        make_radiograph(values, WindowCenter=50, WindowWidth=100, VOILUTFunction="LINEAR_EXACT")
    ).pixels[0]
    np.testing.assert_allclose(exact, [0.0, 0.5, 1.0], atol=1e-6)
    sigmoid = dataset_to_float(
        make_radiograph(values, WindowCenter=50, WindowWidth=100, VOILUTFunction="SIGMOID")
    ).pixels[0]
    # PS3.3 C.11.2.1.3.1: y = 1 / (1 + exp(-4 (x - c) / w))
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-4 * (values[0] - 50) / 100)), atol=1e-6)
    # A width the function cannot use: the node's own window, and the note says why.
    zero = dataset_to_float(make_radiograph(values, WindowCenter=50, WindowWidth=0, VOILUTFunction="LINEAR_EXACT"))
    np.testing.assert_allclose(zero.pixels[0], [0.0, 0.5, 1.0], atol=1e-6)
    assert zero.notes == ("window: node's robust window (WindowWidth 0 ignored)",)
