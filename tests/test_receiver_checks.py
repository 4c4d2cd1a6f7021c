"""Finding 5: images that could never be analysed get 0xA900 naming the attribute, before success.

Before, each of these was acknowledged with 0x0000 and failed later in the worker. The checks
read only the header (and the JPEG SOF / JPEG 2000 SIZ marker); nothing is decoded. The sender is
pynetdicom, proposing exactly the data set's transfer syntax; one case goes through dcmsend.
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEGLosslessSV1

from cxr_node.dicom.checks import j2k_image_size, jpeg_frame_size
from cxr_node.queue.tables import instances, jobs
from tests.conftest import restamp
from tests.dicom_factory import gradient, make_radiograph
from tests.receiver_harness import ReceiverNode, dcmtk


@pytest.fixture
def node(tmp_path):
    n = ReceiverNode(tmp_path / "node")
    yield n
    n.stop()


def _send(node, ds):
    status = node.send(ds, syntaxes=[ds.file_meta.TransferSyntaxUID])
    assert status is not None, "association refused"
    return status


def _refused(node, ds, attribute):
    status = _send(node, ds)
    assert status.Status == 0xA900, f"expected 0xA900 naming {attribute}, got 0x{status.Status:04X}"
    assert attribute in status.ErrorComment, status.ErrorComment
    assert node.rows(instances) == [] and node.rows(jobs) == []
    return status.ErrorComment


def test_native_pixel_data_cut_short(node):
    ds = make_radiograph(gradient(64, 48))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    comment = _refused(node, ds, "PixelData")
    assert "3072 bytes" in comment and "6144" in comment


def test_30000_by_30000_with_4_kb_of_pixels(node):
    ds = make_radiograph(gradient(32, 64))  # 32 x 64 x 2 bytes = 4 KB
    ds.Rows = ds.Columns = 30000
    _refused(node, ds, "PixelData")


def test_three_samples_per_pixel_with_monochrome2(node):
    ds = make_radiograph(gradient())
    ds.SamplesPerPixel = 3
    _refused(node, ds, "SamplesPerPixel")


def test_five_frames(node):
    ds = make_radiograph(gradient())
    ds.NumberOfFrames = 5
    _refused(node, ds, "NumberOfFrames")


@pytest.mark.filterwarnings("ignore:Unknown encoding:UserWarning")  # the unknown character set is the point
def test_unknown_specific_character_set(node):
    ds = make_radiograph(gradient())
    ds.SpecificCharacterSet = "ISO_IR 999"
    _refused(node, ds, "SpecificCharacterSet")


@pytest.mark.parametrize(
    "allocated,stored,attribute", [(12, 12, "BitsAllocated"), (16, 17, "BitsStored"), (8, 0, "BitsStored")]
)
def test_bits_allocated_and_stored(node, allocated, stored, attribute):
    ds = make_radiograph(gradient())
    ds.BitsAllocated, ds.BitsStored = allocated, stored
    _refused(node, ds, attribute)


def _j2k(rg1_j2kr, tmp_path):
    ds = pydicom.dcmread(restamp(rg1_j2kr, tmp_path / "j2k"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    return ds, frame


def test_truncated_jpeg_2000(node, rg1_j2kr, tmp_path):
    ds, frame = _j2k(rg1_j2kr, tmp_path)
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    _refused(node, ds, "PixelData")


def test_jpeg_2000_size_differs_from_rows_columns(node, rg1_j2kr, tmp_path):
    ds, frame = _j2k(rg1_j2kr, tmp_path)
    assert j2k_image_size(frame) == (int(ds.Rows), int(ds.Columns))
    ds.Rows = int(ds.Rows) + 8
    comment = _refused(node, ds, "Rows/Columns")
    assert "J2K SIZ" in comment


def test_intact_jpeg_2000_is_accepted(node, rg1_j2kr, tmp_path):
    ds, _ = _j2k(rg1_j2kr, tmp_path)
    assert _send(node, ds).Status == 0x0000


def _jpeg_lossless(tmp_path):
    src, dst = tmp_path / "src.dcm", tmp_path / "jpeg.dcm"
    make_radiograph(gradient(96, 80)).save_as(src, enforce_file_format=True)
    dcmtk("dcmcjpeg", "+e1", str(src), str(dst))
    ds = pydicom.dcmread(dst)
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    return ds, dst


@pytest.mark.peers  # dcmcjpeg makes the JPEG
def test_jpeg_frame_size_differs_from_rows_columns(node, tmp_path):
    ds, _ = _jpeg_lossless(tmp_path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert jpeg_frame_size(frame) == (96, 80)
    ds.Columns = 800
    comment = _refused(node, ds, "Rows/Columns")
    assert "JPEG SOF says 96x80" in comment


@pytest.mark.peers  # dcmcjpeg makes the JPEG
def test_truncated_jpeg_sent_by_dcmsend(node, tmp_path):
    ds, path = _jpeg_lossless(tmp_path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) - 40]])
    ds.save_as(path)
    out = node.dcmsend(path, "--decompress-never", "-d")
    assert "0xa900" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    assert node.rows(instances) == []


@pytest.mark.peers  # dcmcjpeg makes the JPEG
def test_intact_jpeg_lossless_is_accepted(node, tmp_path):
    ds, _ = _jpeg_lossless(tmp_path)
    assert _send(node, ds).Status == 0x0000
