"""Selection rules: the default set on the images a portable unit sends, operators, errors that
name the rule and key, and `cxr-node rules test|show`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pydicom.dataset import Dataset

from cxr_node.config import ConfigError, load_config, parse_config
from cxr_node.dicom.rules import DEFAULT_SELECTION, age_in_years, parse_selection
from tests.dicom_factory import make_radiograph

CLI = [sys.executable, "-m", "cxr_node.cli"]
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"


def header(**attrs) -> Dataset:
    ds = make_radiograph(np.zeros((4, 4)), **{k: v for k, v in attrs.items() if k != "sop_class"},
                         sop_class=attrs.get("sop_class", "1.2.840.10008.5.1.4.1.1.1"))
    for key in [k for k, v in attrs.items() if v is None]:
        del ds[key]
    return ds


@pytest.mark.parametrize("attrs,action,rule", [
    ({"ViewPosition": "AP"}, "analyse", "default"),
    ({"ViewPosition": "PA", "sop_class": DX_PRESENTATION}, "analyse", "default"),
    ({"ViewPosition": "", "BodyPartExamined": ""}, "analyse", "default"),  # mobile units often leave them empty
    ({"ViewPosition": None, "BodyPartExamined": None}, "analyse", "default"),
    ({"ViewPosition": "LL"}, "skip", "lateral-view"),
    ({"ViewPosition": "lateral "}, "skip", "lateral-view"),  # case and spaces ignored
    ({"ViewPosition": "RLO"}, "skip", "oblique-view"),
    ({"BodyPartExamined": "ABDOMEN"}, "skip", "not-chest"),
    ({"BodyPartExamined": "thorax"}, "analyse", "default"),
    ({"sop_class": DX_PROCESSING, "ViewPosition": "AP"}, "skip", "for-processing-class"),
    ({"PresentationIntentType": "FOR PROCESSING"}, "skip", "for-processing-intent"),
    ({"ImageType": ["DERIVED", "SECONDARY"]}, "skip", "secondary-image"),
    ({"ImageType": ["DERIVED", "PRIMARY"]}, "analyse", "default"),
    ({"PatientAge": "017Y"}, "skip", "paediatric"),
    ({"PatientAge": "006M"}, "skip", "paediatric"),
    ({"PatientAge": "018Y"}, "analyse", "default"),
    ({"PatientAge": "garbage"}, "analyse", "default"),
    ({"Manufacturer": "Acme"}, "analyse", "default"),  # the allow-list is off by default
])
def test_default_rules(attrs, action, rule):
    decision = DEFAULT_SELECTION.decide(header(**attrs))
    assert (decision.action, decision.rule) == (action, rule), decision.reason


def test_view_code_sequence_lateral_but_not_decubitus():
    def with_view_code(meaning):
        ds = header(ViewPosition="")
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "R-10232", "SRT", meaning
        ds.ViewCodeSequence = [item]
        return DEFAULT_SELECTION.decide(ds)

    assert with_view_code("latero-medial").rule == "default"
    assert with_view_code("left lateral").rule == "lateral-view-code"
    assert with_view_code("left lateral decubitus").rule == "default"  # a frontal projection
    assert with_view_code("antero-posterior").rule == "default"


def test_decision_explains_each_condition_up_to_the_deciding_rule():
    decision = DEFAULT_SELECTION.decide(header(ViewPosition="LL", BodyPartExamined="CHEST"))
    assert "ViewPosition 'LL'" in decision.reason
    checks = {(c.rule, c.condition.attribute): (c.actual, c.held) for c in decision.checks}
    assert checks[("not-chest", "BodyPartExamined")] == ("CHEST", False)
    assert checks[("lateral-view", "ViewPosition")] == ("LL", True)
    assert not any(c.rule == "paediatric" for c in decision.checks)  # after the deciding rule: not evaluated


def test_allow_list_is_one_line_to_switch_on(tmp_path):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "configs" / "node.toml").read_text()
    block = text.split('name = "manufacturer-not-allowed"')[1]
    assert "enabled = false" in block.split("[[")[0]
    cfg = tmp_path / "node.toml"
    cfg.write_text(text.replace('enabled = false\nreason = "the modality\'s manufacturer', 'enabled = true\nreason = "the modality\'s manufacturer'))
    selection = load_config(cfg).selection
    assert selection.decide(header(Manufacturer="Acme Imaging")).rule == "manufacturer-not-allowed"
    assert selection.decide(header(Manufacturer="Agfa")).rule == "default"
    assert selection.decide(header(Manufacturer="GE Healthcare")).rule == "default"


def test_own_rules_replace_the_defaults_and_first_match_wins():
    sel = parse_selection({"default": "skip", "rules": [
        {"name": "ap-only", "action": "analyse", "when": {"ViewPosition": {"equals": "AP"}}},
        {"name": "agfa", "action": "analyse", "when": {"Manufacturer": {"matches": "agfa"}, "ViewPosition": {"absent": True}}},
    ]})
    assert sel.decide(header(ViewPosition="AP")).rule == "ap-only"
    assert sel.decide(header(ViewPosition=None, Manufacturer="AGFA HealthCare")).rule == "agfa"
    assert sel.decide(header(ViewPosition="PA", Manufacturer="Agfa")).action == "skip"  # default


@pytest.mark.parametrize("rules,key", [
    ([{"name": "a", "action": "skip", "when": {"ViewPosition": {"equal": "LL"}}}],
     'selection.rules[0].when.ViewPosition: unknown operator "equal"'),
    ([{"name": "a", "action": "skip", "when": {"ViewPositon": {"equals": "LL"}}}],
     "selection.rules[0].when.ViewPositon: unknown DICOM attribute keyword"),
    ([{"name": "a", "action": "skip", "when": {"PatientName.CodeMeaning": {"equals": "x"}}}],
     "selection.rules[0].when.PatientName.CodeMeaning: PatientName is not a sequence"),
    ([{"name": "a", "action": "ignore", "when": {"ViewPosition": {"equals": "LL"}}}], "selection.rules[0].action"),
    ([{"name": "a", "action": "skip", "when": {"ViewPosition": {"matches": "(["}}}],
     "selection.rules[0].when.ViewPosition.matches: not a valid regular expression"),
    ([{"name": "a", "action": "skip", "when": {"PatientAge": {"age_below": "18"}}}],
     "selection.rules[0].when.PatientAge.age_below"),
    ([{"name": "a", "action": "skip", "when": {}}], "selection.rules[0].when"),
    ([{"name": "a", "action": "skip", "when": {"ViewPosition": {"equals": "LL"}}},
      {"name": "a", "action": "skip", "when": {"ViewPosition": {"equals": "RL"}}}], "selection.rules[1].name"),
    ([{"action": "skip", "when": {"ViewPosition": {"equals": "LL"}}}], "selection.rules[0].name"),
    ([{"name": "a", "action": "skip", "when": {"ViewPosition": {"equals": "LL"}}, "colour": 1}], "selection.rules[0].colour"),
])
def test_config_errors_name_the_rule_and_key(rules, key):
    with pytest.raises(ConfigError) as info:
        parse_config({"selection": {"rules": rules}})
    assert str(info.value).startswith(key), str(info.value)


def test_age_strings():
    assert age_in_years("017Y") == 17 and age_in_years("006M") == 0.5 and age_in_years("17") is None


def test_rules_test_and_show_commands(tmp_path):
    lateral = header(ViewPosition="LL")
    lateral.save_as(tmp_path / "lateral.dcm", enforce_file_format=True)
    ap = header(ViewPosition="AP")
    (tmp_path / "dir").mkdir()
    ap.save_as(tmp_path / "dir" / "ap.dcm", enforce_file_format=True)

    out = subprocess.run([*CLI, "rules", "test", str(tmp_path / "lateral.dcm"), str(tmp_path / "dir"), "--json"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(g["action"], g["rule"]) for g in got] == [("skip", "lateral-view"), ("analyse", "default")]
    held = [c for c in got[0]["checks"] if c["held"]]
    assert held == [{"rule": "lateral-view", "attribute": "ViewPosition", "operator": "one_of",
                     "expected": ["LL", "RL", "LATERAL"], "actual": "LL", "held": True}]

    text = subprocess.run([*CLI, "rules", "test", str(tmp_path / "lateral.dcm")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert text.returncode == 0 and "SKIP by rule lateral-view" in text.stdout and "actual 'LL'" in text.stdout

    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    bad = subprocess.run([*CLI, "rules", "test", str(tmp_path / "junk.dcm")], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert bad.returncode == 1 and "junk.dcm" in bad.stderr

    show = subprocess.run([*CLI, "rules", "show"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert show.returncode == 0 and "lateral-view: skip when ViewPosition one_of [LL, RL, LATERAL]" in show.stdout
    assert "manufacturer-not-allowed" in show.stdout and "(disabled)" in show.stdout
