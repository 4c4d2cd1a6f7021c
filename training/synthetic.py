"""A small synthetic data set in manifest format, for tests and for trying the pipeline
without radiographs. Each label draws a different pattern, so there is something to learn;
nothing about it resembles a chest X-ray."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from training.data import LABELS, MANIFEST


def _draw(label: str, size: int, rng: np.random.Generator) -> np.ndarray:
    img = rng.normal(0.35, 0.05, (size, size))
    yy, xx = np.mgrid[0:size, 0:size] / size
    if label == "pathological":
        cy, cx = rng.uniform(0.3, 0.7, 2)
        img += 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
    elif label == "covid":
        img += 0.25 * (np.sin(2 * np.pi * (6 + rng.uniform(-1, 1)) * xx) > 0)
    return np.clip(img, 0, 1)


def write_synthetic(
    folder: str | Path,
    patients_per_label: int = 4,
    images_per_patient: int = 2,
    size: int = 48,
    seed: int = 0,
) -> Path:
    """Write images/*.png and manifest.csv (image, patient_id, label) under `folder`."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for label in LABELS:
        for p in range(patients_per_label):
            patient = f"{label[:3]}-{p}"
            for k in range(images_per_patient):
                name = f"images/{patient}-{k}.png"
                cv2.imwrite(str(folder / name), (_draw(label, size, rng) * 255).astype(np.uint8))
                rows.append((name, patient, label))
    with open(folder / MANIFEST, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "patient_id", "label"])
        w.writerows(rows)
    return folder
