"""Does a decoded image hold enough to be read? Checked after the grey-scale pipeline, before analysis.

An image that decodes can still hold nothing a model could read: every pixel the same, a
1 x 1 or 3 x 40000 sliver, NaN values, two grey levels. The models would give it a class
anyway (the softmax always sums to 1), so such an image gets no answer: it is `not_analysable`
with a sentence naming what was measured and the setting it failed ([image_check] in the
node config). The limits are guesses made from measured radiographs (docs/reliability.md,
"How much an image must hold"); `python -m cxr_node.benchmarks.information DIR...` measures more.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from cxr_node import validation as V
from cxr_node.errors import ConfigError, NotAnalysable

if TYPE_CHECKING:  # the config imports this module: it stays free of numpy, pydicom and OpenCV
    from cxr_node.decoding.pixels import FloatImage, ImageInfo


@dataclass(frozen=True)
class InformationLimits:
    """[image_check] settings; each check names its key in the reason it gives."""

    # Shorter side in pixels, as sent: a floor against what is no picture at all (1 x 1, slivers),
    # not a judgement of resolution. Measured: >= 156 px (downscaled public figure crops),
    # 1841 px (pydicom-data's CR); detectors give >= 1000. The model reads 224 px.
    min_side: int = 32
    # Longer side / shorter side. Measured: <= 2.24 (public crops), 1.06 (CR); detectors 1-1.25.
    max_aspect_ratio: float = 3.0
    # Share of pixels not marked as padding (PixelPaddingValue): a frame of padding around a
    # small image leaves it too little to read.
    min_valid_fraction: float = 0.05
    # 99th - 1st percentile of the displayed grey values (0..1) of the valid pixels.
    # Measured: >= 0.24 on 1146 real radiographs and 42 out-of-domain images, 0.69 on the CR.
    min_spread: float = 0.05
    # Distinct 8-bit display levels among the valid pixels (of 256). Measured: >= 30
    # (a posterised but readable public image), 1st percentile 131.
    min_grey_levels: int = 16
    enabled: bool = True


DEFAULT_LIMITS = InformationLimits()


def _fraction(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ConfigError(f"{key}: {v!r} must be a number from 0 up to (not including) 1")
    return float(v)


def _ratio(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1:
        raise ConfigError(f"{key}: {v!r} must be a number >= 1 (longer side / shorter side)")
    return float(v)


_CHECKS = {
    "enabled": V.boolean,
    "min_side": V.int_range(1, 100_000),
    "max_aspect_ratio": _ratio,
    "min_valid_fraction": _fraction,
    "min_spread": _fraction,
    "min_grey_levels": V.int_range(1, 256),
}


def parse_image_check(table: Any, section: str = "image_check") -> InformationLimits:
    """[image_check] from TOML; every error names the key."""
    if not isinstance(table, dict):
        raise ConfigError(f"{section}: must be a table")
    assert set(_CHECKS) == {f.name for f in fields(InformationLimits)}
    values = {}
    for key, value in table.items():
        if key not in _CHECKS:
            raise ConfigError(f"{section}.{key}: unknown key (known: {', '.join(_CHECKS)})")
        values[key] = _CHECKS[key](f"{section}.{key}", value)
    return InformationLimits(**values)


def information_problem(info: ImageInfo, limits: InformationLimits = DEFAULT_LIMITS) -> NotAnalysable | None:
    """The first check the image fails, as a NotAnalysable to raise, or None when it holds enough."""
    if not limits.enabled:
        return None
    side = min(info.rows, info.cols)
    if side < limits.min_side:
        return NotAnalysable(
            "too-small",
            f"image {info.rows} x {info.cols} pixels: its shorter side {side} is under "
            f"image_check.min_side {limits.min_side}",
        )
    if info.aspect_ratio > limits.max_aspect_ratio:
        return NotAnalysable(
            "aspect-ratio",
            f"image {info.rows} x {info.cols} pixels: its sides' ratio {info.aspect_ratio:.1f} is over "
            f"image_check.max_aspect_ratio {limits.max_aspect_ratio:g}",
        )
    if info.nonfinite:
        return NotAnalysable(
            "not-finite",
            f"{info.nonfinite} pixel(s) are not finite numbers (NaN or infinite) after the grey-scale pipeline",
        )
    if info.valid_fraction < limits.min_valid_fraction:
        return NotAnalysable(
            "padding",
            f"only {100 * info.valid_fraction:.1f} % of the pixels are image, the rest padding "
            f"(PixelPaddingValue): under image_check.min_valid_fraction {limits.min_valid_fraction:g}",
        )
    if info.spread < limits.min_spread:
        what = "every pixel shows the same grey" if info.spread == 0 else "almost no contrast"
        return NotAnalysable(
            "no-contrast",
            f"{what}: the 1st-99th percentile spread of the displayed values is {info.spread:.3f}, "
            f"under image_check.min_spread {limits.min_spread:g}",
        )
    if info.grey_levels < limits.min_grey_levels:
        return NotAnalysable(
            "few-grey-levels",
            f"only {info.grey_levels} distinct grey level(s) of 256 are shown, under "
            f"image_check.min_grey_levels {limits.min_grey_levels}",
        )
    return None


def check_information(image: FloatImage, limits: InformationLimits = DEFAULT_LIMITS) -> None:
    """Raise NotAnalysable when the image holds too little to be read (see information_problem)."""
    if image.info is None:  # made by hand, not by the pipeline: nothing was measured
        return
    problem = information_problem(image.info, limits)
    if problem is not None:
        raise problem


__all__ = ["DEFAULT_LIMITS", "InformationLimits", "check_information", "information_problem", "parse_image_check"]
