"""`cxr-node config check FILE`: is this node config valid? Errors name the key."""

from __future__ import annotations

from pathlib import Path

import click

from cxr_node.config import ConfigError, ConfigErrors, NodeConfig, load_config
from cxr_node.selection.audit import warnings as selection_warnings


@click.group("config")
def command() -> None:
    """Node configuration."""


def deeper_checks(cfg: NodeConfig) -> list[str]:
    """What parsing alone cannot see: paths that must exist. One line each, starting with the key."""
    problems = []
    if cfg.models is not None and not cfg.models.is_dir():
        problems.append(f"models.dir: {cfg.models} is not a directory")
    if cfg.storage.exists() and not cfg.storage.is_dir():
        problems.append(f"node.storage: {cfg.storage} exists and is not a directory")
    from cxr_node.destinations.registry import build_destinations  # each type checks its own keys

    try:
        build_destinations(cfg)
    except ConfigError as exc:
        problems.append(str(exc))
    return problems


@command.command("check")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def check(file) -> None:
    """Exit 0 when FILE is a valid node config; otherwise print each problem (key first) and exit 1.
    Warnings (exit status still 0): the effective selection rules analyse For Processing,
    secondary, lateral, oblique, paediatric or non-chest images."""
    try:
        cfg = load_config(file)
    except ConfigErrors as exc:  # every problem, one line each
        for problem in exc.problems:
            click.echo(f"Error: {problem}", err=True)
        raise SystemExit(1) from exc
    except ConfigError as exc:  # unreadable file, not TOML
        raise click.ClickException(str(exc)) from exc
    problems = deeper_checks(cfg)
    for problem in problems:
        click.echo(f"Error: {problem}", err=True)
    if problems:
        raise SystemExit(1)
    # Valid, but the effective rules let through images the models were not made for: say so.
    for warning in selection_warnings(cfg.selection):
        click.echo(f"Warning: {warning}", err=True)
    dest = (
        ", ".join(
            spec.name + (f" ({', '.join(spec.when)} only)" if spec.when else "") for spec in cfg.destination_specs
        )
        or "none (results kept on disk)"
    )
    web = f"http://{cfg.web_bind}:{cfg.web_port}/" if cfg.web_enabled else "off"
    click.echo(
        f"{file}: OK (AE {cfg.ae_title} on {cfg.bind}:{cfg.port}; roles {', '.join(cfg.roles)}; "
        f"destinations {dest}; status page {web})"
    )
