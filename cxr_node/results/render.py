"""Draw the Secondary Capture a radiologist reads in three seconds, as 8-bit RGB.

    +--------------------------------------+--------------------+
    |                                      |  (viewer's corner) |
    |                                      | +----------------+ |
    |   the radiograph, long side up to    | | AI overall     | |
    |   max_side (default 1024 px, the     | | COVID-19       | |
    |   source's size if smaller), with    | | P(abnormal) .. | |
    |   the map that explains the answer   | | P(COVID-19) .. | |
    |   (model A's for Pathological, B's   | | map, model,    | |
    |   for COVID-19, none for Normal)     | | image, notes,  | |
    |                                      | | not for diag.  | |
    |   orientation as in the source       | +----------------+ |
    |   (patient's right on the left)      |  the other model's |
    |                                      |  map, small        |
    +--------------------------------------+--------------------+

Why a column beside the image and not a band above it: radiographs are about square or
portrait and screens are landscape, so a viewer that fits the picture to its height shows
the radiograph at full height and the findings in room that would otherwise be black.
Viewers draw their own overlays in the corners (the Orthanc Web Viewer: patient block top
right, WW/WL bottom left, "Not for diagnostic purpose" bottom centre): the column keeps an
empty band at its top and bottom for them, and the radiograph has a margin all round.

Why no map over a Normal result: a coloured blob draws the eye and reads as "something
here"; on a study the AI calls normal it invites the false positive it is meant to rule
out. Model A's map (where it looked for an abnormality) is the inset instead, for a
reader who wants to see it. See docs/results.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxr_node.analysis.fusion import JointClass, JointResult
from cxr_node.results.sc_size import SC_MAX_SIDE
from cxr_node.results.wording import CLASS_WORDS, NOT_FOR_DIAGNOSIS, UNTRAINED_MODEL_TEXT

# Inferno is perceptually uniform and stays readable on grey; the overlay is weighted
# by the CAM itself so cold regions show the radiograph untouched.
COLORMAP = cv2.COLORMAP_INFERNO
ALPHA = 0.55
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE, _GREY, _YELLOW, _RED = (255, 255, 255), (150, 150, 150), (255, 220, 0), (255, 64, 64)
PANEL_MODES = ("per-model", "fused")
# Fractions of max_side: the findings column's width, the margin round the radiograph, and the
# empty bands at the top and bottom of the column (a viewer's 4-line corner block and its
# status line at about 1:1).
COLUMN_WIDTH, MARGIN, TOP_BAND, BOTTOM_BAND = 0.42, 0.02, 0.10, 0.06
MAP_NAMES = {"A": "model A (abnormal)", "B": "model B (COVID-19)", "A+B": "models A and B (max)"}

Box = tuple[int, int, int, int]  # row0, row1, col0, col1 (end exclusive)


@dataclass(frozen=True)
class Legend:
    result: JointResult
    model_text: str  # ModelIdentity.description: "name v3, trained 2026-11-20" or the untrained warning
    trained: bool
    analysed_image: str  # AnalysedImage.text: "CR series 1, instance 1, view AP"
    notes: tuple[str, ...] = ()  # the node's notes on how it read the image (writer.write_results)
    thresholds: tuple[float, float] | None = None  # (t_A, t_B), stated next to the probabilities


@dataclass(frozen=True)
class Layout:
    """Where things were drawn: for tests and documentation."""

    shape: tuple[int, int]
    main: Box  # the radiograph with the map that explains the answer
    findings: Box  # the findings box (all the text is inside it)
    colorbar: Box | None  # the map's colour scale, inside the findings box
    inset: Box | None  # the other model's map
    main_map: str | None  # "A", "B", "A+B" or None (no map over the radiograph)
    inset_map: str | None


def maps_for(label: JointClass, panels: str = "per-model") -> tuple[str | None, str | None]:
    """(map over the radiograph, map in the inset) for a class.

    per-model: the map of the model that decided (A for Pathological, B for COVID-19) over
    the radiograph, the other one small; Normal: none over the radiograph, A's small.
    fused: the maximum of both maps, over the radiograph (or small, for Normal).
    """
    if panels not in PANEL_MODES:
        raise ValueError(f"panels = {panels!r}: expected one of {', '.join(PANEL_MODES)}")
    if panels == "fused":
        return (None, "A+B") if label == JointClass.NORMAL else ("A+B", None)
    return {JointClass.NORMAL: (None, "A"), JointClass.PATHOLOGICAL: ("A", "B"), JointClass.COVID: ("B", "A")}[label]


def maps_text(label: JointClass, panels: str = "per-model") -> str:
    """Which maps the picture shows, in words (the SC's DerivationDescription)."""
    main, inset = maps_for(label, panels)
    over = f"class activation map of {MAP_NAMES[main]} over the radiograph" if main else "no map over the radiograph"
    return over + (f", {MAP_NAMES[inset]} as an inset" if inset else "")


def overlay(grey: np.ndarray, cam: np.ndarray | None) -> np.ndarray:
    """grey, cam: same shape, float in [0, 1] -> RGB uint8 (cam None: the radiograph alone)."""
    base = np.repeat((np.clip(grey, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    if cam is None:
        return base
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), COLORMAP)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    weight = (ALPHA * np.clip(cam, 0, 1))[..., None]
    return (base * (1 - weight) + heat * weight).astype(np.uint8)


def legend_class(r: JointResult) -> str:
    return CLASS_WORDS[r.label]


def _percent(p: float) -> str:
    return f"{100 * p:.1f} %"


def _probability(what: str, p: float, model: str, threshold: float | None) -> str:
    cut = f", threshold {100 * threshold:g} %" if threshold is not None else ""
    return f"P({what}) {_percent(p)} (model {model}{cut})"


def findings_lines(legend: Legend, main_map: str | None) -> list[tuple[str, tuple[int, int, int], float]]:
    """(text, colour, relative size) of the findings box, in reading order; the class first and largest."""
    r = legend.result
    t_a, t_b = legend.thresholds if legend.thresholds is not None else (None, None)
    lines = [
        ("AI overall class", _GREY, 0.9),
        (legend_class(r), _YELLOW, 1.9),
        (_probability("abnormal", r.p_abnormal, "A", t_a), _WHITE, 1.0),
        (_probability("COVID-19", r.p_covid, "B", t_b), _WHITE, 1.0),
    ]
    if r.models_disagree:
        lines.append(("Models disagree: B says COVID-19, A says normal", _YELLOW, 1.0))
    if main_map is None:
        lines.append(("No map over the image (normal result)", _WHITE, 1.0))
    else:
        lines.append((f"Map: where {MAP_NAMES[main_map]} looked", _WHITE, 1.0))
    if legend.trained:
        lines.append((f"Model: {legend.model_text}", _WHITE, 1.0))
    else:
        lines.append((UNTRAINED_MODEL_TEXT, _RED, 1.1))
    lines.append((f"Image: {legend.analysed_image}", _WHITE, 1.0))
    lines += [(f"Note: {note}", _WHITE, 1.0) for note in legend.notes]
    lines.append((NOT_FOR_DIAGNOSIS, _WHITE, 1.0))
    return lines


def _thickness(scale: float) -> int:
    return 1 if scale < 0.6 else 2


def _width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, _FONT, scale, _thickness(scale))[0][0]


def _line_height(scale: float) -> int:
    return int(28 * scale) + 10


def _wrap(text: str, scale: float, budget: int) -> list[str]:
    """Break at spaces so each piece fits budget pixels (a word longer than that is cut)."""
    out, line = [], ""
    for word in text.split(" "):
        while _width(word, scale) > budget and len(word) > 1:  # a UID-like word: cut it
            cut = max(1, int(len(word) * budget / _width(word, scale)) - 1)
            if line:
                out.append(line)
                line = ""
            out.append(word[:cut])
            word = word[cut:]
        candidate = f"{line} {word}" if line else word
        if line and _width(candidate, scale) > budget:
            out.append(line)
            line = word
        else:
            line = candidate
    return out + [line] if line else out


def _draw(img: np.ndarray, text: str, x: int, baseline: int, scale: float, colour) -> None:
    t = _thickness(scale)
    cv2.putText(img, text, (x, baseline), _FONT, scale, (0, 0, 0), t + 2, cv2.LINE_AA)
    cv2.putText(img, text, (x, baseline), _FONT, scale, colour, t, cv2.LINE_AA)


def _resize(img: np.ndarray, scale: float, smooth: bool = False) -> np.ndarray:
    if abs(scale - 1.0) < 1e-9:
        return img
    rows, cols = img.shape[:2]
    # INTER_AREA keeps the radiograph free of aliasing; a CAM is an upsampled, smooth
    # field, so bilinear (about 15x faster on a 2k x 2k float image) loses nothing there.
    interpolation = cv2.INTER_LINEAR if smooth else cv2.INTER_AREA
    return cv2.resize(img, (max(1, round(cols * scale)), max(1, round(rows * scale))), interpolation=interpolation)


def _frame(img: np.ndarray, box: Box, thickness: int, colour=(90, 90, 90)) -> None:
    """A frame drawn inside box (cv2.rectangle would spill half its thickness outside)."""
    r0, r1, c0, c1 = box
    img[r0 : r0 + thickness, c0:c1] = img[r1 - thickness : r1, c0:c1] = colour
    img[r0:r1, c0 : c0 + thickness] = img[r0:r1, c1 - thickness : c1] = colour


def _colorbar(width: int, height: int) -> np.ndarray:
    ramp = np.repeat(np.linspace(0, 255, width, dtype=np.float32)[None, :], height, axis=0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(ramp, COLORMAP), cv2.COLOR_BGR2RGB)


def render(
    grey: np.ndarray,
    cam_a: np.ndarray,
    cam_b: np.ndarray,
    legend: Legend,
    panels: str = "per-model",
    max_side: int = SC_MAX_SIDE,
) -> tuple[np.ndarray, Layout]:
    """The picture (RGB uint8) and where its parts are.

    grey: the radiograph in [0, 1] with VOI and polarity applied (1 = displayed white), in the
    source's orientation (rows top to bottom, columns left to right, never flipped);
    cam_a, cam_b: Grad-CAMs of model A and B on the same grid, in [0, 1].
    max_side: the radiograph's long side in the picture (never enlarged); the findings
    column is added beside it.
    """
    main_map, inset_map = maps_for(legend.result.label, panels)
    grey = np.asarray(grey, dtype=np.float32)
    k = max_side / 1024
    margin, top, bottom = (round(f * max_side) for f in (MARGIN, TOP_BAND, BOTTOM_BAND))
    column_w = round(COLUMN_WIDTH * max_side)
    pad = round(14 * k)  # inside the findings box
    text_w = column_w - 2 * pad
    scale = min(1.0, max_side / max(grey.shape))
    # Shrink before blending: the source can be 3000 px, the picture is about 1000.
    small = _resize(grey, scale)
    cams = {"A": np.asarray(cam_a, dtype=np.float32), "B": np.asarray(cam_b, dtype=np.float32)}
    cams["A+B"] = np.maximum(cams["A"], cams["B"])

    def cam(name: str | None) -> np.ndarray | None:
        return None if name is None else _resize(cams[name], scale, smooth=True)

    main = overlay(small, cam(main_map))
    panel_h, panel_w = main.shape[:2]

    # The findings box: wrapped lines at one font scale (0.6 at 1024 px), the colour scale
    # under the line that says what the map is.
    font = 0.6 * k
    bar_h = round(12 * k)
    rows: list[tuple[str, tuple[int, int, int], float]] = []  # text "" = the colour bar
    for text, colour, size in findings_lines(legend, main_map):
        rows += [(piece, colour, font * size) for piece in _wrap(text, font * size, text_w)]
        if text.startswith("Map:"):  # a Normal result has no map over the image: no scale either
            rows.append(("", _WHITE, 0.8 * font))
    bar_row = round(6 * k) + bar_h + round(10 * k)
    box_h = 2 * pad + sum(_line_height(s) if text else bar_row for text, _, s in rows)
    inset_caption = _line_height(0.9 * font)
    gap = round(16 * k)
    # The inset fills the column's width, or the height the radiograph leaves it (a portrait
    # radiograph), but is never smaller than a fifth of max_side: then the picture grows.
    room = panel_h + 2 * margin - (top + box_h + gap + inset_caption + bottom)
    fit = min((column_w - 2 * pad) / small.shape[1], max(room, round(0.2 * max_side)) / small.shape[0])
    inset_h = round(small.shape[0] * fit) if inset_map is not None else 0
    column_h = top + box_h + (gap + inset_caption + inset_h if inset_map is not None else 0) + bottom
    height = max(panel_h + 2 * margin, column_h)
    width = margin + panel_w + margin + column_w + margin
    canvas = np.zeros((height, width, 3), dtype=np.uint8)

    r0 = (height - panel_h) // 2
    canvas[r0 : r0 + panel_h, margin : margin + panel_w] = main
    main_box = (r0, r0 + panel_h, margin, margin + panel_w)

    c0 = margin + panel_w + margin
    b0 = top
    _frame(canvas, (b0, b0 + box_h, c0, c0 + column_w), max(1, round(2 * k)))
    y = b0 + pad
    colorbar: Box | None = None
    for text, colour, s in rows:
        if text:
            y += _line_height(s)
            _draw(canvas, text, c0 + pad, y - 8, s, colour)
            continue
        top_of_bar = y + round(6 * k)
        x0 = c0 + pad + _width("low", s) + round(8 * k)
        bar_w = text_w // 2
        canvas[top_of_bar : top_of_bar + bar_h, x0 : x0 + bar_w] = _colorbar(bar_w, bar_h)
        colorbar = (top_of_bar, top_of_bar + bar_h, x0, x0 + bar_w)
        _draw(canvas, "low", c0 + pad, top_of_bar + bar_h, s, colour)
        _draw(canvas, "high attention", x0 + bar_w + round(8 * k), top_of_bar + bar_h, s, colour)
        y += bar_row
    findings = (b0, b0 + box_h, c0, c0 + column_w)

    inset: Box | None = None
    if inset_map is not None:
        y = b0 + box_h + gap + inset_caption
        _draw(canvas, f"Inset: where {MAP_NAMES[inset_map]} looked", c0 + pad, y - 8, 0.9 * font, _WHITE)
        tile = overlay(_resize(small, fit), _resize(cams[inset_map], scale * fit, smooth=True))
        th, tw = tile.shape[:2]
        canvas[y : y + th, c0 + pad : c0 + pad + tw] = tile
        inset = (y, y + th, c0 + pad, c0 + pad + tw)
    layout = Layout(canvas.shape[:2], main_box, findings, colorbar, inset, main_map, inset_map)
    return np.ascontiguousarray(canvas), layout


def render_secondary_capture(
    grey: np.ndarray,
    cam_a: np.ndarray,
    cam_b: np.ndarray,
    legend: Legend,
    panels: str = "per-model",
    max_side: int = SC_MAX_SIDE,
) -> np.ndarray:
    """The picture alone (see render)."""
    return render(grey, cam_a, cam_b, legend, panels, max_side)[0]
