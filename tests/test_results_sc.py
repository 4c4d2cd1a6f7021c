"""The Grad-CAM Secondary Capture: picture content and layout, DICOM attributes, validator."""

from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest

from cxr_node.analysis.fusion import JointClass, JointResult
from cxr_node.results.render import Legend, _header_lines, render, render_secondary_capture
from tests import peers
from tests.test_results_support import CASES, TRAINED, UNTRAINED, _decoded, blob, make_results, source_copy

IMAGE = "CR series 1, instance 1, view PA"


def _legend(case: str, model=UNTRAINED, image: str = IMAGE) -> Legend:
    return Legend(CASES[case], model.description, model.trained, image)


def _hsv(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)


def _grey_and_cams(rg1):
    _, grey = _decoded(str(rg1))
    return grey, blob(grey.shape, 0.45, 0.3), blob(grey.shape, 0.55, 0.7)


@pytest.mark.parametrize("panels, max_side", [("per-model", 1024), ("fused", 1024), ("per-model", 600), ("fused", 512)])
def test_long_side_capped_legend_included(panels, max_side, rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    rgb = render_secondary_capture(grey, a, b, _legend("covid-disagree"), panels, max_side)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert max(rgb.shape[:2]) <= max_side
    assert max(rgb.shape[:2]) >= 0.8 * max_side  # not needlessly small either


def test_heatmap_follows_the_cam_and_panels_differ(rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    rgb, layout = render(grey, a, b, _legend("normal", TRAINED), "per-model", 1024)
    sat = _hsv(rgb)[..., 1].astype(float)
    (r0, r1, la, lb), (_, _, ra, rb) = layout.panels
    rows = r0 + int(0.6 * (r1 - r0))
    left, right = sat[r0:rows, la:lb], sat[r0:rows, ra:rb]
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
    rgb, layout = render(grey, zero, zero, _legend("normal", TRAINED), "fused", 1024)
    (r0, r1, c0, c1), = layout.panels
    v = _hsv(rgb)[r0:r1, c0:c1, 2].astype(float)
    rows, cols = v.shape
    lung = v[int(0.35 * rows):int(0.6 * rows), int(0.2 * cols):int(0.35 * cols)].mean()
    spine = v[int(0.35 * rows):int(0.6 * rows), int(0.47 * cols):int(0.53 * cols)].mean()
    assert spine > lung + 30, (spine, lung)


def _red(rgb) -> np.ndarray:
    rgb = rgb.astype(int)
    return (rgb[..., 0] > 200) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)


def test_untrained_warning_is_burned_in_red_in_the_header(rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    untrained, layout = render(grey, a, b, _legend("pathological", UNTRAINED), "fused", 800)
    red = _red(untrained)
    t0, t1 = layout.text_rows
    assert red[t0:t1].sum() > 200
    assert red[:t0].sum() == 0 and red[layout.panels[0][1]:].sum() == 0  # nothing red at the top or bottom edge
    trained, _ = render(grey, a, b, _legend("pathological", TRAINED), "fused", 800)
    assert _red(trained).sum() == 0


@pytest.mark.parametrize("panels, max_side", [("per-model", 1024), ("fused", 1024), ("per-model", 600), ("fused", 512)])
def test_text_stays_off_the_edges(panels, max_side, rg1_uncr):
    """Viewers draw their overlays in the corners and along the edges: ours keep clear of them."""
    grey, a, b = _grey_and_cams(rg1_uncr)
    rgb, layout = render(grey, a, b, _legend("covid-disagree"), panels, max_side)
    ink = rgb.max(axis=2) > 0
    rows, cols = layout.shape
    t0, t1 = layout.text_rows
    c0, c1 = layout.text_cols
    assert t0 >= 0.09 * max_side  # an empty band above the text
    assert not ink[:t0].any()
    assert not ink[t0:t1, :c0].any() and not ink[t0:t1, c1:].any()  # side margins
    assert ink[t0:t1, c0:c1].sum() > 1000  # the text is there
    last_panel_row = max(p[1] for p in layout.panels)
    assert rows - last_panel_row >= 0.04 * max_side  # an empty band below the panels
    assert not ink[last_panel_row:].any()
    for r0, _, p0, p1 in layout.panels:
        assert r0 >= t1 and p0 >= c0 and p1 <= c1
    assert not ink[t1:, :min(p[2] for p in layout.panels)].any()  # left margin beside the panels


def test_header_names_the_model_and_the_image_in_plain_words(rg1_uncr):
    lines = [text for text, _, _ in _header_lines(_legend("covid", TRAINED, "DX series 7, instance 3, view AP"))]
    assert lines[0] == "AI overall class: COVID-19"
    assert "Model: cxr-covid-moura2020 v3, trained 2026-11-20" in lines
    assert "Computed from DX series 7, instance 3, view AP" in lines
    assert "AI result - not for diagnostic use" in lines
    untrained = [text for text, _, _ in _header_lines(_legend("covid", UNTRAINED, "CR series 1, instance 1, view not stated"))]
    assert "UNTRAINED MODEL - NOT FOR CLINICAL USE" in untrained
    assert "Computed from CR series 1, instance 1, view not stated" in untrained
    assert not any("untrained-densenet161" in t for t in untrained)  # no cryptic bundle label
    # The words are drawn: a different image names a different header.
    grey, a, b = _grey_and_cams(rg1_uncr)
    one, layout = render(grey, a, b, _legend("covid", TRAINED, "DX series 7, instance 3, view AP"), "fused", 800)
    other, _ = render(grey, a, b, _legend("covid", TRAINED, "DX series 7, instance 4, view AP"), "fused", 800)
    t0, t1 = layout.text_rows
    assert (one[t0:t1] != other[t0:t1]).any() and (one[t1:] == other[t1:]).all()


def test_bad_panel_mode_is_named(rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    with pytest.raises(ValueError, match="panels"):
        render_secondary_capture(grey, a, b, _legend("normal"), "three-up", 1024)


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
    assert "CR series 1, instance 1, view PA" in sc.DerivationDescription
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


def test_source_without_patient_orientation_still_gets_its_sc(rg1_uncr, tmp_path):
    """PatientOrientation is optional in CR; the SC then carries it empty (Type 2) and still validates."""
    source = source_copy(rg1_uncr)
    del source.PatientOrientation
    _, files = make_results(rg1_uncr, tmp_path, "covid", source=source)
    sc = pydicom.dcmread(files.sc_path)
    assert "PatientOrientation" in sc and not sc.PatientOrientation
    errors, _ = peers.dciodvfy(files.sc_path)
    assert errors == [], "\n".join(errors)


def test_real_untrained_bundle_end_to_end(rg1_uncr, tmp_path):
    """Real analysis (untrained DenseNet-161 at 64 px) -> SR + SC that validate."""
    from cxr_node.analysis.bundle import untrained_bundle
    from cxr_node.analysis.engine import Analyzer
    from cxr_node.results.identity import ModelIdentity, NodeIdentity
    from cxr_node.results.writer import write_results

    ds, grey = _decoded(str(rg1_uncr))
    analyzer = Analyzer(untrained_bundle(input_size=64), device="cpu")
    (analysis,) = analyzer.analyse([grey])
    assert analysis.cam_a.shape == grey.shape
    files = write_results(ds, grey, analysis, tmp_path, NodeIdentity("CXR_NODE"), ModelIdentity.from_bundle(analyzer.bundle))
    for path in (files.sr_path, files.sc_path):
        assert peers.dciodvfy(path)[0] == []
    assert isinstance(analysis.result.label, JointClass)
    assert isinstance(analysis.result, JointResult)
