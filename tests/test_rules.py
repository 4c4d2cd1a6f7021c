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
from cxr_node.selection.config import parse_selection
from cxr_node.selection.defaults import DEFAULT_SELECTION
from cxr_node.selection.rules import age_in_years
from tests.dicom_factory import make_radiograph

CLI = [sys.executable, "-m", "cxr_node.cli"]
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"


def header(**attrs) -> Dataset:
    ds = make_radiograph(
        np.zeros((4, 4)),
        **{k: v for k, v in attrs.items() if k != "sop_class"},
        sop_class=attrs.get("sop_class", "1.2.840.10008.5.1.4.1.1.1"),
    )
    for key in [k for k, v in attrs.items() if v is None]:
        del ds[key]
    return ds


@pytest.mark.parametrize(
    "attrs,action,rule",
    [
        ({"ViewPosition": "AP"}, "analyse", "default"),
        ({"ViewPosition": "PA", "sop_class": DX_PRESENTATION}, "analyse", "default"),
        ({"ViewPosition": "", "BodyPartExamined": ""}, "analyse", "default"),  # mobile units often leave them empty
        ({"ViewPosition": None, "BodyPartExamined": None}, "analyse", "default"),
        ({"ViewPosition": "LL"}, "skip", "lateral-view"),
        ({"ViewPosition": "lateral "}, "skip", "lateral-view"),  # case and spaces ignored
        ({"ViewPosition": "RLO"}, "skip", "oblique-view"),
        ({"BodyPartExamined": "ABDOMEN"}, "skip", "not-chest"),
        ({"BodyPartExamined": "TORAX"}, "analyse", "default"),  # issue 20: was skipped as not-chest
        ({"BodyPartExamined": "XYZZY"}, "skip", "not-chest"),  # a coded value no table knows: not taken for the chest
        ({"BodyPartExamined": "thorax"}, "analyse", "default"),
        ({"sop_class": DX_PROCESSING, "ViewPosition": "AP"}, "skip", "for-processing-class"),
        ({"PresentationIntentType": "FOR PROCESSING"}, "skip", "for-processing-intent"),
        ({"ImageType": ["DERIVED", "SECONDARY"]}, "skip", "secondary-image"),
        ({"ImageType": ["DERIVED", "PRIMARY"]}, "analyse", "default"),
        ({"PatientAge": "017Y"}, "skip", "paediatric"),
        ({"PatientAge": "006M"}, "skip", "paediatric"),
        ({"PatientAge": "018Y"}, "analyse", "default"),
        ({"PatientAge": "garbage"}, "analyse", "default"),
        ({"Manufacturer": "Acme"}, "analyse", "default"),  # the allow-list is not a built-in rule
        ({"PatientAge": "17Y"}, "skip", "paediatric"),  # forms seen in practice
        ({"PatientAge": "017"}, "skip", "paediatric"),
        ({"PatientAge": None, "PatientBirthDate": "20100101"}, "skip", "paediatric"),  # StudyDate 20260101: 16
    ],
)
def test_default_rules(attrs, action, rule):
    decision = DEFAULT_SELECTION.decide(header(**attrs))
    assert (decision.action, decision.rule) == (action, rule), decision.reason


def test_view_code_sequence_lateral_but_not_decubitus():
    def with_view_code(meaning, code=""):
        ds = header(ViewPosition="")
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code or "X-1", "99LOCAL", meaning
        if code:
            item.CodingSchemeDesignator = "SCT"
        ds.ViewCodeSequence = [item]
        return DEFAULT_SELECTION.decide(ds)

    assert with_view_code("latero-medial").rule == "lateral-view"  # a side view (CID 4010 lateral-medial)
    assert with_view_code("left lateral").rule == "lateral-view"
    assert with_view_code("left lateral decubitus").rule == "default"  # a frontal projection
    assert with_view_code("antero-posterior").rule == "default"
    assert with_view_code("whatever the meaning says", "399067008").rule == "lateral-view"  # the code decides
    assert with_view_code("whatever the meaning says", "399348003").rule == "default"


def test_decision_explains_each_condition_up_to_the_deciding_rule():
    decision = DEFAULT_SELECTION.decide(header(ViewPosition="LL", BodyPartExamined="CHEST"))
    assert "ViewPosition 'LL'" in decision.reason
    checks = {(c.rule, c.condition.attribute): (c.actual, c.held, c.source) for c in decision.checks}
    assert checks[("not-chest", "body_part")] == ("chest", False, "BodyPartExamined 'CHEST'")
    assert checks[("lateral-view", "view")] == ("lateral", True, "ViewPosition 'LL'")
    assert not any(c.rule == "paediatric" for c in decision.checks)  # after the deciding rule: not evaluated


