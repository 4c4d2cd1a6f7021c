"""Measure how much real images hold, to set and justify the [image_check] limits.

    python -m cxr_node.benchmarks.information DIR_OR_FILE... [--json]

Per argument (a folder is searched for PNG/JPEG/DICOM files): the distribution of each
measure the check uses (shorter side, aspect ratio, valid fraction, spread, grey levels) and
how many images the default limits would call not analysable, with the first reason of each.
The figures in docs/reliability.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from cxr_node.decoding.information import DEFAULT_LIMITS, information_problem
from cxr_node.decoding.pixels import ImageInfo, read_image
from cxr_node.errors import NotAnalysable

SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
QUANTILES = (0.0, 0.01, 0.05, 0.5, 0.95, 1.0)


def image_files(arg: Path) -> list[Path]:
    if arg.is_file():
        return [arg]
    return sorted(p for p in arg.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def measures(info: ImageInfo) -> dict[str, float]:
    return {
        "min_side": min(info.rows, info.cols),
        "aspect_ratio": info.aspect_ratio,
        "valid_fraction": info.valid_fraction,
        "spread": info.spread,
        "grey_levels": info.grey_levels,
    }


def summarise(paths: list[Path]) -> dict:
    rows: list[dict[str, float]] = []
    flagged: Counter[str] = Counter()
    examples: dict[str, str] = {}
    unreadable = 0
    for path in paths:
        try:
            image = read_image(path)
        except NotAnalysable as exc:
            flagged[exc.code] += 1
            examples.setdefault(exc.code, str(exc))
            continue
        except (ValueError, OSError):
            unreadable += 1
            continue
        assert image.info is not None
        rows.append(measures(image.info))
        problem = information_problem(image.info, DEFAULT_LIMITS)
        if problem is not None:
            flagged[problem.code] += 1
            examples.setdefault(problem.code, f"{path.name}: {problem}")
    out: dict = {"images": len(rows), "unreadable": unreadable, "flagged": dict(flagged), "examples": examples}
    for key in ("min_side", "aspect_ratio", "valid_fraction", "spread", "grey_levels"):
        values = np.array([r[key] for r in rows], dtype=np.float64)
        if values.size:
            out[key] = {f"q{int(q * 100):02d}": round(float(np.quantile(values, q)), 4) for q in QUANTILES}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = {str(p): summarise(image_files(p)) for p in args.paths}
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
        return 0
    for name, s in report.items():
        print(f"{name}: {s['images']} images, {s['unreadable']} unreadable, flagged by the defaults: {s['flagged']}")
        for key in ("min_side", "aspect_ratio", "valid_fraction", "spread", "grey_levels"):
            if key in s:
                print(f"  {key:15s} " + "  ".join(f"{q} {v:g}" for q, v in s[key].items()))
        for code, text in s["examples"].items():
            print(f"  e.g. [{code}] {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
