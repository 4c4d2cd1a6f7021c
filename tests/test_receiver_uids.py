"""Finding 1: UIDs outside the DICOM grammar are refused at receipt; stored files never share a path.

Before, `...4242.2:2` and `...4242.2;2` (or two UIDs equal for 64 characters) were both
acknowledged and written to the same file: one image lost, or a result computed from the
other study's image. Now both are refused with 0xA900 naming the attribute, and file names are
sha256 hashes of the full UIDs, so two different valid UIDs can never meet in one file.
"""

from __future__ import annotations

import warnings

import pytest
from pydicom.uid import generate_uid

from cxr_node.dicom.checks import is_valid_uid
from cxr_node.queue.tables import instances, jobs
from cxr_node.storage import StorageLayout
from tests.dicom_factory import gradient, make_radiograph
from tests.receiver_harness import ReceiverNode, dcmtk

BASE = "1.2.826.0.1.3680043.8.498.4242"
pytestmark = [  # bad UIDs are the point
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length:UserWarning"),
]


@pytest.fixture
def node(tmp_path):
    n = ReceiverNode(tmp_path)
    yield n
    n.stop()


@pytest.mark.parametrize(
    "text,valid",
    [
        ("1.2.840.10008.1.2.4.70", True),
        ("0.0", True),
        ("1.2.3" + ".1" * 29 + "0", True),  # 64 characters
        (f"{BASE}.2:2", False),
        (f"{BASE}.2;2", False),
        ("1.02.3", False),  # leading zero in a multi-digit component
        ("1..2", False),
        ("1.2.", False),
        ("1.2.3" + ".1" * 30, False),  # 65 characters
        ("", False),
        (" 1.2", False),
    ],
)
def test_uid_grammar(text, valid):
    assert is_valid_uid(text) is valid


def _pair(**uids):
    ds = make_radiograph(gradient())
    for keyword, value in uids.items():
        setattr(ds, keyword, value)
    if "SOPInstanceUID" in uids:
        ds.file_meta.MediaStorageSOPInstanceUID = uids["SOPInstanceUID"]
    return ds


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_near_identical_invalid_uids_are_refused_naming_the_attribute(node, keyword):
    for bad in (f"{BASE}.2:2", f"{BASE}.2;2"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            status = node.send(_pair(**{keyword: bad}))
        assert status.Status == 0xA900, bad
        assert status.ErrorComment.startswith(keyword), status.ErrorComment
    assert node.rows(instances) == [] and node.rows(jobs) == []
    assert not any(p.is_file() for p in node.layout.root.rglob("*"))


def test_uids_equal_for_64_characters_are_refused(node):
    long_a = "1.2.3" + ".1" * 29 + "0" + "1"  # 65 characters
    long_b = "1.2.3" + ".1" * 29 + "0" + "2"
    for bad in (long_a, long_b):
        status = node.send(_pair(StudyInstanceUID=bad))
        assert status.Status == 0xA900 and "StudyInstanceUID longer than 64" in status.ErrorComment
    assert node.rows(instances) == []


@pytest.mark.peers
def test_invalid_sop_instance_uid_in_command_and_data_set_is_refused(node, tmp_path):
    """dcmsend (a real sender, UID checks off) sends an image whose SOP Instance UID has a ':'."""
    path = tmp_path / "bad.dcm"
    _pair().save_as(path, enforce_file_format=True)
    dcmtk("dcmodify", "-nb", "-m", f"SOPInstanceUID={BASE}.2:2", str(path))  # the meta header follows
    out = node.dcmsend(path, "--no-uid-checks", "-d")
    assert "0xa900" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    assert node.rows(instances) == []


def test_near_identical_valid_uids_get_their_own_files(node):
    study_a, study_b = f"{BASE}.2.2", f"{BASE}.22"  # "." vs no "." : once both read 4242_2_2-ish
    sop = generate_uid()
    sop_b = sop[:-1] + ("1" if sop[-1] != "1" else "2")
    a = _pair(StudyInstanceUID=study_a, SOPInstanceUID=sop)
    b = _pair(StudyInstanceUID=study_b, SOPInstanceUID=sop_b)
    assert node.send(a).Status == 0x0000 and node.send(b).Status == 0x0000
    paths = {row.sop_instance_uid: row.path for row in node.rows(instances)}
    assert len(set(paths.values())) == 2
    layout = StorageLayout(node.layout.root)
    assert paths[sop] == str(layout.instance_path(study_a, sop))
    assert layout.result_dir(study_a) != layout.result_dir(study_b)


def test_layout_never_merges_uids_that_old_file_names_merged(tmp_path):
    layout = StorageLayout(tmp_path)
    pairs = [(f"{BASE}.2:2", f"{BASE}.2;2"), ("1" * 64 + "1", "1" * 64 + "2"), ("1.2", "1_2")]
    for a, b in pairs:
        assert layout.instance_path(a, a) != layout.instance_path(b, b)
        assert layout.result_dir(a) != layout.result_dir(b)
