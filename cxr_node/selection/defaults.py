"""The built-in rule set: what a site gets without writing rules, and what runs after its own.

`cxr-node rules show` prints it; configs/node.toml explains each rule in words.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cxr_node.selection.rules import Rule, Selection, parse_rule
from cxr_node.selection.vocabulary import builtin

DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
AGE_NOT_STATED_RULE = "age-not-stated"
PAEDIATRIC_YEARS = 18

DEFAULT_RULES: list[dict[str, Any]] = [
    {
        # Off unless a site switches it on (configs/node.toml writes it out, enabled = false).
        "name": "manufacturer-not-allowed",
        "action": "skip",
        "enabled": False,
        "reason": "the modality's manufacturer is not on the allow-list",
        "when": {"Manufacturer": {"not_matches": r"^(agfa|ge\b|general electric)"}},
    },
    {
        "name": "for-processing-class",
        "action": "skip",
        "reason": "DX For Processing: raw detector data, the models were trained on processed images",
        "when": {"SOPClassUID": {"equals": DX_FOR_PROCESSING}},
    },
    {
        "name": "for-processing-intent",
        "action": "skip",
        "reason": "Presentation Intent FOR PROCESSING: raw detector data, not a processed radiograph",
        "when": {"PresentationIntentType": {"equals": "FOR PROCESSING"}},
    },
    {
        "name": "secondary-image",
        "action": "skip",
        "reason": "a secondary (derived copy, screen capture) image, not an original radiograph",
        "when": {"ImageType": {"matches": r"^[^\\]*\\SECONDARY"}},
    },
    {
        "name": "body-part-conflict",
        "action": "skip",
        "reason": "the header names two different body parts",
        "when": {"body_part": {"equals": "conflict"}},
    },
    {
        "name": "not-chest",
        "action": "skip",
        "reason": "body part is not the chest",
        "when": {"body_part": {"not_one_of": ["chest"]}},
    },
    {
        "name": "view-conflict",
        "action": "skip",
        "reason": "the header names two different views",
        "when": {"view": {"equals": "conflict"}},
    },
    {
        "name": "lateral-view",
        "action": "skip",
        "reason": "a lateral view: the models read frontal (AP/PA) radiographs",
        "when": {"view": {"equals": "lateral"}},
    },
    {
        "name": "oblique-view",
        "action": "skip",
        "reason": "an oblique view: the models read frontal (AP/PA) radiographs",
        "when": {"view": {"equals": "oblique"}},
    },
    {
        "name": "paediatric",
        "action": "skip",
        "reason": f"patient younger than {PAEDIATRIC_YEARS} years: the models were trained on adults",
        "when": {"age": {"age_below": PAEDIATRIC_YEARS}},
    },
    {
        # Switched on by [selection] unknown_age = "skip"; otherwise the image is analysed and
        # its result says the age was not stated (Decision.notes).
        "name": AGE_NOT_STATED_RULE,
        "action": "skip",
        "enabled": False,
        "reason": "patient age not stated (no usable PatientAge or PatientBirthDate) and unknown_age = skip",
        "when": {"age": {"absent": True}},
    },
]


def builtin_rules(unknown_age: str = "analyse") -> tuple[Rule, ...]:
    rules = []
    for i, table in enumerate(DEFAULT_RULES):
        rule = parse_rule(f"DEFAULT_RULES[{i}]", table)
        if rule.name == AGE_NOT_STATED_RULE:
            rule = replace(rule, enabled=unknown_age == "skip")
        rules.append(rule)
    return tuple(rules)


# Built once from constants and the packaged vocabulary table (read-only package data).
DEFAULT_SELECTION = Selection(builtin_rules(), vocabulary=builtin())

__all__ = ["AGE_NOT_STATED_RULE", "DEFAULT_RULES", "DEFAULT_SELECTION", "DX_FOR_PROCESSING", "builtin_rules"]
