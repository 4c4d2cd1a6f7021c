"""Which received images are analysed: selection rules as data, one evaluator, and its explanation.

A rule has a name, conditions on header attributes (all must hold) and an action, `analyse` or
`skip`; the first matching enabled rule decides, else the default action. Decided at receipt
from the header alone (no pixel decoding). A skipped image is still stored and acknowledged;
it only gets no result.

Condition operators, per attribute keyword (or `SequenceKeyword.Keyword`, first item):
  equals "V" | one_of ["V", ...] | not_one_of [...] | matches "regex" | not_matches "regex"
  present = true | absent = true | age_below = YEARS (an AS value such as 017Y, 006M)
Values are compared ignoring case and surrounding or repeated spaces; a multi-valued attribute
reads as its values joined by a backslash (ImageType "DERIVED\\SECONDARY"). Value operators
need a value: on an absent or empty attribute they do not hold (test that with present/absent),
so a mobile unit's empty ViewPosition or BodyPartExamined is not skipped by them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from cxr_node.errors import ConfigError

Action = Literal["analyse", "skip"]
ACTIONS: tuple[str, ...] = ("analyse", "skip")
OPERATORS: tuple[str, ...] = (
    "equals",
    "one_of",
    "not_one_of",
    "matches",
    "not_matches",
    "present",
    "absent",
    "age_below",
)
DEFAULT_RULE = "default"

_AS = re.compile(r"^(\d{3})([DWMY])$")
_AS_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def normalise(text: str) -> str:
    return " ".join(text.split()).upper()


def age_in_years(value: str) -> float | None:
    """An Age String (nnnD/W/M/Y) in years, or None when it is not one."""
    m = _AS.match(value.strip().upper())
    return int(m.group(1)) * _AS_YEARS[m.group(2)] if m else None


def attribute_text(ds: Dataset, path: str) -> str:
    """The attribute's value as text ("" when absent or empty); `Seq.Keyword` reads the first item."""
    current: Any = ds
    parts = path.split(".")
    for keyword in parts[:-1]:  # sequences: descend into the first item
        items = current.get(keyword)
        if not items:
            return ""
        current = items[0]
    value = current.get(parts[-1])
    if value is None or value == "" or value == b"":
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Condition:
    attribute: str
    operator: str
    expected: Any

    def evaluate(self, actual: str) -> bool:
        op, want = self.operator, self.expected
        if op == "present":
            return bool(actual.strip()) == want
        if op == "absent":
            return (not actual.strip()) == want
        if not actual.strip():
            return False  # value operators need a value (see the module docstring)
        if op == "equals":
            return normalise(actual) == normalise(want)
        if op == "one_of":
            return normalise(actual) in {normalise(v) for v in want}
        if op == "not_one_of":
            return normalise(actual) not in {normalise(v) for v in want}
        if op in ("matches", "not_matches"):
            found = re.search(want, " ".join(actual.split()), re.IGNORECASE) is not None
            return found if op == "matches" else not found
        if op == "age_below":
            years = age_in_years(actual)
            return years is not None and years < want
        raise AssertionError(f"operator {op} passed validation but has no evaluation")

    def describe(self) -> str:
        want = self.expected
        if isinstance(want, (list, tuple)):
            want = "[" + ", ".join(want) + "]"
        return f"{self.attribute} {self.operator} {want}"


@dataclass(frozen=True)
class Rule:
    name: str
    action: Action
    conditions: tuple[Condition, ...]
    reason: str = ""
    enabled: bool = True


@dataclass(frozen=True)
class Check:
    """One condition as evaluated on one image: what was wanted, what was there, whether it held."""

    rule: str
    condition: Condition
    actual: str
    held: bool


@dataclass(frozen=True)
class Decision:
    action: Action
    rule: str  # the deciding rule's name, or "default"
    reason: str
    checks: tuple[Check, ...] = ()  # every condition evaluated, in order, up to the deciding rule

    @property
    def analyse(self) -> bool:
        return self.action == "analyse"


@dataclass(frozen=True)
class Selection:
    rules: tuple[Rule, ...] = ()
    default: Action = "analyse"

    def decide(self, ds: Dataset) -> Decision:
        checks: list[Check] = []
        for rule in self.rules:
            if not rule.enabled:
                continue
            matched = True
            for cond in rule.conditions:
                actual = attribute_text(ds, cond.attribute)
                held = cond.evaluate(actual)
                checks.append(Check(rule.name, cond, actual, held))
                if not held:
                    matched = False
                    break  # the rest of this rule's conditions cannot change the outcome
            if matched:
                facts = "; ".join(f"{c.condition.attribute} {c.actual!r}" for c in checks if c.rule == rule.name)
                reason = rule.reason or f"rule {rule.name} matched"
                return Decision(rule.action, rule.name, f"{reason} ({facts})" if facts else reason, tuple(checks))
        return Decision(self.default, DEFAULT_RULE, f"no rule matched: default action {self.default}", tuple(checks))


# -- parsing (TOML tables -> Selection); every error names the rule and the key ---------------


def _attribute(key: str, path: str) -> str:
    parts = path.split(".")
    for i, keyword in enumerate(parts):
        if tag_for_keyword(keyword) is None:
            raise ConfigError(f"{key}: unknown DICOM attribute keyword {keyword!r}")
        if i < len(parts) - 1 and dictionary_VR(keyword) != "SQ":
            raise ConfigError(f"{key}: {keyword} is not a sequence, so {path!r} cannot look inside it")
    return path


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: must be a non-empty list of strings")
    return tuple(value)


