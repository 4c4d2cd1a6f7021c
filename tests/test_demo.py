"""The quick start's main job: `cxr-node demo` on the real radiograph, twice in the same directory."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pydicom
import pytest

pytestmark = pytest.mark.slow  # loads two DenseNet-161s, twice


def test_demo_reports_the_real_radiograph_and_can_be_rerun(tmp_path):
    for _ in range(2):  # a second run in the same --out must report again, not wait forever
        out = subprocess.run(
            [sys.executable, "-m", "cxr_node.cli", "demo", "--json", "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
    assert summary["class"] in ("Normal", "Pathological", "COVID-19")
    assert 0.0 <= summary["p_abnormal"] <= 1.0 and 0.0 <= summary["p_covid"] <= 1.0
    assert summary["trained"] is False and "untrained" in summary["model"]
    for stage in ("decode", "preprocess", "model_a", "model_b", "cams", "sr_sc_build", "end_to_end"):
        assert summary["seconds"][stage] >= 0.0, stage
    sr = pydicom.dcmread(summary["returned"]["sr"])
    sc = pydicom.dcmread(summary["returned"]["sc"])
    source = pydicom.dcmread(summary["image"], stop_before_pixels=True)
    assert sr.Modality == "SR" and sc.Modality == "OT"
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
    png = cv2.imread(summary["sc_png"])
    assert png is not None and png.shape[2] == 3
    hsv = cv2.cvtColor(png, cv2.COLOR_BGR2HSV)
    assert np.percentile(hsv[..., 1], 95) > 60  # the heatmap is there, not a grey picture
