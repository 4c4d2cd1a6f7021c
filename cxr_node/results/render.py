"""Draw the Grad-CAM picture: radiograph + heatmap panels + a burned-in legend, as 8-bit RGB."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxr_node.analysis.fusion import JointResult

UNTRAINED_WARNING = "UNTRAINED MODEL - NOT FOR CLINICAL USE"
NOT_FOR_DIAGNOSIS = "AI result - not for diagnostic use"
# Inferno is perceptually uniform and stays readable on grey; the overlay is weighted
# by the CAM itself so cold regions show the radiograph untouched.
COLORMAP = cv2.COLORMAP_INFERNO
ALPHA = 0.55
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE, _YELLOW, _RED = (255, 255, 255), (255, 220, 0), (255, 64, 64)


@dataclass(frozen=True)
class Legend:
    result: JointResult
    model_label: str
    trained: bool


def overlay(grey: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """grey, cam: same shape, float in [0, 1] -> RGB uint8."""
    base = np.repeat((np.clip(grey, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), COLORMAP)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    weight = (ALPHA * np.clip(cam, 0, 1))[..., None]
    return (base * (1 - weight) + heat * weight).astype(np.uint8)


def _text(img, text, org, scale, color, thickness):
    cv2.putText(img, text, org, _FONT, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, _FONT, scale, color, thickness, cv2.LINE_AA)


PANEL_MODES = ("per-model", "fused")


def _legend_lines(legend: Legend) -> list[tuple[str, tuple[int, int, int]]]:
    r = legend.result
    lines = [
        (legend_class(r), _YELLOW),
        (f"P(abnormal) {100 * r.p_abnormal:.1f}% (model A)   P(COVID-19) {100 * r.p_covid:.1f}% (model B)", _WHITE),
    ]
    if r.models_disagree:
        lines.append(("Models disagree: B says COVID-19, A says normal", _YELLOW))
    lines.append((f"Model {legend.model_label}", _WHITE))
    lines.append((NOT_FOR_DIAGNOSIS, _WHITE))
    if not legend.trained:
        lines.append((UNTRAINED_WARNING, _RED))
    return lines


def _banner(lines, width: int) -> np.ndarray:
    """Legend rows under the panels; font scaled so the longest row fits the width."""
    longest = max(cv2.getTextSize(text, _FONT, 1.0, 2)[0][0] for text, _ in lines)
    scale = float(np.clip((width - 20) / longest, 0.3, 0.9))
    thickness = 1 if scale < 0.6 else 2
    line_h = int(32 * scale) + 8
    banner = np.zeros((line_h * len(lines) + 8, width, 3), dtype=np.uint8)
    for i, (text, color) in enumerate(lines):
        _text(banner, text, (10, line_h * (i + 1) - 4), scale, color, thickness)
    return banner


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


def render_secondary_capture(
    grey: np.ndarray,
    cam_a: np.ndarray,
    cam_b: np.ndarray,
    legend: Legend,
    panels: str = "per-model",
    max_side: int = 1024,
) -> np.ndarray:
    """Return an RGB uint8 image (rows, cols, 3) whose long side, legend included, is <= max_side.

    grey: the radiograph in [0, 1] with VOI and polarity applied (1 = displayed white);
    cam_a, cam_b: Grad-CAMs of model A and B on the same grid, in [0, 1].
    panels: "per-model" (A and B side by side) or "fused" (one panel, max of both).
    """
    if panels not in PANEL_MODES:
        raise ValueError(f"panels = {panels!r}: expected one of {', '.join(PANEL_MODES)}")
    r = legend.result
    n = 1 if panels == "fused" else 2
    lines = _legend_lines(legend)
    grey = np.asarray(grey, dtype=np.float32)
    # Panel size: first against the width, then again leaving room for the legend.
    scale = _scale_for(grey.shape, max_side / n, max_side)
    width = max(1, round(grey.shape[1] * scale)) * n
    banner_h = _banner(lines, width).shape[0]
    if round(grey.shape[0] * scale) + banner_h > max_side:
        scale = _scale_for(grey.shape, max_side / n, max_side - banner_h)
    # Shrink before blending: the source can be 3000 px, a panel is a few hundred.
    grey = _resize(grey, scale)
    cam_a, cam_b = (_resize(np.asarray(m, dtype=np.float32), scale, smooth=True) for m in (cam_a, cam_b))
    if panels == "fused":
        tiles = [(overlay(grey, np.maximum(cam_a, cam_b)), "Grad-CAM A + B (max)")]
    else:
        tiles = [
            (overlay(grey, cam_a), f"A: P(abnormal) {100 * r.p_abnormal:.1f}%"),
            (overlay(grey, cam_b), f"B: P(COVID-19) {100 * r.p_covid:.1f}%"),
        ]
    for tile, caption in tiles:
        cap_scale = float(np.clip((tile.shape[1] - 16) / cv2.getTextSize(caption, _FONT, 1.0, 2)[0][0], 0.3, 0.8))
        _text(tile, caption, (8, int(30 * cap_scale) + 6), cap_scale, _WHITE, 1 if cap_scale < 0.6 else 2)
    canvas = np.concatenate([t for t, _ in tiles], axis=1)
    return np.ascontiguousarray(np.concatenate([canvas, _banner(lines, canvas.shape[1])], axis=0))


def legend_class(r: JointResult) -> str:
    return f"AI class: {r.label.value}"
