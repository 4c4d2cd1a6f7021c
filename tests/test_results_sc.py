"""The Grad-CAM Secondary Capture: picture content and layout, DICOM attributes, validator."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pydicom
import pytest

from cxr_node.analysis.fusion import JointClass, JointResult
from cxr_node.results.render import Legend, findings_lines, maps_for, render, render_secondary_capture
from tests import peers
from tests.test_results_support import CASES, TRAINED, UNTRAINED, _decoded, blob, make_results, source_copy

IMAGE = "CR series 1, instance 1, view PA"


def _legend(case: str, model=UNTRAINED, image: str = IMAGE, notes=()) -> Legend:
    return Legend(CASES[case], model.description, model.trained, image, tuple(notes), model.thresholds)


def _hsv(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)


def _grey_and_cams(rg1):
    _, grey = _decoded(str(rg1))
    return grey, blob(grey.shape, 0.45, 0.3), blob(grey.shape, 0.55, 0.7)


def _crop(img, box):
    r0, r1, c0, c1 = box
    return img[r0:r1, c0:c1]


@pytest.mark.parametrize("panels, max_side", [("per-model", 1024), ("fused", 1024), ("per-model", 600), ("fused", 512)])
def test_the_radiograph_is_large_and_the_findings_beside_it(panels, max_side, rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    rgb, layout = render(grey, a, b, _legend("covid-disagree"), panels, max_side)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    r0, r1, c0, c1 = layout.main
    assert max(r1 - r0, c1 - c0) == max_side  # RG1 (1955 x 1841) is larger: shrunk to max_side, never more
    assert (r1 - r0) / (c1 - c0) == pytest.approx(grey.shape[0] / grey.shape[1], rel=0.01)  # aspect kept
    assert rgb.shape[0] <= 1.05 * max_side  # the findings do not make the picture taller than the radiograph
    f0, f1, g0, g1 = layout.findings
    assert g0 >= c1 and f1 <= rgb.shape[0]  # the findings column is beside the radiograph


def test_at_least_twice_the_old_panels_and_never_enlarged(rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    _, layout = render(grey, a, b, _legend("covid"), "per-model", 1024)
    r0, r1, _, _ = layout.main
    assert r1 - r0 >= 2 * 465  # the old side-by-side panels were about 465 px
    small = cv2.resize(grey, (300, 320), interpolation=cv2.INTER_AREA)
    _, layout = render(small, cv2.resize(a, (300, 320)), cv2.resize(b, (300, 320)), _legend("covid"), "per-model", 1024)
    r0, r1, c0, c1 = layout.main
    assert (r1 - r0, c1 - c0) == (320, 300)  # the source's size when it is smaller


@pytest.mark.parametrize("shape", [(2000, 1000), (1000, 2000), (300, 300)])
def test_other_shapes_fit_the_column(shape, rg1_uncr):
    """A portrait radiograph keeps the picture at its height (the inset shrinks); a small one grows it only as needed."""
    grey = cv2.resize(_grey_and_cams(rg1_uncr)[0], shape[::-1], interpolation=cv2.INTER_AREA)
    cams = blob(shape, 0.45, 0.3), blob(shape, 0.55, 0.7)
    rgb, layout = render(grey, *cams, _legend("covid-disagree", notes=["patient age not stated"]), "per-model", 1024)
    r0, r1, c0, c1 = layout.main
    assert max(r1 - r0, c1 - c0) == min(1024, max(shape))
    if shape[0] >= 1024:  # as tall as the radiograph with its margins, no taller
        assert rgb.shape[0] == (r1 - r0) + 2 * round(0.02 * 1024)
    i0, i1, j0, j1 = layout.inset
    assert min(i1 - i0, j1 - j0) >= 0.1 * 1024 and rgb.shape[0] - i1 >= 0.05 * 1024


@pytest.mark.parametrize(
    "case, main, inset",
    [("pathological", "A", "B"), ("covid", "B", "A"), ("covid-disagree", "B", "A"), ("normal", None, "A")],
)
def test_the_map_that_explains_the_answer_is_over_the_radiograph(case, main, inset, rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    rgb, layout = render(grey, a, b, _legend(case, TRAINED), "per-model", 1024)
    assert (layout.main_map, layout.inset_map) == (main, inset) == maps_for(CASES[case].label)
    sat = _hsv(rgb)[..., 1].astype(float)
    big = _crop(sat, layout.main)
    rows = int(0.6 * big.shape[0])
    w = big.shape[1]
    # A's blob is at 30 % of the width, B's at 70 %: colour where the shown CAM is hot, grey elsewhere.
    left, right = big[:rows, int(0.2 * w) : int(0.4 * w)].mean(), big[:rows, int(0.6 * w) : int(0.8 * w)].mean()
    if main == "A":
        assert left > 40 and right < 15, (left, right)
    elif main == "B":
        assert right > 40 and left < 15, (left, right)
    else:  # Normal: the radiograph alone, no colour at all
        assert big.max() < 10
    small = _crop(sat, layout.inset)
    sw = small.shape[1]
    s_left, s_right = small[:, int(0.2 * sw) : int(0.4 * sw)].mean(), small[:, int(0.6 * sw) : int(0.8 * sw)].mean()
    assert (s_left > s_right) == (inset == "A"), (s_left, s_right)


def test_fused_shows_both_maps_over_the_radiograph(rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    rgb, layout = render(grey, a, b, _legend("covid", TRAINED), "fused", 1024)
    big = _crop(_hsv(rgb)[..., 1].astype(float), layout.main)
    w = big.shape[1]
    assert big[:, int(0.2 * w) : int(0.4 * w)].mean() > 25 and big[:, int(0.6 * w) : int(0.8 * w)].mean() > 25
    assert layout.inset is None


def test_orientation_is_the_source_orientation(rg1_uncr):
    """Patient's right stays on the image's left: a marker top-left in the source is top-left in the picture."""
    grey, _, _ = _grey_and_cams(rg1_uncr)
    marked = np.zeros_like(grey)
    rows, cols = grey.shape
    marked[: rows // 8, : cols // 8] = 1.0
    zero = np.zeros_like(grey)
    rgb, layout = render(marked, zero, zero, _legend("pathological", TRAINED), "per-model", 1024)
    for box in (layout.main, layout.inset):
        v = _crop(_hsv(rgb)[..., 2], box).astype(float)
        h, w = v.shape
        assert v[: h // 10, : w // 10].mean() > 200
        assert v[: h // 10, -w // 10 :].mean() < 20 and v[-h // 10 :, : w // 10].mean() < 20


def test_radiograph_polarity_kept(rg1_uncr):
    # VOI + MONOCHROME1 inversion happen in decoding; the SC shows the lungs dark, the mediastinum bright.
    grey, _, _ = _grey_and_cams(rg1_uncr)
    zero = np.zeros_like(grey)
    rgb, layout = render(grey, zero, zero, _legend("normal", TRAINED), "per-model", 1024)
    v = _crop(_hsv(rgb)[..., 2], layout.main).astype(float)
    rows, cols = v.shape
    lung = v[int(0.35 * rows) : int(0.6 * rows), int(0.2 * cols) : int(0.35 * cols)].mean()
    spine = v[int(0.35 * rows) : int(0.6 * rows), int(0.47 * cols) : int(0.53 * cols)].mean()
    assert spine > lung + 30, (spine, lung)


def _red(rgb) -> np.ndarray:
    rgb = rgb.astype(int)
    return (rgb[..., 0] > 200) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)


def _mask(shape, *boxes) -> np.ndarray:
    m = np.zeros(shape[:2], dtype=bool)
    for box in boxes:
        if box is not None:
            r0, r1, c0, c1 = box
            m[r0:r1, c0:c1] = True
    return m


def test_untrained_warning_is_burned_in_red_in_the_findings_box(rg1_uncr):
    grey, a, b = _grey_and_cams(rg1_uncr)
    untrained, layout = render(grey, a, b, _legend("pathological", UNTRAINED), "per-model", 800)
    red = _red(untrained)
    text = _mask(untrained.shape, layout.findings) & ~_mask(untrained.shape, layout.colorbar)
    assert red[text].sum() > 200
    maps = _mask(untrained.shape, layout.main, layout.inset, layout.colorbar)
    assert red[~text & ~maps].sum() == 0  # nowhere else
    trained, layout = render(grey, a, b, _legend("pathological", TRAINED), "per-model", 800)
    text = _mask(trained.shape, layout.findings) & ~_mask(trained.shape, layout.colorbar)
    assert _red(trained)[text].sum() == 0


@pytest.mark.parametrize(
    "case, panels, max_side",
    [
        ("covid-disagree", "per-model", 1024),
        ("normal", "per-model", 1024),
        ("covid", "fused", 1024),
        ("pathological", "per-model", 600),
        ("covid-disagree", "fused", 512),
    ],
)
def test_text_stays_off_the_edges(case, panels, max_side, rg1_uncr):
    """Viewers draw their overlays in the corners and along the edges: ours keep clear of them."""
    grey, a, b = _grey_and_cams(rg1_uncr)
    rgb, layout = render(grey, a, b, _legend(case, notes=["patient age not stated"]), panels, max_side)
    ink = rgb.max(axis=2) > 0
    rows, cols = layout.shape
    f0, f1, g0, g1 = layout.findings
    assert f0 >= 0.09 * max_side and not ink[:f0, g0:].any()  # an empty band above the findings
    assert ink[f0:f1, g0:g1].sum() > 1000  # the text is there
    last = max(f1, layout.inset[1] if layout.inset else 0)
    assert rows - last >= 0.05 * max_side and not ink[last:, g0:].any()  # and one below the column
    # Nothing outside the radiograph, the findings box and the inset with its caption line.
    caption = (f1, layout.inset[0], g0, g1) if layout.inset else None
    outside = ~_mask(rgb.shape, layout.main, layout.findings, layout.inset, caption)
    assert not ink[outside].any()
    r0, r1, c0, c1 = layout.main
    assert r0 > 0 and c0 > 0 and c1 < g0  # a margin round the radiograph


def test_findings_in_clinical_words(rg1_uncr):
    model = replace(TRAINED, thresholds=(0.5, 0.42))
    lines = [
        t
        for t, _, _ in findings_lines(
            _legend("covid", model, "DX series 7, instance 3, view AP", notes=["patient age not stated"]), "B"
        )
    ]
    assert lines[:2] == ["AI overall class", "COVID-19"]  # the answer first
    assert "P(abnormal) 90.1 % (model A, threshold 50 %)" in lines
    assert "P(COVID-19) 77.9 % (model B, threshold 42 %)" in lines
    assert "Map: where model B (COVID-19) looked" in lines
    assert "Model: cxr-covid-moura2020 v3, trained 2026-11-20" in lines
    assert "Image: DX series 7, instance 3, view AP" in lines
    assert "Note: patient age not stated" in lines
    assert lines[-1] == "AI result - not for diagnostic use"
    assert not any("disagree" in t for t in lines)
    pathological = [t for t, _, _ in findings_lines(_legend("pathological"), "A")]
    assert pathological[1] == "Pathological (non-COVID-19)" and "Map: where model A (abnormal) looked" in pathological
    normal = [t for t, _, _ in findings_lines(_legend("normal"), None)]
    assert normal[1] == "Normal" and "No map over the image (normal result)" in normal
    untrained = [t for t, _, _ in findings_lines(_legend("covid-disagree", UNTRAINED), "B")]
    assert "UNTRAINED MODEL - NOT FOR CLINICAL USE" in untrained
    assert "Models disagree: B says COVID-19, A says normal" in untrained
    assert not any("untrained-densenet161" in t for t in untrained)  # no cryptic bundle label
    # The words are drawn: a different image names a different box, and only the box changes.
    grey, a, b = _grey_and_cams(rg1_uncr)
    one, layout = render(grey, a, b, _legend("covid", TRAINED, "DX series 7, instance 3, view AP"), "per-model", 800)
    other, _ = render(grey, a, b, _legend("covid", TRAINED, "DX series 7, instance 4, view AP"), "per-model", 800)
    box = _mask(one.shape, layout.findings)
    assert (one[box] != other[box]).any() and (one[~box] == other[~box]).all()


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
    assert (
        "class activation map of model B (COVID-19) over the radiograph, model A (abnormal) as an inset"
        in sc.DerivationDescription
    )
    assert "CR series 1, instance 1, view PA" in sc.DerivationDescription
    assert sc.SeriesDescription == "AI map UNTRAINED: COVID-19, not for diagnosis"
    assert sc.StudyDescription == source.StudyDescription
    assert np.array_equal(sc.pixel_array, files.rgb)
    assert files.rgb.shape[0] <= 1.05 * 1024 < files.rgb.shape[1]  # landscape: the findings beside the image


@pytest.mark.peers  # dciodvfy / dsr2html
def test_sc_dciodvfy_no_errors(rg1_uncr, tmp_path):
    _, files = make_results(rg1_uncr, tmp_path, "covid-disagree", model=UNTRAINED, panels="fused")
    errors, warnings = peers.dciodvfy(files.sc_path)
    assert errors == [], "\n".join(errors)
    # Only RG1's retired one-component ReferringPhysicianName "ward", copied from the source.
    assert [w for w in warnings if "<ward>" not in w] == []


@pytest.mark.peers  # dciodvfy / dsr2html
def test_source_without_patient_orientation_still_gets_its_sc(rg1_uncr, tmp_path):
    """PatientOrientation is optional in CR; the SC then carries it empty (Type 2) and still validates."""
    source = source_copy(rg1_uncr)
    del source.PatientOrientation
    _, files = make_results(rg1_uncr, tmp_path, "covid", source=source)
    sc = pydicom.dcmread(files.sc_path)
    assert "PatientOrientation" in sc and not sc.PatientOrientation
    errors, _ = peers.dciodvfy(files.sc_path)
    assert errors == [], "\n".join(errors)


@pytest.mark.peers  # dciodvfy / dsr2html
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
    files = write_results(
        ds, grey, analysis, tmp_path, NodeIdentity("CXR_NODE"), ModelIdentity.from_bundle(analyzer.bundle)
    )
    for path in (files.sr_path, files.sc_path):
        assert peers.dciodvfy(path)[0] == []
    assert isinstance(analysis.result.label, JointClass)
    assert isinstance(analysis.result, JointResult)
