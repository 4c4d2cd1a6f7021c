"""`cxr-node bench decode-agreement`: do the models answer the same from reduced and full decoding?

The development set's images (manifest.csv: image, label) are converted to DICOM as the units
send them, in a work folder outside the repository (kept, so a re-run converts nothing):
  j2k16  - JPEG 2000 lossless, 16 bits stored (MONOCHROME2, a full-range window);
  jpeg8  - JPEG baseline, 8 bits (the syntax reduced by DCT scaling);
  jpeg12 - JPEG extended, 12 bits (DCMTK dcmcjpeg +ee; decoded in full: no 12-bit DCT scaling).
The set's images are 8-bit and at most 512 px; a detector's are 2-3k px at 12-16 bits. So each
is enlarged `upscale` times (bicubic) and spread over the stored range first; the enlargement
carries no detail the original lacks, which the report states next to the figures.

Each DICOM file is decoded three ways through the node's one decode path (pixels.read_image):
full (resolution None), serving (Resolution.serving(bundle input, sc_max_side): what the node
decodes) and model (Resolution(bundle input): the coarsest any use allows), both models are run
on each, and per syntax and way the report gives mean and max |delta p| of each model against
full, each model's AUC (A: abnormal = label not normal; B: covid) and its change, and how many
images keep their joint class.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from cxr_node.results.sc_size import SC_MAX_SIDE

SYNTAXES = ("j2k16", "jpeg8", "jpeg12")
WAYS = ("full", "serving", "model")


@dataclass(frozen=True)
class Item:
    source: Path
    label: str
    name: str


def read_manifest(folder: Path, limit: int) -> list[Item]:
    """Up to `limit` images, the same share of each label, spread evenly over the manifest."""
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no such file (a folder with manifest.csv: image, label)")
    with manifest.open(newline="", encoding="utf-8") as fh:
        rows = [(r["image"], r["label"]) for r in csv.DictReader(fh)]
    by_label: dict[str, list[tuple[str, str]]] = {}
    for image, label in rows:
        by_label.setdefault(label, []).append((image, label))
    per_label = max(1, limit // max(1, len(by_label))) if limit else 0
    items = []
    for label, group in sorted(by_label.items()):
        picks = (
            group
            if not per_label or per_label >= len(group)
            else [group[i] for i in np.linspace(0, len(group) - 1, per_label).round().astype(int)]
        )
        for image, _ in picks:
            items.append(Item((folder / image).resolve(), label, Path(image).stem))
    return items


def _enlarge(path: Path, upscale: int) -> np.ndarray:
    """The 8-bit image enlarged `upscale` times, float in [0, 1]."""
    raw = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        raise ValueError(f"{path}: not a readable image")
    img: np.ndarray = raw.astype(np.float32) / 255.0
    if upscale > 1:
        img = cv2.resize(img, (raw.shape[1] * upscale, raw.shape[0] * upscale), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0.0, 1.0)


def _dataset(stored: np.ndarray, bits_stored: int, name: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    cr = UID("1.2.840.10008.5.1.4.1.1.1")  # CR Image Storage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = cr
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = cr
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = name[:64], "Bench^Agreement", "CR"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    top = 2**bits_stored
    ds.WindowCenter, ds.WindowWidth = top / 2, top  # the whole stored range, as a unit's default
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def convert(item: Item, syntax: str, work: Path, upscale: int) -> Path:
    """The item as a DICOM file of `syntax` in work/<syntax>/ (made once, reused afterwards)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    out = work / syntax / f"{item.label}-{item.name}.dcm"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    img = _enlarge(item.source, upscale)
    partial = out.with_suffix(".part")
    if syntax == "j2k16":
        ds = _dataset(np.round(img * 65535).astype(np.uint16), 16, item.name)
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        ds.save_as(partial, enforce_file_format=True)
    elif syntax == "jpeg8":
        stored = np.round(img * 255).astype(np.uint8)
        ok, jpg = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise RuntimeError(f"{item.source}: JPEG encoding failed")
        ds = _dataset(stored, 8, item.name)
        ds.PixelData = encapsulate([jpg.tobytes()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(partial, enforce_file_format=True)
    elif syntax == "jpeg12":
        dcmcjpeg = shutil.which("dcmcjpeg")
        if dcmcjpeg is None:
            raise RuntimeError("dcmcjpeg not installed (Debian package dcmtk): no 12-bit JPEG encoder")
        plain = out.with_suffix(".raw.dcm")
        _dataset(np.round(img * 4095).astype(np.uint16), 12, item.name).save_as(plain, enforce_file_format=True)
        # +ee: JPEG extended (process 4, 12 bit), quality 90 like a unit's lossy setting
        subprocess.run([dcmcjpeg, "+ee", "+q", "90", str(plain), str(partial)], check=True, capture_output=True)
        plain.unlink()
    else:
        raise ValueError(f"syntax {syntax!r}: expected one of {', '.join(SYNTAXES)}")
    os.replace(partial, out)
    return out


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None without both classes."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order), dtype=np.float64)
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def _probabilities(
    analyzer, paths: list[Path], resolution, batch: int
) -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
    from cxr_node.decoding.pixels import read_image

    p_abn, p_cov, joint, factors = [], [], [], []
    for start in range(0, len(paths), batch):
        images = [read_image(p, resolution) for p in paths[start : start + batch]]
        factors += [im.reduction for im in images]
        for a in analyzer.analyse([im.pixels for im in images]):
            p_abn.append(a.result.p_abnormal)
            p_cov.append(a.result.p_covid)
            joint.append(a.result.label.value)
    return np.array(p_abn), np.array(p_cov), joint, factors


def _compare(full, other, labels: np.ndarray) -> dict:
    (fa, fc, fj, _), (oa, oc, oj, factors) = full, other
    abnormal, covid = labels != "normal", labels == "covid"
    out: dict = {"reduction": sorted(set(factors))}
    for name, f, o, positive in (("model_a", fa, oa, abnormal), ("model_b", fc, oc, covid)):
        d = np.abs(o - f)
        auc_full, auc_other = auc(f, positive), auc(o, positive)
        out[name] = {
            "mean_abs_dp": round(float(d.mean()), 6),
            "max_abs_dp": round(float(d.max()), 6),
            "auc_full": None if auc_full is None else round(auc_full, 5),
            "auc": None if auc_other is None else round(auc_other, 5),
            "auc_change": None if auc_full is None or auc_other is None else round(auc_other - auc_full, 5),
        }
    same = sum(a == b for a, b in zip(fj, oj, strict=True))
    out["joint_class_agreement"] = round(same / len(fj), 5)
    out["joint_class_changed"] = len(fj) - same
    return out


def run_agreement_bench(
    *,
    data: Path,
    models: Path,
    work: Path,
    limit: int = 120,
    upscale: int = 4,
    syntaxes: tuple[str, ...] = SYNTAXES,
    sc_max_side: int = SC_MAX_SIDE,
    batch: int = 8,
    extra: tuple[Path, ...] = (),
    progress: Callable[[str], None] | None = None,
) -> dict:
    from cxr_node.analysis.bundle import load_bundle
    from cxr_node.analysis.engine import Analyzer
    from cxr_node.decoding.reduced import Resolution

    say = progress or (lambda m: None)
    started, load_start = time.perf_counter(), os.getloadavg()
    bundle = load_bundle(models)
    analyzer = Analyzer(bundle, "cpu")
    ways = {
        "full": None,
        "serving": Resolution.serving(bundle.input_size, sc_max_side),
        "model": Resolution(bundle.input_size),
    }
    items = read_manifest(Path(data), limit)
    labels = np.array([it.label for it in items])
    per_syntax: dict[str, dict] = {}
    for syntax in syntaxes:
        say(f"{syntax}: converting {len(items)} images (reused when present in {work / syntax})")
        paths = [convert(it, syntax, Path(work), upscale) for it in items]
        say(f"{syntax}: decoding and analysing {len(paths)} images x {len(ways)} ways")
        probs = {way: _probabilities(analyzer, paths, res, batch) for way, res in ways.items()}
        per_syntax[syntax] = {way: _compare(probs["full"], probs[way], labels) for way in ("serving", "model")}
        per_syntax[syntax]["images"] = len(paths)
    real = {}
    for path in extra:  # real radiographs (e.g. RG1_J2KR): probabilities only, no label
        probs = {way: _probabilities(analyzer, [path], res, 1) for way, res in ways.items()}
        real[path.name] = {
            way: {
                "p_abnormal": round(float(p[0][0]), 6),
                "p_covid": round(float(p[1][0]), 6),
                "class": p[2][0],
                "reduction": p[3][0],
            }
            for way, p in probs.items()
        }
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "data": str(data),
        "models": str(models),
        "model_input": bundle.input_size,
        "sc_max_side": sc_max_side,
        "upscale": upscale,
        "labels": {str(lab): int((labels == lab).sum()) for lab in sorted(set(labels))},
        "syntaxes": per_syntax,
        "real_images": real,
        "cpu_count": os.cpu_count(),
        "load_avg_start": [round(v, 2) for v in load_start],
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def report(r: dict) -> str:
    lines = [
        f"{sum(r['labels'].values())} images {r['labels']} of {r['data']}, enlarged x{r['upscale']}, "
        f"bundle {r['models']} (input {r['model_input']} px), SC {r['sc_max_side']} px, {r['date']}",
        f"{'syntax':<7} {'way':<8} {'1/f':<7} {'A mean|dp|':>10} {'A max|dp|':>9} {'A AUC full->':>13} "
        f"{'dAUC':>8} {'B mean|dp|':>10} {'B max|dp|':>9} {'B AUC full->':>13} {'dAUC':>8} {'joint same':>10}",
    ]
    for syntax, ways in r["syntaxes"].items():
        for way in ("serving", "model"):
            w = ways[way]
            a, b = w["model_a"], w["model_b"]
            lines.append(
                f"{syntax:<7} {way:<8} {','.join(map(str, w['reduction'])):<7} {a['mean_abs_dp']:>10.5f} {a['max_abs_dp']:>9.5f} "
                f"{_auc(a):>13} {_d(a):>8} {b['mean_abs_dp']:>10.5f} {b['max_abs_dp']:>9.5f} {_auc(b):>13} {_d(b):>8} "
                f"{100 * w['joint_class_agreement']:>9.1f}%"
            )
    for name, ways in r["real_images"].items():
        lines.append(
            f"{name}: "
            + "; ".join(
                f"{k} 1/{v['reduction']} pA {v['p_abnormal']:.4f} pB {v['p_covid']:.4f} {v['class']}"
                for k, v in ways.items()
            )
        )
    lines.append(f"{r['cpu_count']} CPUs, load average {r['load_avg_start']} -> {r['load_avg_end']}, {r['wall_s']} s")
    return "\n".join(lines)


def _auc(m: dict) -> str:
    return "-" if m["auc_full"] is None else f"{m['auc_full']:.4f}->{m['auc']:.4f}"


def _d(m: dict) -> str:
    return "-" if m["auc_change"] is None else f"{m['auc_change']:+.5f}"


__all__ = ["SYNTAXES", "auc", "convert", "read_manifest", "report", "run_agreement_bench"]
