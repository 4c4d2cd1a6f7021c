"""`cxr-node bench decode-memory`: what decoding one radiograph costs in memory, per transfer syntax.

A real CR chest radiograph (pydicom-data RG1_UNCR.dcm, or --image), optionally resized to
--side x --side, is encoded in each transfer syntax the node accepts; each file is then decoded in
a fresh process (so nothing earlier inflates the figures), twice: the decoder alone
(`ds.pixel_array`) and what a decoder process does for the worker (decode_file: read, decode, grey
pipeline, and the pickle that carries the result back). Reported per pixel, above the process's
state after imports: peak resident memory (VmHWM) and peak address space (VmPeak, what
`decoding.memory_limit_mb` limits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

SYNTAXES = {
    "native": "1.2.840.10008.1.2.1",
    "deflated": "1.2.840.10008.1.2.1.99",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg-baseline-8bit": "1.2.840.10008.1.2.4.50",
    "jpeg-extended-12bit": "1.2.840.10008.1.2.4.51",
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "j2k-lossless": "1.2.840.10008.1.2.4.90",
}

PROBE = r"""
import json, pickle, sys
from cxr_node.decoding.pool import _preload_decoders, _status_kib, decode_file
import pydicom
_preload_decoders()
path, what = sys.argv[1], sys.argv[2]
base_rss, base_vm = _status_kib("VmRSS"), _status_kib("VmSize")
if what == "decoder":
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    pixels = arr.size
else:
    out = decode_file(path)
    blob = pickle.dumps(out)  # what the pipe carries back
    pixels = out.image.pixels.size
print(json.dumps({"pixels": pixels, "rss_kib": _status_kib("VmHWM") - base_rss, "vm_kib": _status_kib("VmPeak") - base_vm}))
"""


def _dcmtk(program: str, *args: str) -> None:
    subprocess.run([program, *args], check=True, capture_output=True, timeout=600)


def encode_all(source: Path, side: int | None, out_dir: Path) -> dict[str, Path]:
    """The source radiograph in each syntax (those whose encoder is installed)."""
    import cv2
    import numpy as np
    import pydicom
    from pydicom.uid import UID, ExplicitVRLittleEndian

    ds = pydicom.dcmread(source)
    arr = ds.pixel_array
    if side:
        arr = cv2.resize(arr.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
        arr = np.clip(arr, 0, 2 ** int(ds.BitsStored) - 1).astype(np.uint16)
        ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.astype(np.uint16).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    native = out_dir / "native.dcm"
    ds.save_as(native, enforce_file_format=True)
    files = {"native": native}

    deflated = pydicom.dcmread(native)
    deflated.file_meta.TransferSyntaxUID = UID(SYNTAXES["deflated"])
    files["deflated"] = out_dir / "deflated.dcm"
    deflated.save_as(files["deflated"], enforce_file_format=True)

    encoders: dict[str, Callable[[Path], None]] = {
        "rle": lambda p: _pydicom_compress(native, p, SYNTAXES["rle"]),
        "jpeg-ls": lambda p: _pydicom_compress(native, p, SYNTAXES["jpeg-ls"]),
        "j2k-lossless": lambda p: _pydicom_compress(native, p, SYNTAXES["j2k-lossless"]),
        "jpeg-lossless": lambda p: _dcmtk("dcmcjpeg", "--encode-lossless-sv1", str(native), str(p)),
        "jpeg-extended-12bit": lambda p: _dcmtk("dcmcjpeg", "--encode-extended", str(native), str(p)),
        "jpeg-baseline-8bit": lambda p: _baseline_8bit(native, p),
    }
    for name, encode in encoders.items():
        path = out_dir / f"{name}.dcm"
        try:
            encode(path)
        except Exception as exc:  # an encoder that is not installed: say so, measure the rest
            print(f"... {name}: not encoded ({exc})", file=sys.stderr)
            continue
        files[name] = path
    return files


def _pydicom_compress(native: Path, path: Path, syntax: str) -> None:
    import pydicom

    ds = pydicom.dcmread(native)
    ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)


def _baseline_8bit(native: Path, path: Path) -> None:
    import numpy as np
    import pydicom

    ds = pydicom.dcmread(native)
    arr = ds.pixel_array.astype(np.float32)
    ds.PixelData = (arr * 255.0 / max(1.0, float(arr.max()))).astype(np.uint8).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    eight = path.with_suffix(".8bit.dcm")
    ds.save_as(eight, enforce_file_format=True)
    _dcmtk("dcmcjpeg", "--encode-baseline", str(eight), str(path))


def measure(path: Path, what: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), what], capture_output=True, text=True, timeout=600, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"{path.name} {what}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
        )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    n = got["pixels"]
    return {
        "pixels": n,
        "rss_bytes_per_pixel": round(got["rss_kib"] * 1024 / n, 1),
        "address_space_bytes_per_pixel": round(got["vm_kib"] * 1024 / n, 1),
    }


def run_decode_memory_bench(image: Path | None, side: int | None, progress=None) -> dict:
    from pydicom.data import get_testdata_file

    source = image or Path(get_testdata_file("RG1_UNCR.dcm") or "RG1_UNCR.dcm")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-decode-mem-") as tmp:
        files = encode_all(source, side, Path(tmp))
        for name, path in files.items():
            if progress:
                progress(f"{name}: {path.stat().st_size / 2**20:.1f} MiB on disk")
            row = {"syntax": name, "uid": SYNTAXES[name], "file_mib": round(path.stat().st_size / 2**20, 2)}
            for what in ("decoder", "decode_file"):
                row[what] = measure(path, what)
            rows.append(row)
    return {"image": str(source), "side": side, "loadavg": Path("/proc/loadavg").read_text().split()[:3], "rows": rows}


def format_table(result: dict) -> str:
    lines = [
        f"image {result['image']}" + (f" resized to {result['side']}^2" if result["side"] else ""),
        f"load average {' '.join(result['loadavg'])}",
        "| syntax | file MiB | decoder RSS B/px | decoder VM B/px | decode_file RSS B/px | decode_file VM B/px |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        d, f = r["decoder"], r["decode_file"]
        lines.append(
            f"| {r['syntax']} | {r['file_mib']} | {d['rss_bytes_per_pixel']} | {d['address_space_bytes_per_pixel']} "
            f"| {f['rss_bytes_per_pixel']} | {f['address_space_bytes_per_pixel']} |"
        )
    return "\n".join(lines)
