"""Per-source metrics and the source-confounding statement (public-cxr-plus, issue 15)."""

from __future__ import annotations

import numpy as np

from cxr_node.analysis.fusion import Thresholds
from training.data import read_samples
from training.sources import confounding_statement, label_sources, per_source_metrics, source_of


def test_source_is_the_file_names_leading_word():
    assert source_of("../public-cxr/images/ieee8023-0001.png") == "ieee8023"
    assert source_of("images/nih-00012345_001.jpg") == "nih"
    assert source_of("actualmed_12.png") == "actualmed"
    assert source_of("1.2.826.0.1.3680043.8.498.1") == "unknown"


def test_per_source_metrics_restrict_every_model_to_the_source():
    names = ["nih-1.jpg", "nih-2.jpg", "nih-3.jpg", "nih-4.jpg", "ieee8023-1.png", "ieee8023-2.png"]
    labels = np.array(["normal", "pathological", "normal", "pathological", "covid", "covid"])
    p_abn = np.array([0.1, 0.9, 0.8, 0.7, 0.9, 0.9])
    p_cov = np.array([0.1, 0.2, 0.1, 0.1, 0.9, 0.4])
    in_b = np.array([True, True, False, False, True, True])
    m = per_source_metrics(names, labels, p_abn, p_cov, in_b, Thresholds(0.5, 0.5))
    assert set(m) == {"nih", "ieee8023"}
    nih = m["nih"]
    assert nih["n"] == 4 and nih["counts"] == {"normal": 2, "pathological": 2, "covid": 0}
    assert nih["A"]["accuracy"] == 0.75 and nih["A"]["auc"] == 0.75  # one normal at 0.8
    assert nih["B"]["n"] == 2  # only the images in B's (balanced) test subset
    assert m["ieee8023"]["A"]["auc"] is None  # one class only: undefined, not a number
    assert m["ieee8023"]["joint"]["accuracy"] == 0.5


def test_public_cxr_plus_covid_comes_from_other_sources_than_the_rest(public_cxr_plus):
    samples, bad = read_samples(public_cxr_plus)
    assert not bad
    by_label = label_sources([s.name for s in samples], np.array([s.label for s in samples]))
    assert set(by_label["covid"]) == {"ieee8023", "actualmed"}
    assert by_label["normal"]["nih"] == 336 and by_label["pathological"]["nih"] == 310
    text = confounding_statement(by_label)
    assert "366 COVID-19 images come from" in text and "recognising where an image comes from" in text
    assert confounding_statement({"covid": {"x": 3}, "normal": {"x": 3}}) is None  # one source: nothing to say
