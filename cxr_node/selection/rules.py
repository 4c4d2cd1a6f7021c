"""Which received images are analysed: selection rules as data, one evaluator, and its explanation.

A rule has a name, conditions (all must hold) and an action, `analyse` or `skip`; the first
matching enabled rule decides, else the default action. Decided at receipt from the header
alone (no pixel decoding). A skipped image is still stored and acknowledged; it only gets no
result.

A condition tests a DICOM attribute by keyword (or `SequenceKeyword.Keyword`, first item) or one
of the facts read from the header with the vocabulary (cxr_node.selection.facts):
  body_part  chest, abdomen, ribs, ... | conflict | unrecognised | "" (not stated)
  view       frontal, lateral, oblique, decubitus | conflict | unrecognised | ""
  age        years ("17", "0.5"), from PatientAge or PatientBirthDate | "" (not stated)
Operators: equals "V" | one_of ["V", ...] | not_one_of [...] | matches "regex" | not_matches
"regex" | present = true | absent = true | age_below = YEARS (on `age` or PatientAge).
Values are compared ignoring case and surrounding or repeated spaces; a multi-valued attribute
reads as its values joined by a backslash (ImageType "DERIVED\\SECONDARY"). Value operators
need a value: on an absent or empty attribute or fact they do not hold (test that with
present/absent), so an image whose body part or view nothing states is not skipped by them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from cxr_node.errors import ConfigError
from cxr_node.selection.age import AGE_NOT_STATED_NOTE, parse_age
from cxr_node.selection.facts import FACTS, Fact, derive
from cxr_node.selection.vocabulary import Vocabulary, builtin

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
SITE, BUILTIN = "site", "built-in"  # where a rule comes from


def normalise(text: str) -> str:
    return " ".join(text.split()).upper()


def age_in_years(value: str) -> float | None:
    """A PatientAge value (017Y, 006M, "17", "17 años", ...) in years, or None when it is not one."""
    return parse_age(value)


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
    attribute: str  # a DICOM keyword path or a fact name
    operator: str
    expected: Any

    def evaluate(self, actual: str, years: float | None = None) -> bool:
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
            if years is None:
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
    # Where it comes from: "site" (the config's [[selection.rules]]) or "built-in"; a site rule under a
    # built-in rule's name takes its place. Not compared: the same rule is the same wherever it is written.
    origin: str = field(default=BUILTIN, compare=False)
    replaces_builtin: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Check:
    """One condition as evaluated on one image: what was wanted, what was there, whether it held."""

    rule: str
    condition: Condition
    actual: str
    held: bool
    source: str = ""  # for a fact: the attribute(s) it was read from


@dataclass(frozen=True)
class Decision:
    action: Action
    rule: str  # the deciding rule's name, or "default"
    reason: str
    checks: tuple[Check, ...] = ()  # every condition evaluated, in order, up to the deciding rule
    notes: tuple[str, ...] = ()  # sentences the result must carry (e.g. the age was not stated)

    @property
    def analyse(self) -> bool:
        return self.action == "analyse"


@dataclass(frozen=True)
class Selection:
    rules: tuple[Rule, ...] = ()
    default: Action = "analyse"
    vocabulary: Vocabulary = field(default_factory=builtin)  # never empty: CHEST must mean the chest
    unknown_age: Action = "analyse"  # the stated policy for an image whose age nothing states
    builtin_rules: bool = True  # [selection] defaults: the built-in rules run after the site's

    def facts(self, ds: Dataset) -> dict[str, Fact]:
        return {name: derive(ds, self.vocabulary, name) for name in FACTS}

    def decide(self, ds: Dataset) -> Decision:
        facts: dict[str, Fact] = {}

        def fact(name: str) -> Fact:
            if name not in facts:
                facts[name] = derive(ds, self.vocabulary, name)
            return facts[name]

        checks: list[Check] = []
        decided: Decision | None = None
        for rule in self.rules:
            if not rule.enabled:
                continue
            matched = True
            for cond in rule.conditions:
                if cond.attribute in FACTS:
                    f = fact(cond.attribute)
                    actual, source, held = f.value, f.source, cond.evaluate(f.value, f.years)
                else:
                    actual, source = attribute_text(ds, cond.attribute), ""
                    held = cond.evaluate(actual)
                checks.append(Check(rule.name, cond, actual, held, source))
                if not held:
                    matched = False
                    break  # the rest of this rule's conditions cannot change the outcome
            if matched:
                said = [c for c in checks if c.rule == rule.name]
                reason = rule.reason or f"rule {rule.name} matched"
                details = "; ".join(_said(c) for c in said)
                decided = Decision(
                    rule.action, rule.name, f"{reason} ({details})" if details else reason, tuple(checks)
                )
                break
        if decided is None:
            decided = Decision(
                self.default, DEFAULT_RULE, f"no rule matched: default action {self.default}", tuple(checks)
            )
        if decided.analyse and not fact("age").value:
            decided = replace(decided, notes=(*decided.notes, AGE_NOT_STATED_NOTE))
        return decided


def _said(check: Check) -> str:
    if not check.source:
        return f"{check.condition.attribute} {check.actual!r}"
    if check.actual in ("conflict", "unrecognised", ""):
        return f"{check.condition.attribute} {check.actual or 'not stated'}: {check.source}"
    return f"{check.condition.attribute} {check.actual!r} from {check.source}"


# -- parsing (TOML tables -> rules); every error names the rule and the key --------------------


def _attribute(key: str, path: str) -> str:
    if path in FACTS:
        return path
    parts = path.split(".")
    for i, keyword in enumerate(parts):
        if tag_for_keyword(keyword) is None:
            raise ConfigError(f"{key}: unknown DICOM attribute keyword {keyword!r} (or use a fact: {', '.join(FACTS)})")
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


def parse_rule(key: str, table: Any, origin: str = BUILTIN) -> Rule:
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
    return Rule(name, action, tuple(conditions), reason, enabled, origin)


def layer_rules(key: str, site_tables: Any, builtin: tuple[Rule, ...], use_builtin: bool) -> tuple[Rule, ...]:
    """The site's rules first, then the built-in ones (unless `use_builtin` is false).

    A site rule named like a built-in rule takes its place; `{ name = "paediatric", enabled = false }`
    alone switches a built-in rule off."""
    if not isinstance(site_tables, list):
        raise ConfigError(f"{key}: must be an array of tables ([[{key}]])")
    by_name = {r.name: r for r in builtin}
    site: list[Rule] = []
    seen: set[str] = set()
    for i, table in enumerate(site_tables):
        rkey = f"{key}[{i}]"
        name = table.get("name") if isinstance(table, dict) else None
        if isinstance(table, dict) and name in by_name and set(table) <= {"name", "enabled"}:
            if not use_builtin:
                raise ConfigError(f"{rkey}: switches built-in rule {name!r}, but [selection] defaults = false")
            rule = replace(by_name[name], enabled=_boolean(f"{rkey}.enabled", table.get("enabled", True)))
            rule = replace(rule, origin=SITE, replaces_builtin=True)
        else:
            rule = parse_rule(rkey, table, SITE)
            rule = replace(rule, replaces_builtin=use_builtin and rule.name in by_name)
        if rule.name in seen:
            raise ConfigError(f"{rkey}.name: {rule.name!r} is used by an earlier rule")
        seen.add(rule.name)
        site.append(rule)
    rest = tuple(r for r in builtin if r.name not in seen) if use_builtin else ()
    return (*site, *rest)


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false")
    return value


__all__ = [
    "ACTIONS",
    "BUILTIN",
    "OPERATORS",
    "SITE",
    "Check",
    "Condition",
    "Decision",
    "Rule",
    "Selection",
    "age_in_years",
    "attribute_text",
    "layer_rules",
    "parse_rule",
]
