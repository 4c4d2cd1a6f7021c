"""Labelled radiographs on disk -> validated samples -> letterboxed squares in memory.

Two layouts:
  * a folder with manifest.csv (columns image, patient_id, label; image is a PNG/JPEG/DICOM
    path relative to the folder);
  * a folder of DICOM files plus a labels CSV keyed by SOP Instance UID
    (columns sop_instance_uid, label, optional patient_id; else the file's PatientID).

Every problem row (missing file, unknown label, empty patient, unreadable image) becomes a
BadRow carrying the CSV line number; callers refuse to train on them unless told to skip.
Decoding and letterboxing use cxr_node's functions, so training sees exactly what serving sees.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from cxr_node.analysis.preprocess import square_input
from cxr_node.decoding.pixels import PixelDataError, read_image
from cxr_node.decoding.reduced import Resolution

LABELS = ("normal", "pathological", "covid")
MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class Sample:
    image: Path  # absolute path
    name: str  # as written in the CSV (image path or SOP Instance UID)
    patient_id: str
    label: str
    line: int  # line of the CSV that described it
    source: str = MANIFEST  # that CSV's file name


@dataclass(frozen=True)
class BadRow:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source} line {self.line}: {self.reason}"


class DataError(ValueError):
    """The data cannot be used as given; `bad_rows` lists every problem row."""

    def __init__(self, message: str, bad_rows: list[BadRow] | None = None) -> None:
        super().__init__(message)
        self.bad_rows = bad_rows or []


def _rows(csv_path: Path, required: tuple[str, ...]):
    """Yield (line number, row dict) for each data row; refuses a header lacking a required column."""
    try:
        fh = open(csv_path, newline="", encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DataError(f"{csv_path}: no such file") from exc
    with fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{csv_path} line 1: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
        reader.fieldnames = header
        for row in reader:
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}


def _check_label_patient(source: str, line: int, label: str, patient: str) -> BadRow | None:
    if label.lower() not in LABELS:
        return BadRow(source, line, f"unknown label {label!r} (expected one of {', '.join(LABELS)})")
    if not patient:
        return BadRow(source, line, "patient_id is empty (needed to split by patient)")
    return None


def read_manifest(folder: Path) -> tuple[list[Sample], list[BadRow]]:
    csv_path = folder / MANIFEST
    samples: list[Sample] = []
    bad: list[BadRow] = []
    seen: dict[Path, int] = {}  # image -> the line that listed it first
    for line, row in _rows(csv_path, ("image", "patient_id", "label")):
        name = row["image"]
        problem = _check_label_patient(MANIFEST, line, row["label"], row["patient_id"])
        if problem is None and not name:
            problem = BadRow(MANIFEST, line, "image is empty")
        path = (folder / name).resolve()
        if problem is None and not path.is_file():
            problem = BadRow(MANIFEST, line, f"image file {name} does not exist")
        if problem is None and path in seen:
            problem = BadRow(MANIFEST, line, f"image {name} is listed again (first on line {seen[path]})")
        if problem:
            bad.append(problem)
            continue
        seen[path] = line
        samples.append(Sample(path, name, row["patient_id"], row["label"].lower(), line))
    return samples, bad


def _index_dicom_folder(folder: Path) -> dict[str, tuple[Path, str]]:
    """SOP Instance UID -> (file, PatientID) for every DICOM file below `folder` (headers only)."""
    index: dict[str, tuple[Path, str]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "PatientID"])
        except (InvalidDicomError, OSError):
            continue  # not DICOM: labels CSV, README, thumbnails ...
        uid = str(ds.get("SOPInstanceUID", "")).strip()
        if uid:
            index.setdefault(uid, (path, str(ds.get("PatientID", "")).strip()))
    return index


def read_dicom_folder(folder: Path, labels_csv: Path) -> tuple[list[Sample], list[BadRow]]:
    index = _index_dicom_folder(folder)
    source = labels_csv.name
    samples: list[Sample] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}  # SOP Instance UID -> the line that listed it first
    for line, row in _rows(labels_csv, ("sop_instance_uid", "label")):
        uid = row["sop_instance_uid"]
        if uid not in index:
            bad.append(BadRow(source, line, f"no DICOM file with SOP Instance UID {uid!r} under {folder}"))
            continue
        path, dicom_patient = index[uid]
        patient = row.get("patient_id") or dicom_patient
        problem = _check_label_patient(source, line, row["label"], patient)
        if problem is None and uid in seen:
            problem = BadRow(source, line, f"SOP Instance UID {uid} is listed again (first on line {seen[uid]})")
        if problem:
            bad.append(problem)
            continue
        seen[uid] = line
        samples.append(Sample(path, uid, patient, row["label"].lower(), line, source))
    return samples, bad


def read_samples(folder: str | Path, labels_csv: str | Path | None = None) -> tuple[list[Sample], list[BadRow]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder does not exist")
    if labels_csv is not None:
        return read_dicom_folder(folder, Path(labels_csv))
    if not (folder / MANIFEST).is_file():
        raise DataError(f"{folder}: no {MANIFEST}; for a DICOM folder give the labels CSV (--labels)")
    return read_manifest(folder)


def subset_by_patient(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """About n images, whole patients only, each label keeping its share of the images."""
    if n <= 0 or n >= len(samples):
        return samples
    rng = np.random.default_rng(seed)
    by_patient: dict[str, list[Sample]] = {}
    for s in samples:
        by_patient.setdefault(s.patient_id, []).append(s)
    chosen: set[str] = set()
    for label in LABELS:
        quota = round(n * sum(s.label == label for s in samples) / len(samples))
        patients = sorted(p for p, ss in by_patient.items() if ss[0].label == label)
        taken = 0
        for i in rng.permutation(len(patients)):
            if taken >= max(quota, 1):
                break
            chosen.add(patients[i])
            taken += len(by_patient[patients[i]])
    return [s for s in samples if s.patient_id in chosen]


def decode_squares(
    samples: list[Sample],
    size: int,
    threads: int = 1,
    progress: Callable | None = None,
) -> tuple[np.ndarray, list[Sample], list[BadRow]]:
    """Read every image and letterbox it to size x size once (training re-reads nothing).

    Kept as float32, the runtime's own precision, so evaluation inside training gives the
    very probabilities `infer` gives (1616 images at 224 px take 324 MB).
    """

    # DICOM decoded as a node with the default SC size decodes it (decoding/reduced.py): same pixels.
    resolution = Resolution.serving(size)

    def load(sample: Sample) -> tuple[np.ndarray | None, BadRow | None]:
        try:
            img = read_image(sample.image, resolution)
            square, _ = square_input(img.pixels, size)
            return square, None
        except (PixelDataError, FileNotFoundError, ValueError, OSError) as exc:
            return None, BadRow(sample.source, sample.line, f"unreadable image: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        loaded: Iterable[tuple[np.ndarray | None, BadRow | None]] = pool.map(load, samples)
        if progress is not None:
            loaded = progress(loaded, total=len(samples))
        results = list(loaded)
    kept = [s for s, (sq, _) in zip(samples, results, strict=True) if sq is not None]
    bad = [b for _, b in results if b is not None]
    squares = np.stack([sq for sq, _ in results if sq is not None]) if kept else np.zeros((0, size, size), np.float32)
    return squares, kept, bad


@dataclass
class LoadedData:
    samples: list[Sample]
    squares: np.ndarray  # (N, S, S) float32 letterboxed, values in [0, 1]
    bad_rows: list[BadRow]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples])

    def counts(self) -> dict[str, int]:
        return {label: int(sum(s.label == label for s in self.samples)) for label in LABELS}


def refuse_or_skip(bad: list[BadRow], skip_bad_rows: bool, log: Callable[[str], None]) -> None:
    if not bad:
        return
    listing = "\n".join(f"  {b}" for b in bad[:50]) + (f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else "")
    if not skip_bad_rows:
        raise DataError(f"{len(bad)} bad row(s); fix them or pass --skip-bad-rows:\n{listing}", bad)
    log(f"skipping {len(bad)} bad row(s):\n{listing}")


def load_data(
    folder: str | Path,
    size: int,
    *,
    labels_csv: str | Path | None = None,
    skip_bad_rows: bool = False,
    subset: int = 0,
    seed: int = 0,
    threads: int = 1,
    progress: Callable | None = None,
    log: Callable[[str], None] = print,
) -> LoadedData:
    samples, bad = read_samples(folder, labels_csv)
    samples = subset_by_patient(samples, subset, seed)
    squares, samples, unreadable = decode_squares(samples, size, threads, progress)
    bad = sorted(bad + unreadable, key=lambda b: b.line)
    refuse_or_skip(bad, skip_bad_rows, log)
    if not samples:
        raise DataError(f"{folder}: no usable images")
    return LoadedData(samples, squares, bad)
