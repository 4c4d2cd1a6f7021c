"""`cxr-node bench inference` runs with tiny settings and reports the agreed keys (no timed assertions)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cxr_node.cli import main


@pytest.mark.slow  # loads two DenseNet-161s
def test_bench_inference_json_keys():
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "inference",
            "--json",
            "--studies",
            "2",
            "--batch-sizes",
            "1",
            "--repeats",
            "1",
            "--input-size",
            "64",
            "--no-overlap",
            "--no-rss-probe",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("input_size", "analysis_s_p50", "floor_s", "naive_s", "studies_per_s", "peak_rss_mb"):
        assert key in data, key
    assert data["input_size"] == 64 and data["architecture"] == "densenet161"  # the untrained bundle's
    assert set(data["studies_per_s"]) == {"1"}
    assert {"decode", "preprocess", "model_a", "model_b", "cams", "sr_sc_build"} <= set(data["stages_s"])
    assert data["analysis_s_p50"] > 0 and data["floor_s"] > 0 and data["naive_s"] > 0
    assert data["peak_rss_mb"] > 0


def test_bench_rejects_bad_batch_sizes():
    result = CliRunner().invoke(main, ["bench", "inference", "--batch-sizes", "1,x"])
    assert result.exit_code == 2 and "comma-separated" in result.output


def test_goals_are_checked_from_the_figures():
    from cxr_node.benchmarks.goals import check

    met = check({"analysis_over_floor": 1.06, "naive_over_analysis": 4.1, "worker_peak_rss_mb": {"peak_mb": 1329.0}})
    assert met == {"analysis_le_1.15x_floor": True, "naive_ge_3x_analysis": True, "worker_rss_le_1.5GB": True}
    missed = check({"analysis_over_floor": 1.2, "naive_over_analysis": 2.8, "worker_peak_rss_mb": {"peak_mb": 1612.0}})
    assert set(missed.values()) == {False}
    unmeasured = check({"analysis_over_floor": 1.0, "naive_over_analysis": None, "worker_peak_rss_mb": None})
    assert unmeasured == {"analysis_le_1.15x_floor": True, "naive_ge_3x_analysis": None, "worker_rss_le_1.5GB": None}


@pytest.mark.slow
def test_worker_like_probe_runs_the_processing_path_in_a_fresh_process(rg1_uncr):
    from cxr_node.benchmarks.probe import run_probe

    got = run_probe(rg1_uncr, None, 64, "cpu", 2)
    assert "error" not in got, got
    assert got["measure"] == "VmHWM" and got["batch"] == 2
    assert 0 < got["after_model_load_mb"] <= got["peak_mb"]


@pytest.mark.slow
def test_a_failing_probe_reports_its_last_error_line(tmp_path):
    from cxr_node.benchmarks.probe import run_probe

    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("not a DICOM file")
    got = run_probe(not_dicom, None, 32, "cpu", 1)
    assert "not a DICOM file" in got["error"] and str(not_dicom) in got["error"]
