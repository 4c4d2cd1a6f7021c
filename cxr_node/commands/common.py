"""Options shared by the operator commands: which database (--db URL or --config FILE)."""

from __future__ import annotations

from pathlib import Path

import click

from cxr_node.config import DEFAULT_CONFIG, NodeConfig, load_config


def load_node_config(config: Path | None) -> NodeConfig:
    """--config FILE, else configs/node.toml when present, else the embedded defaults."""
    return load_config(config if config else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None))


def resolve_db_url(db: str | None, config: Path | None) -> str:
    """--db, else the config's database; the password comes from node.db_password_file or
    CXR_NODE_DB_PASSWORD as for serve, so it never has to be on the command line."""
    import os

    from cxr_node.config import with_overrides
    from cxr_node.startup import with_db_password

    cfg = load_node_config(config)
    if db:
        cfg = with_overrides(cfg, db=db)
    return with_db_password(cfg, os.environ).db_url


def db_options(fn):
    """--db URL and --config FILE (the config's node.db, or SQLite under its storage dir)."""
    fn = click.option(
        "--config",
        "config",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Node config whose database to use [default: configs/node.toml when present].",
    )(fn)
    return click.option("--db", "db", default=None, help="SQLAlchemy URL [default: the config's database].")(fn)


def one_line(exc: BaseException, limit: int = 300) -> str:
    return " ".join(str(exc).split())[:limit]
