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


def _fit(img: np.ndarray, max_side: int) -> np.ndarray:
    rows, cols = img.shape[:2]
    scale = min(1.0, max_side / max(rows, cols))
    if scale >= 1.0:
        return img
    return cv2.resize(img, (max(1, round(cols * scale)), max(1, round(rows * scale))), interpolation=cv2.INTER_AREA)


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


def render_secondary_capture(
    grey: np.ndarray,
    cam_a: np.ndarray,
    cam_b: np.ndarray,
    legend: Legend,
    panels: str = "per-model",
    max_side: int = 1024,
) -> np.ndarray:
    """Return an RGB uint8 image (rows, cols, 3) no larger than max_side on its long side."""
    r = legend.result
    per_tile = max_side // (1 if panels == "fused" else 2)
    # Shrink before blending: the source can be 3000 px, the tile is at most 1024.
    grey, cam_a, cam_b = (_fit(np.asarray(m, dtype=np.float32), per_tile) for m in (grey, cam_a, cam_b))
    if panels == "fused":
        fitted = [(overlay(grey, np.maximum(cam_a, cam_b)), "Grad-CAM A+B (max)")]
    else:
        fitted = [
            (overlay(grey, cam_a), f"A: P(abnormal) {100 * r.p_abnormal:.1f}%"),
            (overlay(grey, cam_b), f"B: P(COVID-19) {100 * r.p_covid:.1f}%"),
        ]
    height = max(t.shape[0] for t, _ in fitted)
    row_imgs = []
    for t, caption in fitted:
        pad = np.zeros((height, t.shape[1], 3), dtype=np.uint8)
        pad[: t.shape[0]] = t
        scale = max(0.4, t.shape[1] / 900)
        _text(pad, caption, (8, int(30 * scale) + 6), scale, _WHITE, max(1, round(scale * 1.5)))
        row_imgs.append(pad)
    canvas = np.concatenate(row_imgs, axis=1)

    lines = [(f"{legend_class(r)}   P(abnormal) {100 * r.p_abnormal:.1f}%   P(COVID-19) {100 * r.p_covid:.1f}%", _YELLOW)]
    if r.models_disagree:
        lines.append(("Models disagree: B says COVID-19, A says normal", _YELLOW))
    lines.append((f"Model {legend.model_label}   {NOT_FOR_DIAGNOSIS}", _WHITE))
    if not legend.trained:
        lines.append((UNTRAINED_WARNING, _RED))
    scale = max(0.45, canvas.shape[1] / 1400)
    line_h = int(34 * scale) + 8
    banner = np.zeros((line_h * len(lines) + 10, canvas.shape[1], 3), dtype=np.uint8)
    for i, (text, color) in enumerate(lines):
        _text(banner, text, (10, line_h * (i + 1) - 4), scale, color, max(1, round(scale * 1.6)))
    return np.ascontiguousarray(np.concatenate([canvas, banner], axis=0))


def legend_class(r: JointResult) -> str:
    return f"AI class: {r.label.value}"
