"""`cxr-node serve`: run the node until interrupted."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import click

from cxr_node.config import DEFAULT_CONFIG, ConfigError, load_config, with_overrides
from cxr_node.logs import FORMATS, setup_logging
from cxr_node.startup import PASSWORD_ENV, url_has_password
from cxr_node.validation import ROLE_NAMES


@click.command("serve")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help=f"TOML config file [default: {DEFAULT_CONFIG} if it exists].",
)
@click.option("--ae-title", default=None, help="Called AE title of the node.")
@click.option("--port", type=int, default=None, help="DICOM port to listen on.")
@click.option("--bind", default=None, help="Address to listen on.")
@click.option("--storage", type=click.Path(path_type=Path), default=None, help="Storage directory.")
@click.option(
    "--db",
    default=None,
    help="SQLAlchemy database URL without password [default: SQLite under the "
    "storage dir]; the password comes from CXR_NODE_DB_PASSWORD or node.db_password_file.",
)
@click.option("--destination", default=None, help="PACS for the results, AET@HOST:PORT.")
@click.option("--models", type=click.Path(path_type=Path), default=None, help="Model bundle directory.")
@click.option("--allow-untrained", is_flag=True, default=None, help="Run with random weights (results say UNTRAINED).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLE_NAMES),
    help="Run only these roles (repeatable) [default: all].",
)
@click.option("-v", "--verbose", is_flag=True)
@click.option(
    "--web/--no-web",
    "web_enabled",
    default=None,
    help="Serve the status page, /metrics, /healthz, /readyz [default: web.enabled].",
)
@click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="One line per event as text, or as JSON objects with the ids as keys.",
)
def command(
    config_path,
    ae_title,
    port,
    bind,
    storage,
    db,
    destination,
    models,
    allow_untrained,
    device,
    roles,
    verbose,
    log_format,
    web_enabled,
):
    """Run the Storage SCP, the worker and the dispatcher."""
    setup_logging(verbose, log_format)
    try:
        if config_path is None and DEFAULT_CONFIG.is_file():
            config_path = DEFAULT_CONFIG
        cfg = with_overrides(
            load_config(config_path),
            ae_title=ae_title,
            port=port,
            bind=bind,
            storage=storage,
            db=db,
            destination=destination,
            models=models,
            allow_untrained=allow_untrained,
            device=device,
            roles=roles or None,
            web_enabled=web_enabled,
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if db is not None and url_has_password(db):
        click.echo(
            f"cxr-node: warning: --db carries a password, which `ps` shows; use {PASSWORD_ENV} or node.db_password_file",
            err=True,
        )
    # Imported once the config is known good: a wrong key is answered before torch loads (seconds).
    from cxr_node.node import Node
    from cxr_node.queue.schema import SchemaError

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    say: Callable[[str], None]
    if log_format == "json":  # every line a JSON object, for the log collector
        serve_log = logging.getLogger("cxr_node.serve")
        say = serve_log.info
    else:

        def say(line: str) -> None:
            click.echo(line, err=True)

    try:
        Node.run(cfg, stopping, say)
    except (ConfigError, SchemaError, RuntimeError) as exc:  # one line an operator can act on
        raise click.ClickException(str(exc)) from exc
