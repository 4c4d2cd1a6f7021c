"""Findings 1 and 2 end to end: a real node (serve), DCMTK as the modality, Orthanc as the PACS.

- A JPEG Lossless SV1 radiograph (the usual lossless syntax of CR/DX units), offered by storescu
  with JPEG lossless proposed, is acknowledged and its SR and SC arrive in its own study in Orthanc
  (before: acknowledged, then "all plugins are missing dependencies", no result).
- Two images with near-identical valid study UIDs (`…2.2` / `…22`) each get their own result,
  filed in their own study (the invalid near-identical pair is refused: test_receiver_uids.py).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLosslessSV1, generate_uid

from tests import peers
from tests.dicom_factory import make_radiograph
from tests.receiver_harness import dcmtk
from tests.test_end_to_end import ServeProcess, results_at

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def _radiograph(path, study_uid):
    rows, cols = 256, 200
    yy, xx = np.mgrid[0:rows, 0:cols]
    pixels = (1500 + 1200 * np.sin(xx / 17.0) * np.cos(yy / 23.0)).round()
    ds = make_radiograph(pixels, study_uid=study_uid)
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_jpeg_lossless_and_near_identical_studies_get_their_own_results(tmp_path, orthanc):
    base = generate_uid()[:-4]
    studies = [f"{base}.2.2", f"{base}.22"]
    files = []
    for i, study in enumerate(studies):
        plain = tmp_path / f"plain{i}.dcm"
        _radiograph(plain, study)
        files.append(plain)
    jpeg = tmp_path / "jpeg0.dcm"
    dcmtk("dcmcjpeg", "+e1", str(files[0]), str(jpeg))  # the first study's image goes JPEG Lossless SV1
    assert pydicom.dcmread(jpeg, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    files[0] = jpeg

    node = ServeProcess(tmp_path, orthanc).start()
    try:
        exe = peers.find_program("storescu")
        for f in files:
            # -R: only the file's SOP class; -xs: propose JPEG Lossless SV1 (and the uncompressed syntaxes)
            out = subprocess.run(
                [exe, "-R", "-xs", "-aet", "MOBILE_DR", "-aec", node.ae_title, "127.0.0.1", str(node.port), str(f)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr
        stored = sorted((node.storage / "instances").rglob("*.dcm"))
        syntaxes = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in stored}
        assert len(stored) == 2 and JPEGLosslessSV1 in syntaxes  # sent and kept as JPEG Lossless

        for study in studies:
            found = results_at(orthanc, study, 2)
            assert sorted(i["Tags"]["Modality"] for i in found) == ["OT", "SR"], node.log()
            for item in found:
                assert item["Tags"]["StudyInstanceUID"] == study
    finally:
        node.stop()
