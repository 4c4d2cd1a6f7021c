"""Reduced-resolution decoding: right level, right shape, same picture as a downscaled full decode."""

from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from cxr_node.analysis.preprocess import square_input
from cxr_node.decoding import openjp2, pixels
from cxr_node.decoding.pixels import PixelDataError, dataset_to_float, read_image
from cxr_node.decoding.pool import DecodePool, decoder_for
from cxr_node.decoding.reduced import Resolution, decode_pixels
from tests.dicom_factory import make_radiograph

pytestmark = pytest.mark.skipif(not openjp2.available(), reason="libopenjp2 (Debian libopenjp2-7) not installed")


@pytest.fixture(scope="module")
def full_float(rg1_uncr):
    """RG1 in full through the grey pipeline (RG1_UNCR holds RG1_J2KR's pixels uncompressed)."""
    return dataset_to_float(pydicom.dcmread(rg1_uncr))


def _area(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def test_factor_keeps_model_input_and_sc_panel():
    serving = Resolution.serving(224)  # the SC's radiograph: long side 960 px
    assert serving.factor(1955, 1841) == 2  # 1/2 gives 978 px >= 960
    assert serving.factor(1900, 1841) == 1  # 1/2 would give 950 px < 960
    assert Resolution.serving(224, 1024).factor(1955, 1841) == 1  # a site's 1024 px SC: 978 px is too few
    assert serving.factor(3000, 2500) == 2 and serving.factor(2500, 4096) == 4
    assert Resolution(224).factor(1955, 1841) == 8  # the model alone: 245 px >= 224
    assert Resolution(224, 512).factor(1955, 1841) == 2
    assert Resolution(224).factor(3000, 2500) == 8  # DCT scaling stops at 1/8
    assert Resolution(224).factor(300, 200) == 1  # 1/2 would give 150 < 224
    assert Resolution(224).factor(200, 100) == 1  # already smaller than the input: never reduced
    assert Resolution(64).factor(1024, 256) == 8  # 128 px long side >= 64
    for rows, cols in [(1955, 1841), (3000, 2500), (2500, 3000), (1024, 256), (449, 447)]:
        f = Resolution(224).factor(rows, cols)
        assert max(-(-rows // f), -(-cols // f)) >= min(224, max(rows, cols))


def test_openjp2_full_level_is_exactly_the_stored_pixels(rg1_j2kr, rg1_uncr):
    ds = pydicom.dcmread(rg1_j2kr)
    frame = openjp2.decode(pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1), 0)
    assert frame.factor == 0 and (frame.precision, frame.signed) == (15, False)
    assert np.array_equal(frame.pixels, pydicom.dcmread(rg1_uncr).pixel_array)


@pytest.mark.parametrize(
    ("resolution", "shape", "factor"), [(Resolution(224, 512), (978, 921), 2), (Resolution(224), (245, 231), 8)]
)
def test_j2k_reduced_matches_downscaled_full(rg1_j2kr, full_float, resolution, shape, factor):
    img = read_image(rg1_j2kr, resolution)
    assert img.shape == shape and img.reduction == factor
    assert img.window == full_float.window  # the header's window, applied unchanged
    ref = _area(full_float.pixels, shape)
    assert np.abs(img.pixels - ref).mean() < 0.01
    # what the model sees: the letterboxed square
    a, _ = square_input(img.pixels, 224)
    b, _ = square_input(full_float.pixels, 224)
    assert np.abs(a - b).mean() < 0.01


def _jpeg_baseline(stored8: np.ndarray, **attrs) -> pydicom.Dataset:
    ok, jpg = cv2.imencode(".jpg", stored8, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    ds = make_radiograph(stored8, bits_stored=8, **attrs)
    ds.PixelData = encapsulate([jpg.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def test_jpeg_baseline_dct_scaling_matches_downscaled_full(rg1_uncr):
    stored = pydicom.dcmread(rg1_uncr).pixel_array
    stored8 = (stored.astype(np.float64) * 255 / stored.max()).round().astype(np.uint8)
    ds = _jpeg_baseline(stored8, PhotometricInterpretation="MONOCHROME1", WindowCenter=128, WindowWidth=200)
    full = dataset_to_float(ds)
    for resolution, factor in [(Resolution(224, 512), 2), (Resolution(224), 8)]:
        got = decode_pixels(ds, resolution)
        assert got.reduction == factor and got.method == f"JPEG DCT scaling 1/{factor}"
        img = dataset_to_float(ds, resolution)
        assert img.shape == (-(-1955 // factor), -(-1841 // factor)) and img.reduction == factor
        assert img.window == full.window
        assert np.abs(img.pixels - _area(full.pixels, img.shape)).mean() < 0.01


def test_grey_pipeline_keeps_its_meaning_at_every_level():
    """Rescale, window, MONOCHROME1 and padding give the same picture from a reduced J2K decode."""
    rows, cols = 512, 384
    y, x = np.mgrid[0:rows, 0:cols]
    stored = (600 + 2400 * (x / cols) * (0.5 + 0.5 * np.sin(y / 40.0) ** 2)).round().astype(np.uint16)
    stored[:, :64] = 4000  # a padded band (collimator shutter)
    ds = make_radiograph(
        stored,
        bits_stored=12,
        photometric="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=2000,
        WindowWidth=3000,
        PixelPaddingValue=4000,
    )
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    full = dataset_to_float(ds)
    img = dataset_to_float(ds, Resolution(128))
    assert img.reduction == 4 and img.shape == (128, 96)
    assert img.window == full.window
    inner = np.s_[:, 17:]  # away from the padding edge, which blends over one reduced pixel
    assert np.abs(img.pixels[inner] - _area(full.pixels, img.shape)[inner]).mean() < 0.01
    assert not img.mask[:, :15].any() and img.mask[:, 17:].all()


def test_truncated_j2k_fails_as_pixel_data_error(rg1_j2kr):
    ds = pydicom.dcmread(rg1_j2kr)
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[:300]])
    with pytest.raises(PixelDataError, match="cannot be decoded"):
        dataset_to_float(ds, Resolution.serving(224))


def test_other_syntaxes_decode_in_full(rg1_uncr):
    img = read_image(rg1_uncr, Resolution(224))
    assert img.reduction == 1 and img.shape == (1955, 1841)


def test_decode_pool_decodes_at_its_resolution(rg1_j2kr):
    with DecodePool(workers=1, kind="process", decode=decoder_for(Resolution(224))) as pool:
        (got,) = pool.decode_many([rg1_j2kr])
    assert not isinstance(got, BaseException)
    assert got.image.reduction == 8 and got.image.shape == (245, 231)


def test_training_from_dicom_uses_the_same_reduced_path(rg1_j2kr, tmp_path, monkeypatch):
    from training.data import decode_squares, read_samples

    (tmp_path / "manifest.csv").write_text(f"image,patient_id,label\n{rg1_j2kr},p1,normal\n")
    seen = []
    real = pixels.decode_pixels

    def spy(ds, resolution):
        seen.append(resolution)
        return real(ds, resolution)

    monkeypatch.setattr(pixels, "decode_pixels", spy)
    samples, bad = read_samples(tmp_path)
    squares, kept, unreadable = decode_squares(samples, 64)
    assert not bad and not unreadable and len(kept) == 1
    assert seen == [Resolution.serving(64)]
    expected, _ = square_input(read_image(rg1_j2kr, Resolution.serving(64)).pixels, 64)
    assert np.array_equal(squares[0], expected)
