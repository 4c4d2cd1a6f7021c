"""`cxr-node bench inference` runs with tiny settings and reports the agreed keys (no timed assertions)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cxr_node.cli import main


def test_bench_inference_json_keys():
    result = CliRunner().invoke(
        main,
        ["bench", "inference", "--json", "--studies", "2", "--batch-sizes", "1", "--repeats", "1",
         "--input-size", "64", "--no-overlap", "--no-rss-probe"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("input_size", "analysis_s_p50", "floor_s", "naive_s", "studies_per_s", "peak_rss_mb"):
        assert key in data, key
    assert data["input_size"] == 64
    assert set(data["studies_per_s"]) == {"1"}
    assert {"decode", "preprocess", "model_a", "model_b", "cams", "sr_sc_build"} <= set(data["stages_s"])
    assert data["analysis_s_p50"] > 0 and data["floor_s"] > 0 and data["naive_s"] > 0
    assert data["peak_rss_mb"] > 0


def test_bench_rejects_bad_batch_sizes():
    result = CliRunner().invoke(main, ["bench", "inference", "--batch-sizes", "1,x"])
    assert result.exit_code == 2 and "comma-separated" in result.output