def test_allow_list_is_one_line_to_switch_on(tmp_path):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "configs" / "node.toml").read_text()
    block = text.split('name = "manufacturer-not-allowed"')[1]
    assert "enabled = false" in block.split("[[")[0]
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        text.replace(
            "enabled = false\nreason = \"the modality's manufacturer",
            "enabled = true\nreason = \"the modality's manufacturer",
        )
    )
    selection = load_config(cfg).selection
    assert selection.decide(header(Manufacturer="Acme Imaging")).rule == "manufacturer-not-allowed"
    assert selection.decide(header(Manufacturer="Agfa")).rule == "default"
    assert selection.decide(header(Manufacturer="GE Healthcare")).rule == "default"


def test_site_rules_run_before_the_defaults_and_first_match_wins():
    sel = parse_selection(
        {
            "default": "skip",
            "rules": [
                {"name": "ap-only", "action": "analyse", "when": {"ViewPosition": {"equals": "AP"}}},
                {
                    "name": "agfa",
                    "action": "analyse",
                    "when": {"Manufacturer": {"matches": "agfa"}, "ViewPosition": {"absent": True}},
                },
            ],
        }
    )
    assert sel.decide(header(ViewPosition="AP")).rule == "ap-only"
    assert sel.decide(header(ViewPosition=None, Manufacturer="AGFA HealthCare")).rule == "agfa"
    assert sel.decide(header(ViewPosition="PA", Manufacturer="Agfa")).action == "skip"  # default
    # issue 20: one site rule no longer drops the built-in ones
    assert sel.decide(header(sop_class=DX_PROCESSING, ViewPosition="PA")).rule == "for-processing-class"
    assert [r.origin for r in sel.rules[:3]] == ["site", "site", "built-in"]


def test_defaults_false_leaves_only_the_site_rules():
    sel = parse_selection(
        {
            "defaults": False,
            "rules": [
                {"name": "ap-only", "action": "skip", "when": {"ViewPosition": {"not_one_of": ["AP"]}}},
            ],
        }
    )
    assert [r.name for r in sel.rules] == ["ap-only"]
    assert sel.decide(header(sop_class=DX_PROCESSING, ViewPosition="AP")).rule == "default"


def test_a_site_rule_replaces_or_switches_off_a_builtin_rule_by_name():
    sel = parse_selection(
        {
            "rules": [
                {"name": "paediatric", "action": "skip", "when": {"age": {"age_below": 16}}},
                {"name": "secondary-image", "enabled": False},
            ]
        }
    )
    names = [r.name for r in sel.rules]
    assert names.count("paediatric") == 1 and names.count("secondary-image") == 1
    assert sel.decide(header(PatientAge="017Y")).rule == "default"
    assert sel.decide(header(PatientAge="015Y")).rule == "paediatric"
    assert sel.decide(header(ImageType=["DERIVED", "SECONDARY"])).rule == "default"
    assert all(r.replaces_builtin for r in sel.rules[:2])


@pytest.mark.parametrize(
    "rules,key",
    [
        (
            [{"name": "a", "action": "skip", "when": {"ViewPosition": {"equal": "LL"}}}],
            'selection.rules[0].when.ViewPosition: unknown operator "equal"',
        ),
        (
            [{"name": "a", "action": "skip", "when": {"ViewPositon": {"equals": "LL"}}}],
            "selection.rules[0].when.ViewPositon: unknown DICOM attribute keyword",
        ),
        (
            [{"name": "a", "action": "skip", "when": {"PatientName.CodeMeaning": {"equals": "x"}}}],
            "selection.rules[0].when.PatientName.CodeMeaning: PatientName is not a sequence",
        ),
        ([{"name": "a", "action": "ignore", "when": {"ViewPosition": {"equals": "LL"}}}], "selection.rules[0].action"),
        (
            [{"name": "a", "action": "skip", "when": {"ViewPosition": {"matches": "(["}}}],
            "selection.rules[0].when.ViewPosition.matches: not a valid regular expression",
        ),
        (
            [{"name": "a", "action": "skip", "when": {"PatientAge": {"age_below": "18"}}}],
            "selection.rules[0].when.PatientAge.age_below",
        ),
        ([{"name": "a", "action": "skip", "when": {}}], "selection.rules[0].when"),
        (
            [
                {"name": "a", "action": "skip", "when": {"ViewPosition": {"equals": "LL"}}},
                {"name": "a", "action": "skip", "when": {"ViewPosition": {"equals": "RL"}}},
            ],
            "selection.rules[1].name",
        ),
        ([{"action": "skip", "when": {"ViewPosition": {"equals": "LL"}}}], "selection.rules[0].name"),
        (
            [{"name": "a", "action": "skip", "when": {"ViewPosition": {"equals": "LL"}}, "colour": 1}],
            "selection.rules[0].colour",
        ),
    ],
)
def test_config_errors_name_the_rule_and_key(rules, key):
    with pytest.raises(ConfigError) as info:
        parse_config({"selection": {"rules": rules}})
    assert str(info.value).startswith(key), str(info.value)


