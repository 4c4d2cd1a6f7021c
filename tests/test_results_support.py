"""Shared helpers for the results tests (SR, SC, Orthanc): inputs built from the real radiograph.

Results are made from RG1 (pydicom-data CR chest, 1955 x 1841, MONOCHROME1) with
constructed JointResults and a synthetic Grad-CAM (a Gaussian blob over the right lung
for A, the left for B), so every class and flag can be produced on demand and fast.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from cxr_node.analysis.engine import Analysis
from cxr_node.analysis.fusion import JointClass, JointResult
from cxr_node.decoding.pixels import dataset_to_float
from cxr_node.results.identity import ModelIdentity, NodeIdentity
from cxr_node.results.writer import ResultFiles, write_results
from tests import peers

NODE = NodeIdentity("CXR_NODE", institution_name="Test Hospital")
TRAINED = ModelIdentity("cxr-covid-moura2020", "3", "a" * 64, "b" * 64, trained=True, trained_on="2026-11-20")
UNTRAINED = ModelIdentity("untrained-densenet161", "0", "untrained", "untrained", trained=False)

CASES = {
    "normal": JointResult(JointClass.NORMAL, 0.1234, 0.0567, False),
    "pathological": JointResult(JointClass.PATHOLOGICAL, 0.8765, 0.2101, False),
    "covid": JointResult(JointClass.COVID, 0.9012, 0.7788, False),
    "covid-disagree": JointResult(JointClass.COVID, 0.3003, 0.8123, True),
}


@lru_cache(maxsize=4)
def _decoded(path: str):
    ds = pydicom.dcmread(path)
    return ds, dataset_to_float(ds).pixels


def blob(shape: tuple[int, int], cy: float, cx: float, sigma: float = 0.15) -> np.ndarray:
    rows, cols = shape
    y = (np.arange(rows, dtype=np.float32) / rows - cy)[:, None]
    x = (np.arange(cols, dtype=np.float32) / cols - cx)[None, :]
    return np.exp(-(y**2 + x**2) / (2 * sigma**2)).astype(np.float32)


def source_copy(path: Path, **changes) -> Dataset:
    """A copy of the radiograph with header changes (e.g. PatientName, SpecificCharacterSet)."""
    ds, _ = _decoded(str(path))
    ds = copy.deepcopy(ds)  # Dataset.copy() is shallow: changes would leak into the cached original
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def make_results(
    source_path: Path,
    out_dir: Path,
    case: str = "covid-disagree",
    model: ModelIdentity = UNTRAINED,
    source: Dataset | None = None,
    **kw,
) -> tuple[Dataset, ResultFiles]:
    ds, grey = _decoded(str(source_path))
    source = source if source is not None else ds
    analysis = Analysis(CASES[case], blob(grey.shape, 0.45, 0.3), blob(grey.shape, 0.55, 0.7))
    return source, write_results(source, grey, analysis, out_dir, NODE, model, **kw)


# -- PixelMed DicomSRValidator ------------------------------------------------------------

# The XSLT templates exceed the JDK's default XPath limits ("JAXP0801003 ... exceeds the
# '10,000' limit"); without these properties the validator validates nothing and still exits 0.
PIXELMED_JAVA_OPTIONS = "-Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathExprGrpLimit=0 -Djdk.xml.xpathTotalOpLimit=0"


def pixelmed_sr_validate(*paths: Path) -> dict[str, list[str]]:
    """{file: message lines} from one DicomSRValidator run; raises if it did not validate.

    The launcher exits 0 even on errors, so the output is parsed: each file's report ends
    with "IOD validation complete"; a run that crashed or skipped a file is an error here.
    """
    exe = peers.find_program("DicomSRValidator")
    env = dict(os.environ, JDK_JAVA_OPTIONS=PIXELMED_JAVA_OPTIONS)
    out = subprocess.run([exe, *map(str, paths)], capture_output=True, text=True, timeout=180, env=env)
    text = out.stdout + out.stderr
    if "Exception" in text or text.count("IOD validation complete") != len(paths):
        raise AssertionError(f"DicomSRValidator did not validate {len(paths)} file(s):\n{text[-3000:]}")
    # Reports come in file order, each opening with "Found <IOD> IOD".
    chunks = re.split(r"(?m)^(?=Found \S+ IOD)", text)
    chunks = [c for c in chunks if c.startswith("Found ")]
    return {
        str(p): [line for line in c.splitlines() if line.startswith(("Error", "Warning"))]
        for p, c in zip(paths, chunks, strict=False)
    }


# PixelMed 20220618's TID 1501 has no rows for a group's qualitative evaluations (only TID 300
# measurements), so it lists each one as "not in template": ours (99CXRNODE), each model's
# Present / Absent (concept name = the finding) and the node's notes (DCM 121106 "Comment").
# All are extensions of the extensible TID 1501 (docs/results.md, Validation).
_GROUP_EXTENSION = re.compile(
    r'^Warning: [\d.]+: /CONTAINER \(126000,DCM,"Imaging Measurement Report"\)/CONTAINER \(126010,DCM,'
    r'"Imaging Measurements"\)/CONTAINER \(125007,DCM,"Measurement Group"\)/'
    r"(CODE \((CXR\d+,99CXRNODE|263654008,SCT|840539006,SCT),|TEXT \((CXR\d+,99CXRNODE|121106,DCM),)"
    r".*: Content Item not in template$"
)


def pixelmed_unexpected(lines: list[str]) -> list[str]:
    """PixelMed's messages other than the group extensions explained above."""
    return [line for line in lines if not _GROUP_EXTENSION.match(line)]


def pixelmed_errors(report: dict[str, list[str]]) -> list[str]:
    return [f"{path}: {line}" for path, lines in report.items() for line in lines if line.startswith("Error")]


@pytest.fixture(scope="session")
def pixelmed_available():
    peers.find_program("DicomSRValidator")
