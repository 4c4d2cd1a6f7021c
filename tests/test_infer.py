"""`cxr-node infer`: SR, SC and JSON per file; a bad file is named, the others go on."""

from __future__ import annotations

import json

import pydicom
from click.testing import CliRunner

from cxr_node.cli import main


def test_infer_writes_sr_sc_json_and_names_the_bad_file(rg1_uncr, tmp_path):
    bad = tmp_path / "not-dicom.dcm"
    bad.write_text("hello")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "infer",
            str(rg1_uncr),
            str(bad),
            "--allow-untrained",
            "--out",
            str(out),
            "--input-size",
            "64",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "not a DICOM file" in errors[0]
    assert "1 of 2 file(s) failed" in result.stderr

    summary = json.loads((out / "RG1_UNCR" / "summary.json").read_text())
    for key in ("class", "p_abnormal", "p_covid", "models_disagree", "model", "trained", "timings", "outputs"):
        assert key in summary
    assert summary["trained"] is False and summary["class"] in ("Normal", "Pathological", "COVID-19")
    assert {"decode", "preprocess", "model_a", "model_b", "cams", "sr_sc_build"} <= set(summary["timings"])
    sr = pydicom.dcmread(summary["outputs"]["sr"])
    sc = pydicom.dcmread(summary["outputs"]["sc"])
    source = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    assert sr.Modality == "SR" and sc.Modality == "OT"
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
    assert "UNTRAINED" in result.stdout


def test_infer_needs_models_or_allow_untrained(rg1_uncr, tmp_path):
    result = CliRunner().invoke(main, ["infer", str(rg1_uncr), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--allow-untrained" in result.output