def test_age_strings():
    assert age_in_years("017Y") == 17 and age_in_years("006M") == 0.5 and age_in_years("garbage") is None


@pytest.mark.slow  # several CLI processes
def test_rules_test_and_show_commands(tmp_path):
    lateral = header(ViewPosition="LL")
    lateral.save_as(tmp_path / "lateral.dcm", enforce_file_format=True)
    ap = header(ViewPosition="AP")
    (tmp_path / "dir").mkdir()
    ap.save_as(tmp_path / "dir" / "ap.dcm", enforce_file_format=True)

    out = subprocess.run(
        [*CLI, "rules", "test", str(tmp_path / "lateral.dcm"), str(tmp_path / "dir"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert got[0]["config"].startswith("config: none (no --config given") and "built-in defaults" in got[0]["config"]
    assert [(g["action"], g["rule"]) for g in got] == [("skip", "lateral-view"), ("analyse", "default")]
    held = [c for c in got[0]["checks"] if c["held"]]
    assert held == [
        {
            "rule": "lateral-view",
            "attribute": "view",
            "operator": "equals",
            "expected": "lateral",
            "actual": "lateral",
            "held": True,
            "from": "ViewPosition 'LL'",
        }
    ]

    text = subprocess.run(
        [*CLI, "rules", "test", str(tmp_path / "lateral.dcm")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert text.returncode == 0 and "SKIP by rule lateral-view" in text.stdout, text.stdout
    assert "from ViewPosition 'LL'" in text.stdout and "built-in defaults" in text.stdout.splitlines()[0]

    words = header(ViewPosition=None, BodyPartExamined="TORAX", SeriesDescription="Thorax lat")
    words.save_as(tmp_path / "words.dcm", enforce_file_format=True)
    text = subprocess.run(
        [*CLI, "rules", "test", str(tmp_path / "words.dcm")], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert "SKIP by rule lateral-view" in text.stdout, text.stdout
    facts = {line.split()[0]: line for line in text.stdout.splitlines()[2:5]}
    assert "lateral" in facts["view"] and "SeriesDescription 'Thorax lat'" in facts["view"]  # which attribute decided
    assert "chest" in facts["body_part"] and "BodyPartExamined 'TORAX'" in facts["body_part"]
    assert "PatientBirthDate 19700101 and StudyDate 20260101" in facts["age"]

    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    bad = subprocess.run(
        [*CLI, "rules", "test", str(tmp_path / "junk.dcm")], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert bad.returncode == 1 and "junk.dcm" in bad.stderr

    show = subprocess.run([*CLI, "rules", "show"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert show.returncode == 0 and "lateral-view: skip when view equals lateral" in show.stdout
    assert "built-in defaults" in show.stdout.splitlines()[0]
    assert "age-not-stated" in show.stdout and "(disabled)" in show.stdout
    assert "view read from: ViewPosition, ViewCodeSequence; then SeriesDescription" in show.stdout

    (tmp_path / "site.toml").write_text(
        '[[selection.rules]]\nname = "x"\naction = "skip"\nwhen = { Manufacturer = { equals = "Acme" } }\n'
    )
    show = subprocess.run(
        [*CLI, "rules", "show", "--config", "site.toml"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert show.returncode == 0 and show.stdout.splitlines()[0].startswith("config: site.toml; 1 site rule(s), then")
    assert "1. x: skip when Manufacturer equals Acme   [site]" in show.stdout
