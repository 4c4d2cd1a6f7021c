"""`cxr-node rules test FILE|DIR...` (why was this image (not) analysed?) and `cxr-node rules show`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cxr_node.commands.common import load_node_config
from cxr_node.config import ConfigError
from cxr_node.dicom.rules import Decision, Rule, Selection

_config_option = click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Node config whose [selection] to use [default: configs/node.toml when present, else built-in rules].",
)


@click.group("rules")
def command() -> None:
    """Selection rules: which received images are analysed."""


def _selection(config: Path | None) -> Selection:
    try:
        return load_node_config(config).selection
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _files(targets: tuple[Path, ...]) -> list[Path]:
    out: list[Path] = []
    for target in targets:
        out.extend(sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target])
    return out


def decision_json(path: Path, decision: Decision) -> dict:
    return {
        "file": str(path),
        "action": decision.action,
        "rule": decision.rule,
        "reason": decision.reason,
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
            }
            for c in decision.checks
        ],
    }


def _text(path: Path, decision: Decision) -> str:
    lines = [
        f"{path}: {decision.action.upper()} by {'rule ' + decision.rule if decision.rule != 'default' else 'default'}"
        f" - {decision.reason}"
    ]
    for c in decision.checks:
        lines.append(
            f"  {c.rule:<26} {c.condition.describe():<58} actual {c.actual or '(empty)'!r:<24} "
            f"{'holds' if c.held else 'no'}"
        )
    return "\n".join(lines)


@command.command("test")
@click.argument("targets", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@_config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
def test(targets, config, as_json) -> None:
    """For each DICOM file: the rule that decided, each condition with the attribute's actual value
    and whether it held, and the action. Exit status 0 when every file was read."""
    import pydicom

    selection = _selection(config)
    unreadable = 0
    for path in _files(targets):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # not DICOM, unreadable: one line naming the file, go on
            unreadable += 1
            click.echo(f"error: {path}: cannot read as DICOM: {' '.join(str(exc).split())[:200]}", err=True)
            continue
        decision = selection.decide(ds)
        click.echo(json.dumps(decision_json(path, decision)) if as_json else _text(path, decision))
    if unreadable:
        raise SystemExit(1)


def _rule_text(rule: Rule) -> str:
    state = "" if rule.enabled else "   (disabled)"
    conds = " and ".join(c.describe() for c in rule.conditions)
    return f"{rule.name}: {rule.action} when {conds}{state}\n    reason: {rule.reason or '-'}"


@command.command("show")
@_config_option
@click.option("--json", "as_json", is_flag=True)
def show(config, as_json) -> None:
    """Print the effective rule set, in the order it is applied."""
    selection = _selection(config)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "default": selection.default,
                    "rules": [
                        {
                            "name": r.name,
                            "action": r.action,
                            "enabled": r.enabled,
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
    for i, rule in enumerate(selection.rules, start=1):
        click.echo(f"{i}. {_rule_text(rule)}")
    click.echo(f"otherwise: {selection.default}")
