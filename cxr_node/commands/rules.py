"""`cxr-node rules test FILE|DIR...` (why was this image (not) analysed?), `cxr-node rules show` and
`cxr-node rules words TEXT...` (how the vocabulary reads a description)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cxr_node.config import DEFAULT_CONFIG, ConfigError, load_config
from cxr_node.selection.age import DATE_ATTRIBUTES
from cxr_node.selection.facts import TIERS
from cxr_node.selection.rules import Decision, Rule, Selection
from cxr_node.selection.vocabulary import IGNORE, KINDS, normalise

_config_option = click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Node config whose [selection] to use [default: configs/node.toml when present, else built-in rules].",
)


@click.group("rules")
def command() -> None:
    """Selection rules: which received images are analysed."""


def _selection(config: Path | None) -> tuple[Selection, str]:
    """The selection of --config, else configs/node.toml when present, else the built-in rules;
    and a line saying which, so nobody reads a verdict from rules they did not mean."""
    path = config if config else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    try:
        selection = load_config(path).selection
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if config:
        used = f"config: {config}"
    elif path is not None:
        used = f"config: {path} (no --config given; found in the current directory)"
    else:
        used = f"config: none (no --config given and no {DEFAULT_CONFIG}): built-in defaults"
    site = sum(1 for r in selection.rules if r.origin == "site")
    builtin = sum(1 for r in selection.rules if r.origin != "site")
    layers = f"{site} site rule(s)" + (
        f", then {builtin} built-in" if selection.builtin_rules else ", built-in rules off"
    )
    tables = " + ".join(selection.vocabulary.tables) or "none"
    return selection, f"{used}; {layers}; vocabulary: {tables} ({selection.vocabulary.size()} words and codes)"


def _files(targets: tuple[Path, ...]) -> list[Path]:
    out: list[Path] = []
    for target in targets:
        out.extend(sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target])
    return out


def decision_json(path: Path, decision: Decision, used: str = "") -> dict:
    return {
        "file": str(path),
        "config": used,
        "action": decision.action,
        "rule": decision.rule,
        "reason": decision.reason,
        "notes": list(decision.notes),
        "checks": [
            {
                "rule": c.rule,
                "attribute": c.condition.attribute,
                "operator": c.condition.operator,
                "expected": list(c.condition.expected)
                if isinstance(c.condition.expected, tuple)
                else c.condition.expected,
                "actual": c.actual,
                "held": c.held,
                **({"from": c.source} if c.source else {}),
            }
            for c in decision.checks
        ],
    }


def _facts_text(selection: Selection, ds) -> list[str]:
    """What the header says about body part, view and age, and which attribute said it."""
    lines = []
    for name, fact in selection.facts(ds).items():
        value = fact.value or "(not stated)"
        lines.append(f"  {name:<10} {value:<14} {fact.source}")
    return lines


def _text(path: Path, decision: Decision, facts: list[str]) -> str:
    lines = [
        f"{path}: {decision.action.upper()} by {'rule ' + decision.rule if decision.rule != 'default' else 'default'}"
        f" - {decision.reason}",
        *facts,
    ]
    for c in decision.checks:
        source = f" from {c.source}" if c.source else ""
        lines.append(
            f"  {c.rule:<26} {c.condition.describe():<42} actual {c.actual or '(empty)'!r:<16} "
            f"{'holds' if c.held else 'no'}{source}"
        )
    lines.extend(f"  note: {note}" for note in decision.notes)
    return "\n".join(lines)


@command.command("test")
@click.argument("targets", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@_config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
def test(targets, config, as_json) -> None:
    """For each DICOM file: the rule that decided, each condition with the attribute's actual value
    and whether it held, and the action. Exit status 0 when every file was read."""
    import pydicom

    selection, used = _selection(config)
    if not as_json:
        click.echo(used)
    unreadable = 0
    for path in _files(targets):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # not DICOM, unreadable: one line naming the file, go on
            unreadable += 1
            click.echo(f"error: {path}: cannot read as DICOM: {' '.join(str(exc).split())[:200]}", err=True)
            continue
        decision = selection.decide(ds)
        if as_json:
            click.echo(json.dumps(decision_json(path, decision, used)))
        else:
            click.echo(_text(path, decision, _facts_text(selection, ds)))
    if unreadable:
        raise SystemExit(1)


def _rule_text(rule: Rule) -> str:
    state = "" if rule.enabled else "   (disabled)"
    origin = "site, replaces the built-in rule" if rule.replaces_builtin else rule.origin
    conds = " and ".join(c.describe() for c in rule.conditions)
    return f"{rule.name}: {rule.action} when {conds}{state}   [{origin}]\n    reason: {rule.reason or '-'}"


@command.command("show")
@_config_option
@click.option("--json", "as_json", is_flag=True)
def show(config, as_json) -> None:
    """Print the effective rule set, in the order it is applied."""
    selection, used = _selection(config)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "config": used,
                    "default": selection.default,
                    "unknown_age": selection.unknown_age,
                    "vocabulary": list(selection.vocabulary.tables),
                    "rules": [
                        {
                            "name": r.name,
                            "action": r.action,
                            "enabled": r.enabled,
                            "origin": r.origin,
                            "reason": r.reason,
                            "when": [c.describe() for c in r.conditions],
                        }
                        for r in selection.rules
                    ],
                },
                indent=2,
            )
        )
        return
    click.echo(used)
    for i, rule in enumerate(selection.rules, start=1):
        click.echo(f"{i}. {_rule_text(rule)}")
    click.echo(f"otherwise: {selection.default}")
    for name, tiers in TIERS.items():  # where the facts the rules test come from
        click.echo(f"{name} read from: " + "; then ".join(", ".join(t) for t in tiers))
    click.echo(f"age read from: PatientAge; then PatientBirthDate against {', '.join(DATE_ATTRIBUTES)}")
    click.echo(
        f"unknown age: {selection.unknown_age}"
        + (" (the result says the age was not stated)" if selection.unknown_age == "analyse" else "")
    )


@command.command("words")
@click.argument("texts", nargs=-1, required=True)
@_config_option
def words(texts, config) -> None:
    """How the vocabulary reads each TEXT (a description, a protocol name, a body part value):
    the words it knows, what they mean, and the table each comes from."""
    selection, used = _selection(config)
    click.echo(used)
    for text in texts:
        click.echo(f"{text!r} -> {normalise(text)!r}")
        for kind in KINDS:
            found = selection.vocabulary.read(kind, text)
            meanings = sorted({m.meaning for m in found if m.meaning != IGNORE})
            said = meanings[0] if len(meanings) == 1 else ("several: " + ", ".join(meanings) if meanings else "-")
            click.echo(f"  {kind:<10} {said}")
            for m in found:
                click.echo(f"    {m.phrase!r}: {m.meaning} ({m.entry.table}: {m.entry.source})")
