"""The decode benchmarks' own parts: AUC, the set's sampling and conversion, the decode bench's JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from cxr_node.benchmarks.agreement import Item, auc, convert, read_manifest
from cxr_node.decoding import openjp2
from cxr_node.decoding.pixels import read_image
from cxr_node.decoding.reduced import Resolution


def test_auc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    positive = rng.random(200) < 0.4
    assert auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))
    assert auc(scores, np.zeros(200, bool)) is None


def test_manifest_sampling_keeps_each_label(tmp_path):
    rows = [f"img{i}.png,{'normal' if i % 3 == 0 else 'covid'}" for i in range(30)]
    (tmp_path / "manifest.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    items = read_manifest(tmp_path, 8)
    assert sorted({it.label for it in items}) == ["covid", "normal"]
    assert sum(it.label == "normal" for it in items) == 4 and sum(it.label == "covid" for it in items) == 4
    assert len(read_manifest(tmp_path, 0)) == 30


@pytest.mark.skipif(not openjp2.available(), reason="libopenjp2 not installed")
@pytest.mark.parametrize(("syntax", "uid", "bits"), [("j2k16", JPEG2000Lossless, 16), ("jpeg8", JPEGBaseline8Bit, 8)])
def test_conversion_gives_the_units_syntax_and_reduces(tmp_path, syntax, uid, bits):
    y, x = np.mgrid[0:128, 0:96]
    cv2.imwrite(str(tmp_path / "a.png"), (255 * (x / 95) * (y / 127)).astype(np.uint8))
    path = convert(Item(tmp_path / "a.png", "normal", "a"), syntax, tmp_path / "work", upscale=4)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == uid and ds.BitsStored == bits and (ds.Rows, ds.Columns) == (512, 384)
    assert convert(Item(tmp_path / "a.png", "normal", "a"), syntax, tmp_path / "work", upscale=4) == path  # reused
    full, reduced = read_image(path), read_image(path, Resolution(64))
    assert reduced.reduction == 8 and reduced.shape == (64, 48)
    ref = cv2.resize(full.pixels, (48, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.pixels - ref).mean() < 0.01


@pytest.mark.slow
def test_bench_decode_json(tmp_path):
    out = tmp_path / "decode.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr_node.cli",
            "bench",
            "decode",
            "--repeats",
            "1",
            "--studies",
            "0",
            "--json",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    r = json.loads(out.read_text())
    assert r["decode"]["full"]["shape"] == [1955, 1841]
    assert r["decode"]["serving"]["shape"] == [978, 921]  # 1/2 (978 px) holds the 960 px SC
    assert r["decode"]["model"]["shape"] == [245, 231]
    assert set(r["goals"]) == {"decode_ge_10x_faster", "cpu_per_study_le_0.5x"}
    assert r["goals"]["cpu_per_study_le_0.5x"] is None  # not measured with --studies 0
    assert r["gpu_host_projection"]["kind"].startswith("projection")
