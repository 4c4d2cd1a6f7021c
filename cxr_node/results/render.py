"""Draw the Grad-CAM picture: a header band of text over the heatmap panels, as 8-bit RGB.

Layout, top to bottom: an empty top margin, the header (AI overall class, both
probabilities, the disagreement flag, the model, the analysed image, "not for diagnostic
use"), one caption row, the panels, an empty bottom margin; empty side margins. Viewers
draw their own overlays in the corners and along the edges (the Orthanc Web Viewer: patient
block top right, WW/WL bottom left, "Not for diagnostic purpose" bottom centre), so every
line of ours is centred, inside the margins, and none sits at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxr_node.analysis.fusion import JointResult
from cxr_node.results.wording import CLASS_WORDS, NOT_FOR_DIAGNOSIS, UNTRAINED_MODEL_TEXT

# Inferno is perceptually uniform and stays readable on grey; the overlay is weighted
# by the CAM itself so cold regions show the radiograph untouched.
COLORMAP = cv2.COLORMAP_INFERNO
ALPHA = 0.55
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE, _YELLOW, _RED = (255, 255, 255), (255, 220, 0), (255, 64, 64)
# Margins as fractions of max_side: the top one is tall enough for a viewer's 4-line
# corner block at about 1:1 display, the bottom one for its single status line.
TOP_MARGIN, BOTTOM_MARGIN, SIDE_MARGIN = 0.10, 0.05, 0.03
TEXT_WIDTH = 0.8  # header lines stay within the middle 80 % of the width
PANEL_MODES = ("per-model", "fused")


@dataclass(frozen=True)
class Legend:
    result: JointResult
    model_text: str  # ModelIdentity.description: "name v3, trained 2026-11-20" or the untrained warning
    trained: bool
    analysed_image: str  # AnalysedImage.text: "CR series 1, instance 1, view AP"
    notes: tuple[str, ...] = ()  # the node's notes on how it read the image (writer.write_results)


@dataclass(frozen=True)
class Layout:
    """Where things were drawn (rows and columns, end exclusive): for tests and documentation."""

    shape: tuple[int, int]
    text_rows: tuple[int, int]  # header and captions
    text_cols: tuple[int, int]  # no text outside these columns (header lines keep to the middle 80 %)
    panels: tuple[tuple[int, int, int, int], ...]  # (row0, row1, col0, col1) per panel


def overlay(grey: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """grey, cam: same shape, float in [0, 1] -> RGB uint8."""
    base = np.repeat((np.clip(grey, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), COLORMAP)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    weight = (ALPHA * np.clip(cam, 0, 1))[..., None]
    return (base * (1 - weight) + heat * weight).astype(np.uint8)


def legend_class(r: JointResult) -> str:
    return f"AI overall class: {CLASS_WORDS[r.label]}"


def _header_lines(legend: Legend) -> list[tuple[str, tuple[int, int, int], float]]:
    """(text, colour, relative size); the answer first and largest."""
    r = legend.result
    lines = [
        (legend_class(r), _YELLOW, 1.3),
        (
            f"P(abnormal) {100 * r.p_abnormal:.1f}% (model A)   P(COVID-19) {100 * r.p_covid:.1f}% (model B)",
            _WHITE,
            1.0,
        ),
    ]
    if r.models_disagree:
        lines.append(("Models disagree: B says COVID-19, A says normal", _YELLOW, 1.0))
    if legend.trained:
        lines.append((f"Model: {legend.model_text}", _WHITE, 1.0))
    else:
        lines.append((UNTRAINED_MODEL_TEXT, _RED, 1.15))
    lines.append((f"Computed from {legend.analysed_image}", _WHITE, 1.0))
    lines += [(f"Note: {note}", _WHITE, 1.0) for note in legend.notes]
    lines.append((NOT_FOR_DIAGNOSIS, _WHITE, 1.0))
    return lines


def _width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, _FONT, scale, _thickness(scale))[0][0]


def _thickness(scale: float) -> int:
    return 1 if scale < 0.6 else 2


def _wrap(text: str, scale: float, budget: int) -> list[str]:
    """Break at spaces so each piece fits budget pixels (a single long word stays whole)."""
    words, out, line = text.split(" "), [], ""
    for word in words:
        candidate = f"{line} {word}" if line else word
        if line and _width(candidate, scale) > budget:
            out.append(line)
            line = word
        else:
            line = candidate
    return out + [line]


def _fit_scale(lines, budget: int, max_side: int) -> float:
    """One font scale for the header: the longest line fits budget, within readable bounds."""
    longest = max(_width(text, 1.0) * size for text, _, size in lines)
    return float(np.clip(budget / longest, 0.35, max(0.35, _top_scale(max_side))))


def _top_scale(max_side: int) -> float:
    return 0.9 * max_side / 1024  # the header font is no larger than at 1024 px


def _line_height(scale: float) -> int:
    return int(30 * scale) + 10


def _text_block(lines, width: int, scale: float, budget: int) -> list[tuple[str, tuple[int, int, int], float]]:
    """Header lines at their sizes, wrapped to budget."""
    out = []
    for text, colour, size in lines:
        out += [(piece, colour, scale * size) for piece in _wrap(text, scale * size, budget)]
    return out


def _draw_centred(img, text, centre_x: int, baseline: int, scale: float, colour) -> None:
    t = _thickness(scale)
    x = int(centre_x - _width(text, scale) / 2)
    cv2.putText(img, text, (x, baseline), _FONT, scale, (0, 0, 0), t + 2, cv2.LINE_AA)
    cv2.putText(img, text, (x, baseline), _FONT, scale, colour, t, cv2.LINE_AA)


def _scale_for(shape: tuple[int, int], max_w: float, max_h: float) -> float:
    rows, cols = shape
    return min(1.0, max_w / cols, max_h / rows)


def _resize(img: np.ndarray, scale: float, smooth: bool = False) -> np.ndarray:
    if scale >= 1.0:
        return img
    rows, cols = img.shape[:2]
    # INTER_AREA keeps the radiograph free of aliasing; a CAM is an upsampled, smooth
    # field, so bilinear (about 15x faster on a 2k x 2k float image) loses nothing there.
    interpolation = cv2.INTER_LINEAR if smooth else cv2.INTER_AREA
    return cv2.resize(img, (max(1, round(cols * scale)), max(1, round(rows * scale))), interpolation=interpolation)


def _plan(shape, n: int, lines, captions, max_side: int):
    """Panel scale, canvas width, header block and caption scale so that the long side <= max_side."""
    top, bottom, side = (round(f * max_side) for f in (TOP_MARGIN, BOTTOM_MARGIN, SIDE_MARGIN))
    chrome_w = 2 * side + (n - 1) * side + n  # + n: a panel's size is rounded up by at most 1 px
    # Never narrower than the header needs at full size (a tall fused panel would otherwise
    # squeeze the text into many small wrapped lines): the panels are centred in the width.
    text_w = min(max_side, int(max(_width(t, 1.0) * size for t, _, size in lines) * _top_scale(max_side) / TEXT_WIDTH))
    scale = _scale_for(shape, (max_side - chrome_w) / n, max_side - 1)
    for _ in range(4):  # the text depends on the width, the width on the room the text leaves
        panel_w = max(1, round(shape[1] * scale))
        width = max(n * panel_w + chrome_w, text_w)
        budget = int(TEXT_WIDTH * width)
        font = _fit_scale(lines, budget, max_side)
        block = _text_block(lines, width, font, budget)
        cap_scale = min(font, min(0.95 * panel_w / _width(c, 1.0) for c in captions))
        text_h = sum(_line_height(s) for _, _, s in block) + _line_height(cap_scale) + 6
        room = max_side - top - bottom - text_h - 1
        fitted = min(scale, _scale_for(shape, (max_side - chrome_w) / n, room))
        if fitted >= scale - 1e-9:
            return scale, width, block, cap_scale, (top, bottom, side)
        scale = fitted
    return scale, width, block, cap_scale, (top, bottom, side)


def render(
    grey: np.ndarray,
    cam_a: np.ndarray,
    cam_b: np.ndarray,
    legend: Legend,
    panels: str = "per-model",
    max_side: int = 1024,
) -> tuple[np.ndarray, Layout]:
    """The picture (RGB uint8, long side <= max_side, text included) and where its parts are.

    grey: the radiograph in [0, 1] with VOI and polarity applied (1 = displayed white);
    cam_a, cam_b: Grad-CAMs of model A and B on the same grid, in [0, 1].
    panels: "per-model" (A and B side by side) or "fused" (one panel, max of both).
    """
    if panels not in PANEL_MODES:
        raise ValueError(f"panels = {panels!r}: expected one of {', '.join(PANEL_MODES)}")
    n = 1 if panels == "fused" else 2
    captions = ["Grad-CAM of models A and B (max)"] if n == 1 else ["Model A: abnormal", "Model B: COVID-19"]
    grey = np.asarray(grey, dtype=np.float32)
    scale, width, block, cap_scale, (top, bottom, side) = _plan(
        grey.shape, n, _header_lines(legend), captions, max_side
    )
    # Shrink before blending: the source can be 3000 px, a panel is a few hundred.
    grey = _resize(grey, scale)
    cam_a, cam_b = (_resize(np.asarray(m, dtype=np.float32), scale, smooth=True) for m in (cam_a, cam_b))
    tiles = [overlay(grey, np.maximum(cam_a, cam_b))] if n == 1 else [overlay(grey, cam_a), overlay(grey, cam_b)]
    panel_h, panel_w = tiles[0].shape[:2]
    text_h = sum(_line_height(s) for _, _, s in block) + _line_height(cap_scale) + 6
    canvas = np.zeros((top + text_h + panel_h + bottom, width, 3), dtype=np.uint8)
    y = top
    for text, colour, s in block:
        y += _line_height(s)
        _draw_centred(canvas, text, width // 2, y - 8, s, colour)
    y += _line_height(cap_scale) + 6
    boxes = []
    left = (width - n * panel_w - (n - 1) * side) // 2
    for i, (tile, caption) in enumerate(zip(tiles, captions, strict=True)):
        x0 = left + i * (panel_w + side)
        _draw_centred(canvas, caption, x0 + panel_w // 2, y - 8, cap_scale, _WHITE)
        canvas[y : y + panel_h, x0 : x0 + panel_w] = tile
        boxes.append((y, y + panel_h, x0, x0 + panel_w))
    layout = Layout(canvas.shape[:2], (top, y), (side, width - side), tuple(boxes))
    return np.ascontiguousarray(canvas), layout


def render_secondary_capture(
    grey: np.ndarray,
    cam_a: np.ndarray,
    cam_b: np.ndarray,
    legend: Legend,
    panels: str = "per-model",
    max_side: int = 1024,
) -> np.ndarray:
    """The picture alone (see render)."""
    return render(grey, cam_a, cam_b, legend, panels, max_side)[0]
