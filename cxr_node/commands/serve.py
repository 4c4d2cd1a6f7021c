"""`cxr-node serve`: run the node until interrupted."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import click

from cxr_node.config import DEFAULT_CONFIG, ConfigError, load_config, with_overrides
from cxr_node.logs import FORMATS, setup_logging
from cxr_node.results.wording import UNTRAINED_MODEL_TEXT
from cxr_node.startup import PASSWORD_ENV, url_has_password, wait_for_database, with_db_password
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
    from cxr_node.memory import tune_malloc
    from cxr_node.node import Node
    from cxr_node.queue.schema import SchemaError
    from cxr_node.results.writer import start_warm_up

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
        os.umask(cfg.umask)  # before anything is created: images, results, SQLite file 0640, dirs 0750
        if db is not None and url_has_password(db):
            click.echo(
                f"cxr-node: warning: --db carries a password, which `ps` shows; use {PASSWORD_ENV} "
                "or node.db_password_file",
                err=True,
            )
        cfg = with_db_password(cfg, os.environ)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    if not wait_for_database(cfg.db_url, stopping, lambda line: click.echo(line, err=True)):
        return  # stopped while waiting for the database
    try:
        if "worker" in cfg.roles:  # process-wide malloc settings of an analysis process, before the models load
            tune_malloc()
        node = Node.build(cfg)
        if node.worker is not None:  # highdicom's tables load now, not on the first radiograph
            start_warm_up()
    except (ConfigError, SchemaError) as exc:  # SchemaError names `cxr-node db upgrade`
        raise click.ClickException(str(exc)) from exc
    node.start()
    from cxr_node.web.wiring import build_web_server

    web = build_web_server(node)
    try:
        if web is not None:
            web.start()
    except RuntimeError as exc:
        node.stop()
        raise click.ClickException(str(exc)) from exc
    parts = [f"roles {', '.join(cfg.roles)}"]
    if node.receiver:
        ports = [str(node.receiver.port)] if node.receiver.port is not None else []
        if node.receiver.tls_port is not None:
            ports.append(f"{node.receiver.tls_port} (TLS)")
        parts.append(f"listening as {cfg.ae_title} on {cfg.bind}:{' and '.join(ports)}")
    if node.worker:
        model = node.worker.model
        parts.append(f"models {model.label}{'' if model.trained else f' ({UNTRAINED_MODEL_TEXT})'}")
    parts.append(f"results to {', '.join(cfg.destination_names) or 'disk only'}")
    if web is not None:
        parts.append(f"status page http://{cfg.web_bind}:{web.port}/")
    if log_format == "json":  # every line a JSON object, for the log collector
        logging.getLogger("cxr_node.serve").info("cxr-node: " + "; ".join(parts))
    else:
        click.echo("cxr-node: " + "; ".join(parts), err=True)
    stopping.wait()
    if web is not None:
        web.stop()
    node.stop()
