"""Shared fixtures. Peers (Orthanc, PostgreSQL) are started per session on free loopback ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import peers

REPO = Path(__file__).resolve().parents[1]
SHARED_CXR = REPO.parent / "shared" / "datasets" / "public-cxr"


def _pydicom_data(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:  # a declared dependency: missing means a broken install, not a reason to skip
        pytest.fail(f"{name} not found: install the PyPI package pydicom-data (a dependency of cxr-node)")
    return Path(path)


@pytest.fixture(scope="session")
def rg1_j2kr() -> Path:
    """Real CR chest radiograph, JPEG 2000 lossless, MONOCHROME1 (pydicom-data)."""
    return _pydicom_data("RG1_J2KR.dcm")


@pytest.fixture(scope="session")
def rg1_uncr() -> Path:
    """The same radiograph uncompressed."""
    return _pydicom_data("RG1_UNCR.dcm")


def _shared_dataset(path: Path) -> Path:
    if not (path / "manifest.csv").is_file():
        message = f"{path} not present (the shared development data set sits beside the repo in CI)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def public_cxr() -> Path:
    return _shared_dataset(SHARED_CXR)


@pytest.fixture(scope="session")
def public_cxr_plus() -> Path:
    """public-cxr plus adult NIH normals and pneumonias (its manifest points into ../public-cxr)."""
    return _shared_dataset(SHARED_CXR.parent / "public-cxr-plus")


PEER_FIXTURES = {"orthanc", "postgres"}


# The longest files of the full suite, longest first (wall seconds of each file alone, 2 cores).
# `make test` runs files whole on xdist workers (--dist loadfile) in collection order
# (--no-loadscope-reorder; xdist's default order is by test count, which started these last and
# made them the tail of the run): starting them first lets the short files fill in around them.
LONGEST_FILES = (
    "test_training_smoke.py",
    "test_admin_node.py",
    "test_crash_recovery.py",
    "test_train_fast_path.py",
    "test_train_bench.py",
    "test_train_grouped.py",
    "test_end_to_end.py",
    "test_training_loop.py",
    "test_demo.py",
    "test_events_node.py",
    "test_not_analysable_report_end_to_end.py",
    "test_bench.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses a peer fixture is a peers test, whether or not its file says so.
    On an xdist worker, the longest files come first (the order within a file is kept)."""
    for item in items:
        if PEER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.peers)
    if hasattr(config, "workerinput"):
        rank = {name: k for k, name in enumerate(LONGEST_FILES)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: others keep their order


@pytest.fixture(scope="session")
def out_of_domain() -> Path:
    """42 lateral radiographs and CT slices (shared/datasets/out-of-domain): what the models must not classify."""
    return _shared_dataset(SHARED_CXR.parent / "out-of-domain")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    pacs = peers.start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield pacs
    peers.stop_process(pacs.process)


@pytest.fixture(scope="session")
def postgres():
    pg = peers.start_postgres()
    yield pg
    peers.stop_postgres(pg)


def restamp(src: Path, dst_dir: Path) -> Path:
    """Copy a DICOM file with new Study/Series/SOP Instance UIDs, so each test has its own study
    in the session-wide Orthanc."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dst_dir.mkdir(parents=True, exist_ok=True)
    out = dst_dir / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.fixture
def fresh_uncr(rg1_uncr, tmp_path) -> Path:
    return restamp(rg1_uncr, tmp_path / "fresh")


@pytest.fixture
def fresh_j2kr(rg1_j2kr, tmp_path) -> Path:
    return restamp(rg1_j2kr, tmp_path / "fresh")


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test: two spinning OpenMP threads slow to a crawl when other jobs
    share the 2 cores, one does not. Restored afterwards: the setting is process-wide."""
    import torch  # here, not at the top: most tests never load torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
