"""Issue 19: the decoding budget at receipt. Bombs of a few kilobytes that decode to gigabytes get
0xA900 naming the attribute and the config key before success, and a Deflated bomb is refused
before anything inflates it whole. Senders: pynetdicom (the exact transfer syntax) and dcmsend."""

from __future__ import annotations

import zlib

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from cxr_node.config import ConfigError, parse_config
from cxr_node.decoding.budget import PixelBudget, check_budget, deflated_size_over
from cxr_node.dicom.checks import j2k_components, j2k_image_size
from cxr_node.dicom.receiver import ReceiverSettings
from cxr_node.queue.tables import instances, jobs
from tests.bombs import deflated_bomb, j2k_blank_codestream, j2k_bomb, rle_bomb
from tests.dicom_factory import gradient, make_radiograph
from tests.receiver_harness import ReceiverNode


@pytest.fixture
def node(tmp_path):
    nodes = []

    def make(budget: PixelBudget | None = None) -> ReceiverNode:
        settings = ReceiverSettings("CXR_NODE", "127.0.0.1", 0, budget=budget or PixelBudget())
        n = ReceiverNode(tmp_path / f"node{len(nodes)}", settings)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()


def _refused(node, ds, *words):
    status = node.send(ds, syntaxes=[ds.file_meta.TransferSyntaxUID])
    assert status is not None, "association refused"
    assert status.Status == 0xA900, f"0x{status.Status:04X} {status.get('ErrorComment')}"
    for word in words:
        assert word in status.ErrorComment, status.ErrorComment
    assert node.rows(instances) == [] and node.rows(jobs) == []
    return status.ErrorComment


def test_the_bombs_are_small_and_valid():
    # The J2K codestream decodes (to a constant image) and says the size it claims.
    stream = j2k_blank_codestream(20000, 20000)
    assert len(stream) < 2048
    assert j2k_image_size(stream) == (20000, 20000) and j2k_components(stream) == 1
    small = j2k_bomb(64, 48)
    assert np.ptp(small.pixel_array) == 0 and small.pixel_array.shape == (64, 48)
    assert np.ptp(rle_bomb(64, 48).pixel_array) == 0


def test_j2k_bomb_refused_naming_rows_and_key(node):
    comment = _refused(node(), j2k_bomb(20000, 20000), "Rows 20000", "decoding.max_rows")
    assert comment == "Rows 20000 over decoding.max_rows 8192"


def test_rle_bomb_refused_naming_columns(node):
    budget = PixelBudget(max_rows=20000, max_columns=4000)
    _refused(node(budget), rle_bomb(3000, 5000), "Columns 5000", "decoding.max_columns")


def test_within_rows_and_columns_but_over_pixel_bytes(node):
    # 6000 x 6000 x 2 bytes = 69 MB: each side fits, the product does not.
    _refused(node(), j2k_bomb(6000, 6000), "Rows*Columns*2 bytes 69 MiB", "decoding.max_pixel_bytes")


def test_j2k_with_three_components_refused(node):
    ds = j2k_bomb(64, 64)
    frame = bytearray(j2k_blank_codestream(64, 64))
    frame[40:42] = (3).to_bytes(2, "big")  # Csiz 3 while SamplesPerPixel says 1
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    _refused(node(), ds, "J2K SIZ says 3 components")


def test_deflated_bomb_refused_before_inflating(node):
    # Inflates to 8 MB; the budget allows 1 MiB. (A 15000^2 bomb does the same; it is in the soak.)
    budget = PixelBudget(max_pixel_bytes=2**20, max_inflated_bytes=2**20)
    _refused(node(budget), deflated_bomb(2000, 2000), "Deflated", "decoding.max_inflated_bytes")


def test_deflated_image_within_budget_is_stored(node):
    n = node()
    ds = make_radiograph(gradient(256, 200))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    status = n.send(ds, syntaxes=[DeflatedExplicitVRLittleEndian])
    assert status.Status == 0x0000
    assert len(n.rows(instances)) == 1


@pytest.mark.peers
def test_dcmsend_j2k_bomb_refused(node, tmp_path):
    n = node()
    path = tmp_path / "bomb.dcm"
    j2k_bomb(20000, 20000).save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 4096
    out = n.dcmsend(path, "--decompress-never", "-d")
    assert "0xa900" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    assert n.rows(instances) == []


def test_deflated_size_over_stops_early():
    stream = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = stream.compress(bytes(64 * 2**20)) + stream.flush()
    over = deflated_size_over(data, 2**20)
    assert over is not None and 2**20 < over <= 2 * 2**20 + 2**20  # stopped within a chunk of the limit
    assert deflated_size_over(data, 64 * 2**20) is None


def test_check_budget_multiplies_frames_samples_and_bytes():
    ds = make_radiograph(np.zeros((1, 1), np.uint16))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1000, 1000, 3
    budget = PixelBudget(max_pixel_bytes=5_000_000)
    assert "Rows*Columns*6 bytes" in check_budget(ds, budget)
    ds.NumberOfFrames = 2
    assert check_budget(ds, budget) is None


def test_config_decoding_keys():
    cfg = parse_config({"decoding": {"max_rows": 4300, "max_pixel_bytes": 1000, "max_inflated_bytes": 2000}})
    assert cfg.pixel_budget == PixelBudget(4300, 8192, 1000, 2000)
    with pytest.raises(ConfigError, match=r"^decoding\.max_rows: "):
        parse_config({"decoding": {"max_rows": 0}})
    with pytest.raises(ConfigError, match=r"^decoding\.max_inflated_bytes: .*below decoding\.max_pixel_bytes"):
        parse_config({"decoding": {"max_pixel_bytes": 2000, "max_inflated_bytes": 1000}})
    with pytest.raises(ConfigError, match=r"^decoding\.memory_limit_mb: "):
        parse_config({"decoding": {"memory_limit_mb": "a lot"}})


def test_uncompressed_budget_default_admits_43_cm_at_100_um():
    ds = make_radiograph(np.zeros((1, 1), np.uint16))
    ds.Rows = ds.Columns = 4300
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert check_budget(ds) is None
