"""Selection on the headers real sites send: body parts and views coded and in words (English,
Spanish, Portuguese, Italian, French, German), descriptions only, ages in every form, birth
dates only, conflicts between a code and a description; the vocabulary as data a site extends;
`config check` warnings on the effective rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset

from cxr_node.config import ConfigError, parse_config
from cxr_node.selection import audit
from cxr_node.selection.age import AGE_NOT_STATED_NOTE, age_note, parse_age, patient_age
from cxr_node.selection.config import parse_selection
from cxr_node.selection.defaults import DEFAULT_SELECTION
from cxr_node.selection.vocabulary import builtin, builtin_text, normalise
from tests.dicom_factory import make_radiograph

ROOT = Path(__file__).resolve().parents[1]
DX = "1.2.840.10008.5.1.4.1.1.1.1"
NONE = None  # attribute absent


def header(**attrs) -> Dataset:
    """A CR header of an adult (born 1970, studied 2026) with no body part, view or description:
    each case states only what its site sends."""
    ds = make_radiograph(np.zeros((4, 4)), sop_class=attrs.pop("sop_class", "1.2.840.10008.5.1.4.1.1.1"))
    del ds.BodyPartExamined
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def code_item(scheme: str, value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning = scheme, value, meaning
    return item


# (case, header attributes, expected action, deciding rule, attribute that decided)
CASES = [
    # --- English-speaking sites ------------------------------------------------------------
    ("en coded PA", {"BodyPartExamined": "CHEST", "ViewPosition": "PA"}, "analyse", "default", "BodyPartExamined"),
    ("en LUNGS", {"BodyPartExamined": "LUNGS", "ViewPosition": "AP"}, "analyse", "default", "BodyPartExamined"),
    ("en CHEST_AP", {"BodyPartExamined": "CHEST_AP"}, "analyse", "default", "BodyPartExamined"),
    (
        "en PORT CHEST",
        {"BodyPartExamined": "", "StudyDescription": "PORT CHEST"},
        "analyse",
        "default",
        "StudyDescription",
    ),
    (
        "en CHEST PA series",
        {"SeriesDescription": "CHEST PA", "ViewPosition": ""},
        "analyse",
        "default",
        "SeriesDescription",
    ),
    ("en lateral coded", {"BodyPartExamined": "CHEST", "ViewPosition": "LL"}, "skip", "lateral-view", "ViewPosition"),
    (
        "en lateral in words",
        {"BodyPartExamined": "CHEST", "SeriesDescription": "Chest Lateral"},
        "skip",
        "lateral-view",
        "SeriesDescription",
    ),
    ("en KUB no body part", {"StudyDescription": "KUB", "ViewPosition": "AP"}, "skip", "not-chest", "StudyDescription"),
    (
        "en portable abdomen",
        {"BodyPartExamined": "", "ProtocolName": "ABDOMEN PORTABLE AP"},
        "skip",
        "not-chest",
        "ProtocolName",
    ),
    (
        "en rib oblique coded chest",
        {"BodyPartExamined": "CHEST", "SeriesDescription": "RIBS RAO"},
        "skip",
        "body-part-conflict",
        "SeriesDescription",
    ),
    ("en decubitus", {"BodyPartExamined": "CHEST", "ViewPosition": "LLD"}, "analyse", "default", "ViewPosition"),
    (
        "en PA coded, lat in words",
        {"BodyPartExamined": "CHEST", "ViewPosition": "PA", "SeriesDescription": "lat"},
        "skip",
        "view-conflict",
        "SeriesDescription",
    ),
    (
        "en study PA and lateral, image PA",
        {"StudyDescription": "XR CHEST PA AND LATERAL", "ViewPosition": "PA"},
        "analyse",
        "default",
        "ViewPosition",
    ),
    (
        "en study PA and lateral only",
        {"StudyDescription": "XR CHEST PA AND LATERAL"},
        "analyse",
        "default",
        "StudyDescription",
    ),
    (
        "en requested procedure",
        {"RequestedProcedureDescription": "XR CHEST 1 VIEW PORTABLE"},
        "analyse",
        "default",
        "RequestedProcedureDescription",
    ),
    (
        "en processing menu lateral",
        {"BodyPartExamined": "CHEST", "AcquisitionDeviceProcessingDescription": "CHEST LAT"},
        "skip",
        "lateral-view",
        "AcquisitionDeviceProcessingDescription",
    ),
    ("en hand", {"BodyPartExamined": "HAND"}, "skip", "not-chest", "BodyPartExamined"),
    ("en chest-abdomen", {"BodyPartExamined": "CHESTABDOMEN"}, "skip", "not-chest", "BodyPartExamined"),
    ("en shoulder in words", {"SeriesDescription": "L SHOULDER AP"}, "skip", "not-chest", "SeriesDescription"),
    # --- Spanish (CHUAC, issue 20) ---------------------------------------------------------
    ("es TORAX", {"BodyPartExamined": "TORAX", "ViewPosition": "AP"}, "analyse", "default", "BodyPartExamined"),
    ("es TÓRAX", {"BodyPartExamined": "TÓRAX", "ViewPosition": "PA"}, "analyse", "default", "BodyPartExamined"),
    ("es Tórax", {"BodyPartExamined": "Tórax"}, "analyse", "default", "BodyPartExamined"),
    ("es PECHO", {"BodyPartExamined": "PECHO"}, "analyse", "default", "BodyPartExamined"),
    (
        "es RX TORAX PORTATIL",
        {"StudyDescription": "RX TORAX PORTATIL", "SeriesDescription": "TÓRAX AP"},
        "analyse",
        "default",
        "SeriesDescription",
    ),
    (
        "es perfil",
        {"BodyPartExamined": "TORAX", "SeriesDescription": "Tórax perfil"},
        "skip",
        "lateral-view",
        "SeriesDescription",
    ),
    (
        "es Costillas oblicua coded chest",
        {"BodyPartExamined": "CHEST", "SeriesDescription": "Costillas oblicua"},
        "skip",
        "body-part-conflict",
        "SeriesDescription",
    ),
    ("es parrilla costal", {"SeriesDescription": "PARRILLA COSTAL DCHA"}, "skip", "not-chest", "SeriesDescription"),
    ("es torax oseo is ribs", {"StudyDescription": "RX TORAX OSEO"}, "skip", "not-chest", "StudyDescription"),
    (
        "es abdomen simple",
        {"StudyDescription": "RX ABDOMEN SIMPLE", "BodyPartExamined": ""},
        "skip",
        "not-chest",
        "StudyDescription",
    ),
    (
        "es abdomen agudo study, chest image",
        {"StudyDescription": "SERIE ABDOMEN AGUDO", "BodyPartExamined": "CHEST", "ViewPosition": "PA"},
        "analyse",
        "default",
        "BodyPartExamined",
    ),
    (
        "es PA y LAT study, image silent",
        {"StudyDescription": "TORAX PA Y LAT"},
        "analyse",
        "default",
        "StudyDescription",
    ),
    (
        "es decubito lateral",
        {"BodyPartExamined": "TORAX", "SeriesDescription": "DECUBITO LATERAL IZQ"},
        "analyse",
        "default",
        "SeriesDescription",
    ),
    (
        "es oblicua",
        {"BodyPartExamined": "TORAX", "ProtocolName": "TORAX OBLICUA"},
        "skip",
        "oblique-view",
        "ProtocolName",
    ),
    # --- Portuguese --------------------------------------------------------------------------
    ("pt TÓRAX PA", {"BodyPartExamined": "TÓRAX", "ViewPosition": "PA"}, "analyse", "default", "BodyPartExamined"),
    (
        "pt PA e perfil study, perfil series",
        {"StudyDescription": "RX TÓRAX PA E PERFIL", "SeriesDescription": "PERFIL"},
        "skip",
        "lateral-view",
        "SeriesDescription",
    ),
    ("pt costelas", {"SeriesDescription": "COSTELAS OBLÍQUA"}, "skip", "not-chest", "SeriesDescription"),
    ("pt abdome", {"StudyDescription": "RX ABDOME AGUDO"}, "skip", "not-chest", "StudyDescription"),
    # --- Italian -----------------------------------------------------------------------------
    ("it TORACE", {"BodyPartExamined": "TORACE", "ViewPosition": "AP"}, "analyse", "default", "BodyPartExamined"),
    (
        "it laterale",
        {"BodyPartExamined": "TORACE", "SeriesDescription": "TORACE LATERALE"},
        "skip",
        "lateral-view",
        "SeriesDescription",
    ),
    (
        "it latero-laterale",
        {"SeriesDescription": "Torace latero-laterale"},
        "skip",
        "lateral-view",
        "SeriesDescription",
    ),
    ("it addome", {"StudyDescription": "RX ADDOME DIRETTO"}, "skip", "not-chest", "StudyDescription"),
    # --- French ------------------------------------------------------------------------------
    (
        "fr thorax face",
        {"StudyDescription": "RADIOGRAPHIE THORACIQUE", "SeriesDescription": "Thorax face"},
        "analyse",
        "default",
        "SeriesDescription",
    ),
    (
        "fr profil",
        {"BodyPartExamined": "THORAX", "SeriesDescription": "THORAX PROFIL"},
        "skip",
        "lateral-view",
        "SeriesDescription",
    ),
    ("fr côtes", {"SeriesDescription": "Gril costal oblique"}, "skip", "not-chest", "SeriesDescription"),
    ("fr ASP", {"StudyDescription": "ABDOMEN SANS PRÉPARATION"}, "skip", "not-chest", "StudyDescription"),
    # --- German ------------------------------------------------------------------------------
    (
        "de Thorax pa",
        {"BodyPartExamined": "THORAX", "ProtocolName": "Thorax p.a."},
        "analyse",
        "default",
        "ProtocolName",
    ),
    ("de Thorax lat only in words", {"SeriesDescription": "Thorax lat"}, "skip", "lateral-view", "SeriesDescription"),
    (
        "de seitlich",
        {"BodyPartExamined": "THORAX", "SeriesDescription": "Thorax seitlich"},
        "skip",
        "lateral-view",
        "SeriesDescription",
    ),
    ("de Brustkorb", {"BodyPartExamined": "BRUSTKORB", "ViewPosition": "AP"}, "analyse", "default", "BodyPartExamined"),
    (
        "de Rippen schräg",
        {"BodyPartExamined": "THORAX", "SeriesDescription": "Rippen schräg"},
        "skip",
        "body-part-conflict",
        "SeriesDescription",
    ),
    ("de Abdomenübersicht", {"StudyDescription": "Abdomenübersicht"}, "skip", "not-chest", "StudyDescription"),
    # --- vendor and request spellings ---------------------------------------------------------
    (
        "P-A of a CR menu",
        {"BodyPartExamined": "CHEST", "AcquisitionDeviceProcessingDescription": "CHEST P-A"},
        "analyse",
        "default",
        "AcquisitionDeviceProcessingDescription",
    ),
    ("es de pie is standing", {"SeriesDescription": "TORAX PA DE PIE"}, "analyse", "default", "SeriesDescription"),
    (
        "en lat decub",
        {"BodyPartExamined": "CHEST", "SeriesDescription": "LT LAT DECUB"},
        "analyse",
        "default",
        "SeriesDescription",
    ),
    (
        "AP coded, decubitus in words: no conflict",
        {"BodyPartExamined": "CHEST", "ViewPosition": "AP", "SeriesDescription": "TORAX AP DECUBITO LATERAL IZQ"},
        "analyse",
        "default",
        "SeriesDescription",
    ),
    ("en C-SPINE", {"SeriesDescription": "C-SPINE LAT"}, "skip", "not-chest", "SeriesDescription"),
    # --- coded sequences -----------------------------------------------------------------------
    (
        "coded anatomic region chest",
        {"AnatomicRegionSequence": [code_item("SCT", "43799004", "Chest")]},
        "analyse",
        "default",
        "AnatomicRegionSequence",
    ),
    (
        "coded anatomic region abdomen",
        {"AnatomicRegionSequence": [code_item("SCT", "818981001", "Abdomen")]},
        "skip",
        "not-chest",
        "AnatomicRegionSequence",
    ),
    (
        "coded view lateral",
        {"BodyPartExamined": "CHEST", "ViewCodeSequence": [code_item("SCT", "399173006", "left lateral")]},
        "skip",
        "lateral-view",
        "ViewCodeSequence",
    ),
    (
        "procedure code meaning",
        {"ProcedureCodeSequence": [code_item("99LOCAL", "RX123", "RX TORAX AP PORTATIL")]},
        "analyse",
        "default",
        "ProcedureCodeSequence",
    ),
]


@pytest.mark.parametrize("case,attrs,action,rule,decided_by", CASES, ids=[c[0] for c in CASES])
def test_realistic_headers_are_selected_right(case, attrs, action, rule, decided_by):
    ds = header(**attrs)
    decision = DEFAULT_SELECTION.decide(ds)
    assert (decision.action, decision.rule) == (action, rule), decision.reason
    facts = DEFAULT_SELECTION.facts(ds)
    sources = " | ".join(f.source for f in facts.values())
    assert decided_by in sources, sources


@pytest.mark.parametrize(
    "words",
    [
        "TORAX",
        "TÓRAX",
        "Tórax",
        "PECHO",
        "TORACE",
        "THORAX",
        "BRUSTKORB",
        "LUNGS",
        "CHEST_AP",
        "PORT CHEST",
        "CHEST PA",
        "TÓRAX AP",
        "RX TORAX PORTATIL",
        "Thorax p.a.",
        "POUMONS",
        "PULMÃO",
    ],
)
def test_chest_words_in_every_language(words):
    assert DEFAULT_SELECTION.decide(header(BodyPartExamined=words)).rule == "default"
    assert DEFAULT_SELECTION.decide(header(StudyDescription=words)).rule == "default"
    assert DEFAULT_SELECTION.facts(header(SeriesDescription=words))["body_part"].value == "chest"


@pytest.mark.parametrize(
    "words",
    [
        "LAT",
        "LATERAL",
        "LATERALE",
        "PERFIL",
        "PROFIL",
        "SEITLICH",
        "Thorax lat",
        "Tórax lateral izquierda",
        "seitl.",
        "LL",
        "RL",
    ],
)
def test_lateral_words_in_every_language(words):
    assert DEFAULT_SELECTION.decide(header(BodyPartExamined="CHEST", SeriesDescription=words)).rule == "lateral-view"


@pytest.mark.parametrize("words", ["OBL", "OBLIQUE", "OBLICUA", "OBLÍQUA", "OBLIQUA", "schräg", "RAO", "LPO"])
def test_oblique_words_in_every_language(words):
    assert DEFAULT_SELECTION.decide(header(BodyPartExamined="CHEST", SeriesDescription=words)).rule == "oblique-view"


def test_decubitus_refines_frontal_and_lateral_still_conflicts():
    facts = DEFAULT_SELECTION.facts(header(ViewPosition="AP", SeriesDescription="decúbito lateral izquierdo"))
    assert facts["view"].value == "decubitus" and facts["view"].source.startswith("SeriesDescription")
    facts = DEFAULT_SELECTION.facts(header(ViewPosition="LLD", SeriesDescription="lateral"))
    assert facts["view"].value == "conflict"


def test_a_conflict_names_both_attributes():
    decision = DEFAULT_SELECTION.decide(header(BodyPartExamined="CHEST", SeriesDescription="Costillas oblicua"))
    assert decision.rule == "body-part-conflict"
    assert "BodyPartExamined 'CHEST' says chest" in decision.reason
    assert "SeriesDescription 'Costillas oblicua' says ribs" in decision.reason
    view = DEFAULT_SELECTION.decide(header(BodyPartExamined="CHEST", ViewPosition="PA", SeriesDescription="lat"))
    assert (
        view.rule == "view-conflict" and "ViewPosition 'PA'" in view.reason and "SeriesDescription 'lat'" in view.reason
    )


def test_an_unreadable_attribute_says_nothing_and_breaks_nothing():
    class Unreadable(Dataset):
        def get(self, key, default=None):
            if key in ("SeriesDescription", "PatientAge"):
                raise ValueError("invalid value")
            return super().get(key, default)

    ds = Unreadable(header(BodyPartExamined="TORAX", ViewPosition="AP", SeriesDescription="lat", PatientAge="017Y"))
    decision = DEFAULT_SELECTION.decide(ds)
    assert (decision.action, decision.rule) == ("analyse", "default"), decision.reason
    assert "age not readable" in DEFAULT_SELECTION.facts(ds)["age"].source


def test_normalise_case_accents_separators():
    assert normalise("Tórax_AP") == "TORAX AP"
    assert normalise("  rx-TÓRAX   portátil ") == "RX TORAX PORTATIL"
    assert normalise("Thorax p.a.") == "THORAX PA" and normalise("CHEST P-A") == "CHEST PA"
    assert normalise("C-SPINE") == "C SPINE"
    assert normalise("Rippen schräg") == "RIPPEN SCHRAG"


# --- age ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,years",
    [
        ("017Y", 17),
        ("006M", 0.5),
        ("010W", 70 / 365.2425),
        ("003D", 3 / 365.2425),
        ("17Y", 17),
        ("017", 17),
        ("17", 17),
        ("17 years", 17),
        ("17 años", 17),
        ("17 anos", 17),
        ("17 anni", 17),
        ("17 ans", 17),
        ("17 Jahre", 17),
        ("6 meses", 0.5),
        ("6 mois", 0.5),
        ("3 Monate", 0.25),
        ("2 semanas", 14 / 365.2425),
        ("017y", 17),
        ("045Y", 45),
    ],
)
def test_patient_age_forms(text, years):
    assert parse_age(text) == pytest.approx(years)


@pytest.mark.parametrize("text", ["", "garbage", "17J", "999Y", "-5", "Y"])
def test_patient_age_that_is_no_age(text):
    assert parse_age(text) is None


@pytest.mark.parametrize(
    "attrs,years,source",
    [
        ({"PatientAge": "017Y"}, 17, "PatientAge '017Y'"),
        (
            {"PatientAge": None, "PatientBirthDate": "20080102", "StudyDate": "20260101"},
            17,
            "PatientBirthDate 20080102 and StudyDate",
        ),
        (
            {"PatientAge": None, "PatientBirthDate": "20080101", "StudyDate": "20260101"},
            18,
            "StudyDate",
        ),  # 18th birthday
        ({"PatientAge": None, "PatientBirthDate": "20250701", "StudyDate": "20260101"}, 184 / 365.2425, "StudyDate"),
        (
            {"PatientAge": None, "PatientBirthDate": "20100601", "StudyDate": None, "AcquisitionDate": "20260101"},
            15,
            "AcquisitionDate",
        ),
        ({"PatientAge": "", "PatientBirthDate": "2010-06-01", "StudyDate": "20260101"}, 15, "PatientBirthDate"),
    ],
)
def test_age_from_what_is_there(attrs, years, source):
    age = patient_age(header(**attrs))
    assert age.years == pytest.approx(years) and source in age.source, age


@pytest.mark.parametrize(
    "attrs",
    [
        {"PatientAge": None, "PatientBirthDate": None},
        {"PatientAge": "", "PatientBirthDate": ""},
        {"PatientAge": None, "PatientBirthDate": "20300101"},  # born after the study: not an age
        {"PatientAge": None, "PatientBirthDate": "19700101", "StudyDate": None},
    ],
)
def test_unknown_age_is_analysed_with_a_note_by_default(attrs):
    ds = header(**attrs)
    decision = DEFAULT_SELECTION.decide(ds)
    assert decision.analyse and decision.notes == (AGE_NOT_STATED_NOTE,)
    assert age_note(ds) == AGE_NOT_STATED_NOTE
    skip = parse_selection({"unknown_age": "skip"}).decide(ds)
    assert (skip.action, skip.rule) == ("skip", "age-not-stated")


def test_known_age_has_no_note():
    decision = DEFAULT_SELECTION.decide(header(PatientAge="045Y"))
    assert decision.analyse and decision.notes == () and age_note(header(PatientAge="045Y")) is None


@pytest.mark.parametrize(
    "attrs",
    [
        {"PatientAge": "17Y"},
        {"PatientAge": "017"},
        {"PatientAge": "17"},
        {"PatientAge": "17 años"},
        {"PatientAge": "010W"},
        {"PatientAge": "003D"},
        {"PatientAge": None, "PatientBirthDate": "20150301"},
    ],
)
def test_children_are_skipped_in_every_age_form(attrs):
    assert DEFAULT_SELECTION.decide(header(BodyPartExamined="TORAX", **attrs)).rule == "paediatric"


# --- the vocabulary as data ----------------------------------------------------------------------


def test_configs_vocabulary_is_the_builtin_table():
    assert (ROOT / "configs" / "vocabulary.toml").read_text(encoding="utf-8") == builtin_text()


def test_every_builtin_entry_says_where_it_comes_from():
    import tomllib

    entries = tomllib.loads(builtin_text())["entry"]
    assert entries and all(e["source"].strip() for e in entries)
    vocab = builtin()
    assert vocab.code("body_part", "SCT", "816094009").meaning == "chest"
    assert vocab.code("body_part", "SNM3", "T-D3000").meaning == "chest"  # SNM3: older name of SRT
    assert vocab.code("view", "SCT", "399067008").meaning == "lateral"


def test_rules_words_shows_how_a_text_is_read():
    from cxr_node.commands.rules import command as rules

    out = CliRunner().invoke(rules, ["words", "RX TÓRAX PA DE PIE", "Costillas oblicua"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("config: ") and "'RX TÓRAX PA DE PIE' -> 'RX TORAX PA DE PIE'" in lines
    assert "  body_part  chest" in lines and "  view       frontal" in lines  # DE PIE: standing, not a foot
    assert "  body_part  ribs" in lines and "  view       oblique" in lines
    assert any("'TORAX': chest (built-in: free text es" in line for line in lines)


def test_a_site_extends_the_vocabulary_without_writing_rules(tmp_path):
    ds = header(StudyDescription="RX TX PORTATIL")  # a local abbreviation no table knows
    assert DEFAULT_SELECTION.facts(ds)["body_part"].value == ""
    table = tmp_path / "site-words.toml"
    table.write_text(
        '[[entry]]\nkind = "body_part"\nmeaning = "chest"\nwords = ["RX TX"]\n'
        'source = "site: our RIS procedure names"\n'
        '[[entry]]\nkind = "view"\nmeaning = "lateral"\nwords = ["L90"]\nsource = "site: our GE unit"\n'
    )
    sel = parse_config({"selection": {"vocabulary": [str(table)]}}).selection
    fact = sel.facts(ds)["body_part"]
    assert fact.value == "chest" and fact.source == "StudyDescription 'RX TX PORTATIL'"
    assert sel.decide(header(BodyPartExamined="CHEST", SeriesDescription="L90")).rule == "lateral-view"
    inline = parse_selection(
        {"words": [{"kind": "body_part", "meaning": "abdomen", "words": ["RX TX"], "source": "site"}]}
    )
    assert inline.decide(ds).rule == "not-chest"  # a site's word replaces the built-in meaning
    assert inline.vocabulary.tables == ("built-in", "[selection.words]")


@pytest.mark.parametrize(
    "entry,key",
    [
        ({"kind": "organ", "meaning": "chest", "words": ["X"], "source": "s"}, "selection.words[0].kind"),
        ({"kind": "view", "meaning": "Lateral!", "words": ["X"], "source": "s"}, "selection.words[0].meaning"),
        ({"kind": "view", "meaning": "lateral", "words": ["X"]}, "selection.words[0].source"),
        ({"kind": "view", "meaning": "lateral", "source": "s"}, "selection.words[0]: needs words or codes"),
        ({"kind": "view", "meaning": "lateral", "codes": ["399067008"], "source": "s"}, "selection.words[0].codes"),
        ({"kind": "view", "meaning": "lateral", "words": ["--"], "source": "s"}, "selection.words[0].words[0]"),
        (
            {"kind": "view", "meaning": "lateral", "words": ["X"], "source": "s", "lang": "en"},
            "selection.words[0].lang",
        ),
    ],
)
def test_vocabulary_errors_name_the_entry_and_key(entry, key):
    with pytest.raises(ConfigError) as info:
        parse_config({"selection": {"words": [entry]}})
    assert str(info.value).startswith(key), str(info.value)


def test_vocabulary_file_errors_name_the_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^selection.vocabulary\[0\]: cannot read vocabulary table"):
        parse_config({"selection": {"vocabulary": [str(tmp_path / "missing.toml")]}})
    (tmp_path / "bad.toml").write_text('[[entry]]\nkind = "view"\nmeaning = "lateral"\nwords = ["LAT"]\n')
    with pytest.raises(ConfigError, match=r"^selection.vocabulary\[0\] \(.*bad.toml\) entry\[0\].source"):
        parse_config({"selection": {"vocabulary": [str(tmp_path / "bad.toml")]}})


def test_selection_key_errors():
    for table, key in [
        ({"defaults": "no"}, "selection.defaults"),
        ({"unknown_age": "maybe"}, "selection.unknown_age"),
        ({"defaults": False, "unknown_age": "skip"}, "selection.unknown_age"),
        ({"vocabulary": "x.toml"}, "selection.vocabulary"),
        ({"colour": 1}, "selection.colour"),
        ({"defaults": False, "rules": [{"name": "paediatric", "enabled": False}]}, "selection.rules[0]"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config({"selection": table})
        assert str(info.value).startswith(key), str(info.value)


# --- config check warnings -------------------------------------------------------------------------


def test_builtin_rules_give_no_warning():
    assert audit.warnings(DEFAULT_SELECTION) == []


def test_warnings_name_what_the_effective_rules_let_through():
    only_site = parse_selection(
        {
            "defaults": False,
            "rules": [{"name": "abdomen", "action": "skip", "when": {"body_part": {"equals": "abdomen"}}}],
        }
    )
    found = audit.warnings(only_site)
    for what in (
        "DX For Processing",
        "PresentationIntentType",
        "secondary",
        "lateral view (ViewPosition LL)",
        "'Thorax lat'",
        "oblique",
        "PatientAge 010Y",
        "PatientBirthDate only",
    ):
        assert any(what in line for line in found), (what, found)
    assert not any("ABDOMEN" in line for line in found)
    # A site rule that analyses children before the built-in rules: warned too.
    kids = parse_selection({"rules": [{"name": "kids-ok", "action": "analyse", "when": {"age": {"present": True}}}]})
    assert [w for w in audit.warnings(kids) if "child" in w] and all("rule kids-ok" in w for w in audit.warnings(kids))


def test_config_check_prints_the_warnings(tmp_path):
    from cxr_node.commands.config_check import command

    cfg = tmp_path / "node.toml"
    cfg.write_text("[selection]\ndefaults = false\n")
    result = CliRunner().invoke(command, ["check", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "Warning: selection: the effective rules analyse a lateral view (ViewPosition LL)" in result.output
    assert "OK" in result.output
    cfg.write_text("")
    clean = CliRunner().invoke(command, ["check", str(cfg)])
    assert clean.exit_code == 0 and "Warning" not in clean.output


# --- visible decisions -----------------------------------------------------------------------------


def test_jobs_list_shows_what_a_skipped_image_is_and_why(tmp_path):
    from cxr_node.commands.jobs import command as jobs
    from cxr_node.queue.jobs import JobQueue, ReceivedInstance
    from cxr_node.queue.schema import open_database
    from cxr_node.selection.header import header_summary

    url = f"sqlite:///{tmp_path / 'node.db'}"
    engine = open_database(url)
    ds = header(
        AccessionNumber="ACC-123",
        StudyDescription="RX TORAX PORTATIL",
        SeriesDescription="Thorax lat",
        BodyPartExamined="TORAX",
    )
    decision = DEFAULT_SELECTION.decide(ds)
    JobQueue(engine).enqueue(
        ReceivedInstance(
            str(ds.SOPInstanceUID),
            str(ds.SOPClassUID),
            str(ds.StudyInstanceUID),
            "MOBILE_DR",
            "/x.dcm",
            skip=not decision.analyse,
            rule=decision.rule,
            reason=decision.reason,
            header=header_summary(ds),
        )
    )
    engine.dispose()
    out = CliRunner().invoke(jobs, ["list", "--db", url])
    assert out.exit_code == 0, out.output
    head, row = out.output.splitlines()
    assert "ACCESSION" in head and "DESCRIPTION" in head
    for text in (
        "skipped",
        "ACC-123",
        "CR",
        "RX TORAX PORTATIL / Thorax lat",
        "[lateral-view]",
        "view 'lateral' from SeriesDescription 'Thorax lat'",
    ):
        assert text in row, (text, row)