def _operand(key: str, op: str, value: Any) -> Any:
    if op in ("equals",):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string")
        return value
    if op in ("one_of", "not_one_of"):
        return _strings(key, value)
    if op in ("matches", "not_matches"):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a regular expression string")
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(f"{key}: not a valid regular expression: {exc}") from exc
        return value
    if op in ("present", "absent"):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false")
        return value
    if op == "age_below":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{key}: must be a positive number of years")
        return float(value)
    raise AssertionError(op)


def parse_rule(key: str, table: Any) -> Rule:
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: must be a table with name, action and when")
    unknown = set(table) - {"name", "action", "when", "reason", "enabled"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key (name, action, when, reason, enabled)")
    name = table.get("name")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name) or name == DEFAULT_RULE:
        raise ConfigError(f"{key}.name: {name!r} must be 1-64 letters, digits, '-', '_' or '.' (and not 'default')")
    action = table.get("action")
    if action not in ACTIONS:
        raise ConfigError(f"{key}.action: {action!r} must be one of {', '.join(ACTIONS)}")
    reason = table.get("reason", "")
    if not isinstance(reason, str):
        raise ConfigError(f"{key}.reason: must be a string")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{key}.enabled: must be true or false")
    when = table.get("when")
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"{key}.when: must be a table of attribute = {{ operator = value }} (at least one)")
    conditions = []
    for attr, ops in when.items():
        akey = f"{key}.when.{attr}"
        _attribute(akey, attr)
        if not isinstance(ops, dict) or not ops:
            raise ConfigError(
                f'{akey}: must be a table such as {{ equals = "AP" }} (operators: {", ".join(OPERATORS)})'
            )
        for op, value in ops.items():
            if op not in OPERATORS:
                raise ConfigError(f'{akey}: unknown operator "{op}" (known: {", ".join(OPERATORS)})')
            conditions.append(Condition(attr, op, _operand(f"{akey}.{op}", op, value)))
    return Rule(name, action, tuple(conditions), reason, enabled)


def parse_selection(table: Any, key: str = "selection") -> Selection:
    """`[selection]` with `default` and `[[selection.rules]]`; without `rules` the built-in set applies."""
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: must be a table with default and rules")
    unknown = set(table) - {"default", "rules"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key (default, rules)")
    default = table.get("default", "analyse")
    if default not in ACTIONS:
        raise ConfigError(f"{key}.default: {default!r} must be one of {', '.join(ACTIONS)}")
    if "rules" not in table:
        return Selection(DEFAULT_SELECTION.rules, default)
    rules_value = table["rules"]
    if not isinstance(rules_value, list):
        raise ConfigError(f"{key}.rules: must be an array of tables ([[{key}.rules]])")
    rules = tuple(parse_rule(f"{key}.rules[{i}]", r) for i, r in enumerate(rules_value))
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ConfigError(f"{key}.rules[{i}].name: {rule.name!r} is used by an earlier rule")
        seen.add(rule.name)
    return Selection(rules, default)


# -- the default rule set (configs/node.toml writes the same rules out, every line explained) ---

_DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"

DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "name": "for-processing-class",
        "action": "skip",
        "reason": "DX For Processing: raw detector data, the models were trained on processed images",
        "when": {"SOPClassUID": {"equals": _DX_FOR_PROCESSING}},
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
        "name": "not-chest",
        "action": "skip",
        "reason": "body part is not the chest",
        "when": {"BodyPartExamined": {"not_one_of": ["CHEST", "THORAX", "LUNG"]}},
    },
    {
        "name": "lateral-view",
        "action": "skip",
        "reason": "a lateral view: the models read frontal (AP/PA) radiographs",
        "when": {"ViewPosition": {"one_of": ["LL", "RL", "LATERAL"]}},
    },
    {
        "name": "oblique-view",
        "action": "skip",
        "reason": "an oblique view: the models read frontal (AP/PA) radiographs",
        "when": {"ViewPosition": {"one_of": ["LLO", "RLO", "OBLIQUE"]}},
    },
    {
        "name": "lateral-view-code",
        "action": "skip",
        "reason": "the view code says lateral or oblique: the models read frontal radiographs",
        "when": {"ViewCodeSequence.CodeMeaning": {"matches": r"^(?!.*decubitus).*\b(lateral|oblique)\b"}},
    },
    {
        "name": "paediatric",
        "action": "skip",
        "reason": "patient younger than 18 years: the models were trained on adults",
        "when": {"PatientAge": {"age_below": 18}},
    },
    {
        "name": "manufacturer-not-allowed",
        "action": "skip",
        "enabled": False,
        "reason": "the modality's manufacturer is not on the allow-list",
        "when": {"Manufacturer": {"not_matches": r"^(agfa|ge\b|general electric)"}},
    },
]

DEFAULT_SELECTION = Selection(tuple(parse_rule(f"DEFAULT_RULES[{i}]", r) for i, r in enumerate(DEFAULT_RULES)))


__all__ = [
    "ACTIONS",
    "DEFAULT_SELECTION",
    "OPERATORS",
    "Check",
    "Condition",
    "Decision",
    "Rule",
    "Selection",
    "age_in_years",
    "attribute_text",
    "parse_rule",
    "parse_selection",
]
