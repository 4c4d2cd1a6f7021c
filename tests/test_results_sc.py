"""The Grad-CAM Secondary Capture: picture content, DICOM attributes, validator, build time."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pydicom
import pytest

from cxr_node.analysis.fusion import JointClass, JointResult
from cxr_node.results.render import Legend, render_secondary_capture
from tests import peers
from tests.test_results_support import CASES, TRAINED, UNTRAINED, _decoded, blob, make_results

LEGEND_ROWS = 40  # the legend sits below the panels; its rows are at least this tall


def _hsv(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)


def _grey_and_cams(rg1):
    _, grey = _decoded(str(rg1))
    return grey, blob(grey.shape, 0.45, 0.3), blob(grey.shape, 0.55, 0.7)


@pytest.mark.parametrize("panels, max_side", [("per-model", 1024), ("fused", 1024), ("per-model", 600), ("fused", 512)])
def test_long_side_capped_legend_included(panels, max_side, rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    rgb = render_secondary_capture(grey, a, b, Legend(CASES["covid-disagree"], UNTRAINED.label, False), panels, max_side)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert max(rgb.shape[:2]) <= max_side
    assert max(rgb.shape[:2]) >= 0.8 * max_side  # not needlessly small either


def test_heatmap_follows_the_cam_and_panels_differ(rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    rgb = render_secondary_capture(grey, a, b, Legend(CASES["normal"], TRAINED.label, True), "per-model", 1024)
    sat = _hsv(rgb)[..., 1].astype(float)
    half = rgb.shape[1] // 2
    rows = int(0.6 * (rgb.shape[0] - LEGEND_ROWS))
    left, right = sat[:rows, :half], sat[:rows, half:]
    # A's blob is at 30 % of the width, B's at 70 %: colour where each CAM is hot, grey where cold.
    lw, rw = left.shape[1], right.shape[1]
    assert left[:, int(0.2 * lw):int(0.4 * lw)].mean() > 40
    assert left[:, int(0.8 * lw):].mean() < 15
    assert right[:, int(0.6 * rw):int(0.8 * rw)].mean() > 40
    assert right[:, : int(0.2 * rw)].mean() < 15


def test_radiograph_polarity_kept(rg1_uncr):
    # VOI + MONOCHROME1 inversion happen in decoding; the SC shows the lungs dark, the mediastinum bright.
    grey, _, _ = _grey_and_cams(rg1_uncr)
    zero = np.zeros_like(grey)
    rgb = render_secondary_capture(grey, zero, zero, Legend(CASES["normal"], TRAINED.label, True), "fused", 1024)
    v = _hsv(rgb)[..., 2].astype(float)
    rows, cols = v.shape[0] - 200, v.shape[1]
    lung = v[int(0.35 * rows):int(0.6 * rows), int(0.2 * cols):int(0.35 * cols)].mean()
    spine = v[int(0.35 * rows):int(0.6 * rows), int(0.47 * cols):int(0.53 * cols)].mean()
    assert spine > lung + 30, (spine, lung)


def test_untrained_warning_is_burned_in_red(rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    r = CASES["pathological"]

    def red_pixels(trained):
        rgb = render_secondary_capture(grey, a, b, Legend(r, "m 1", trained), "fused", 800)
        legend = rgb[-200:].astype(int)
        return int(((legend[..., 0] > 200) & (legend[..., 1] < 100) & (legend[..., 2] < 100)).sum())

    assert red_pixels(False) > 200
    assert red_pixels(True) == 0


def test_bad_panel_mode_is_named(rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    with pytest.raises(ValueError, match="panels"):
        render_secondary_capture(grey, a, b, Legend(CASES["normal"], "m", True), "three-up", 1024)


def test_sc_attributes(rg1_uncr, tmp_path):
    source, files = make_results(rg1_uncr, tmp_path, "covid", model=UNTRAINED)
    sc = pydicom.dcmread(files.sc_path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated, sc.BitsStored) == ("RGB", 3, 8, 8)
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ConversionType == "WSD"
    assert sc.BodyPartExamined == source.BodyPartExamined == "CHEST"
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    assert "Grad-CAM" in sc.DerivationDescription and "UNTRAINED" in sc.DerivationDescription
    assert "UNTRAINED" in sc.SeriesDescription
    assert sc.StudyDescription == source.StudyDescription
    assert np.array_equal(sc.pixel_array, files.rgb)
    assert max(files.rgb.shape[:2]) <= 1024


def test_sc_dciodvfy_no_errors(rg1_uncr, tmp_path):
    _, files = make_results(rg1_uncr, tmp_path, "covid-disagree", model=UNTRAINED, panels="fused")
    errors, warnings = peers.dciodvfy(files.sc_path)
    assert errors == [], "\n".join(errors)
    # Only RG1's retired one-component ReferringPhysicianName "ward", copied from the source.
    assert [w for w in warnings if "<ward>" not in w] == []


def test_build_is_fast(rg1_uncr, tmp_path):
    """SR + SC for a 1955 x 1841 radiograph: was ~0.85 s in the demo (cold highdicom tables)."""
    from cxr_node.results.writer import warm_up

    warm_up()  # what the module starts in the background at import
    make_results(rg1_uncr, tmp_path / "first", "normal")
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        make_results(rg1_uncr, tmp_path / str(i), "covid-disagree")
        times.append(time.perf_counter() - t0)
    # ~0.1 s on a quiet 2-core machine; the bound leaves room for a busy CI runner.
    assert min(times) < 0.4, times


def test_real_untrained_bundle_end_to_end(rg1_uncr, tmp_path):
    """Real analysis (untrained DenseNet-161 at 64 px) -> SR + SC that validate."""
    from cxr_node.analysis.bundle import untrained_bundle
    from cxr_node.analysis.engine import Analyzer
    from cxr_node.results.identity import NodeIdentity
    from cxr_node.results.writer import write_results
    from cxr_node.worker import model_identity

    ds, grey = _decoded(str(rg1_uncr))
    analyzer = Analyzer(untrained_bundle(input_size=64), device="cpu")
    (analysis,) = analyzer.analyse([grey])
    assert analysis.cam_a.shape == grey.shape
    files = write_results(ds, grey, analysis, tmp_path, NodeIdentity("CXR_NODE"), model_identity(analyzer.bundle))
    for path in (files.sr_path, files.sc_path):
        assert peers.dciodvfy(path)[0] == []
    assert isinstance(analysis.result.label, JointClass)
    assert isinstance(analysis.result, JointResult)
