"""Starlette app: GET / (status page), /metrics, /healthz, /readyz. Read-only: no route writes.

With a token configured every route but /healthz needs it, as `Authorization: Bearer TOKEN`
or as the password of HTTP basic auth (browsers prompt for it; any user name).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Callable
from datetime import datetime

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from cxr_node.metrics import CONTENT_TYPE, NodeMetrics
from cxr_node.queue.reports import Reports
from cxr_node.web.health import Readiness
from cxr_node.web.page import NodeInfo, render_status

OPEN_PATHS = ("/healthz",)


def _token_given(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def create_app(
    reports: Reports,
    metrics: NodeMetrics,
    readiness: Readiness,
    info: NodeInfo,
    clock: Callable[[], datetime],
    token: str = "",
) -> Starlette | TokenGate:
    async def status(request: Request) -> Response:
        html = await run_in_threadpool(render_status, reports, info, clock())
        return HTMLResponse(html)

    async def metrics_route(request: Request) -> Response:
        body = await run_in_threadpool(metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        checks = await run_in_threadpool(readiness.run)
        ready = all(c.ok for c in checks)
        body = {"ready": ready, "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}}
        return Response(
            json.dumps(body, indent=1) + "\n", status_code=200 if ready else 503, media_type="application/json"
        )

    app = Starlette(
        routes=[
            Route("/", status),
            Route("/metrics", metrics_route),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ]
    )

    return TokenGate(app, token) if token else app


class TokenGate:
    """ASGI wrapper: 401 with a basic-auth challenge unless the request carries the token."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = _token_given(Request(scope))
            if given is None or not hmac.compare_digest(given.encode(), self.token):
                response = PlainTextResponse(
                    "token required\n",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="cxr-node", charset="UTF-8"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
