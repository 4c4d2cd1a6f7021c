"""Finding 2: only transfer syntaxes with an installed decoder are accepted, each tested by DCMTK.

Before, JPEG Lossless SV1 offered alone was accepted with 0x0000 and then failed in the worker
("all plugins are missing dependencies"). Now negotiation offers a syntax only when pydicom can
decode it here; each compressed syntax a radiography node meets is sent by dcmsend with
--decompress-never (it proposes only the file's own syntax), stored as received, and decoded by
the node's own pixel pipeline. A syntax without a decoder is refused in negotiation, and dcmsend
then falls back to decompressing (or, told never to, fails without any 0x0000).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from cxr_node.decoding.pixels import dataset_to_float
from cxr_node.dicom.syntaxes import decodable_transfer_syntaxes, decoder_available
from cxr_node.queue.tables import instances
from tests.conftest import restamp
from tests.dicom_factory import make_radiograph
from tests.receiver_harness import ReceiverNode, dcmtk


def _source(tmp_path, bits_stored=12):
    rng = np.random.default_rng(7)
    top = 2**bits_stored - 1
    pixels = (
        np.linspace(0, top, 160)[None, :] * np.ones((128, 1)) * 0.8 + rng.integers(0, top // 8, (128, 160))
    ).round()
    ds = make_radiograph(pixels.clip(0, top), bits_stored=bits_stored)
    path = tmp_path / f"src{bits_stored}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _convert(tmp_path, syntax, rg1_j2kr):
    src12, dst = _source(tmp_path), tmp_path / "sent.dcm"
    if syntax == JPEGLosslessSV1:
        dcmtk("dcmcjpeg", "+e1", str(src12), str(dst))
    elif syntax == JPEGBaseline8Bit:
        dcmtk("dcmcjpeg", "+eb", str(_source(tmp_path, bits_stored=8)), str(dst))
    elif syntax == JPEGLSLossless:
        dcmtk("dcmcjpls", "+el", str(src12), str(dst))
    elif syntax == RLELossless:
        dcmtk("dcmcrle", str(src12), str(dst))
    elif syntax == DeflatedExplicitVRLittleEndian:
        dcmtk("dcmconv", "+td", str(src12), str(dst))
    elif syntax == JPEG2000Lossless:  # DCMTK has no JPEG 2000 encoder: a real CR chest radiograph in J2K
        return restamp(rg1_j2kr, tmp_path / "j2k")
    assert pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    return dst


@pytest.fixture
def node(tmp_path):
    n = ReceiverNode(tmp_path / "node")
    yield n
    n.stop()


SYNTAXES = [
    JPEGLosslessSV1,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
]


def test_every_syntax_a_radiography_node_meets_has_a_decoder_installed():
    missing = [s.name for s in SYNTAXES if not decoder_available(s)]
    assert missing == [], f"no pydicom decoder installed for {missing} (pyproject's pylibjpeg-* plug-ins)"
    assert set(SYNTAXES) <= set(decodable_transfer_syntaxes())


@pytest.mark.peers
@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
def test_syntax_offered_alone_is_accepted_stored_as_sent_and_decodable(node, tmp_path, syntax, rg1_j2kr):
    sent = _convert(tmp_path, syntax, rg1_j2kr)
    out = node.dcmsend(sent, "--decompress-never", "-d")
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "0x0000" in log.lower() and "0xa900" not in log.lower()
    (row,) = node.rows(instances)
    stored = pydicom.dcmread(row.path)
    assert stored.file_meta.TransferSyntaxUID == syntax  # only this syntax was proposed, and taken
    image = dataset_to_float(stored)  # what the worker does first: it must not fail
    assert image.pixels.shape == (int(stored.Rows), int(stored.Columns))


@pytest.mark.peers
def test_a_syntax_without_decoder_is_refused_and_the_sender_falls_back(tmp_path, rg1_j2kr):
    """With JPEG Lossless SV1 taken as undecodable, dcmsend decompresses (its default) or gives up."""
    node = ReceiverNode(tmp_path / "node", decodable=lambda uid: uid != JPEGLosslessSV1 and decoder_available(uid))
    try:
        assert JPEGLosslessSV1 not in node.receiver.transfer_syntaxes
        sent = _convert(tmp_path, JPEGLosslessSV1, rg1_j2kr)

        never = node.dcmsend(sent, "--decompress-never")
        # The only proposed syntax is refused: no association, nothing acknowledged.
        assert "no acceptable presentation contexts" in (never.stdout + never.stderr).lower(), (
            never.stdout + never.stderr
        )
        assert node.rows(instances) == []

        fallback = node.dcmsend(sent, "-d")  # default: decompress lossless when refused
        assert fallback.returncode == 0, fallback.stdout + fallback.stderr
        (row,) = node.rows(instances)
        stored = pydicom.dcmread(row.path)
        assert stored.file_meta.TransferSyntaxUID.is_encapsulated is False
        assert np.array_equal(stored.pixel_array, pydicom.dcmread(sent).pixel_array)  # lossless all the way
    finally:
        node.stop()


@pytest.mark.peers
def test_explicit_little_endian_is_still_offered(node):
    assert ExplicitVRLittleEndian in node.receiver.transfer_syntaxes
