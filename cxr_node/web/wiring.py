"""Builds the web server of a running node from its config (used by `serve`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cxr_node.metrics import NodeMetrics
from cxr_node.queue.reports import Reports
from cxr_node.web.app import create_app
from cxr_node.web.health import Readiness
from cxr_node.web.page import NodeInfo, read_patient
from cxr_node.web.server import WebServer


def utc_now() -> datetime:
    return datetime.now(UTC)


def build_web_server(
    node, clock: Callable[[], datetime] = utc_now, started_at: datetime | None = None
) -> WebServer | None:
    """The status page, /metrics, /healthz and /readyz for `node`; None when web.enabled is off."""
    cfg = node.config
    if not cfg.web_enabled:
        return None
    started_at = started_at or clock()
    reports = Reports(node.queue.engine)
    model = node.worker.model if node.worker is not None else None
    metrics = NodeMetrics(reports, model, started_at=started_at.timestamp())
    readiness = Readiness(
        reports,
        cfg.storage,
        cfg.min_free_mb,
        # A worker process is ready only with its models in memory (Node.build loads them before serving),
        # and not while the models' last batch failed as a whole (a model or device fault).
        model_loaded=(lambda: node.worker.model_problem() if node.worker.analyzer is not None else "models not loaded")
        if node.worker
        else None,
        decoding=node.decode_pool.health if node.decode_pool is not None else None,
    )
    info = NodeInfo(
        ae_title=cfg.ae_title,
        roles=tuple(cfg.roles),
        started_at=started_at,
        model=model,
        model_trained_on=getattr(model, "trained_on", None),
        domain_check=node.worker.analyzer.domain_status if node.worker is not None else None,
        destinations=tuple(cfg.destination_names),
        show_patient=cfg.web_show_patient,
        patient_of=read_patient if cfg.web_show_patient else None,
    )
    app = create_app(reports, metrics, readiness, info, clock, token=cfg.web_token)
    return WebServer(app, cfg.web_bind, cfg.web_port)
