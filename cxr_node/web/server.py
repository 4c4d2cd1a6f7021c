"""Runs the web app with uvicorn in a background thread of the node process."""

from __future__ import annotations

import logging
import threading

import uvicorn

log = logging.getLogger(__name__)


class WebServer:
    def __init__(self, app, bind: str, port: int) -> None:
        self.bind = bind
        self._server = uvicorn.Server(
            # log_config=None: keep the node's logging (text or JSON), not uvicorn's own set-up.
            uvicorn.Config(app, host=bind, port=port, log_config=None, access_log=False, lifespan="off")
        )
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._server.run, name="cxr-web", daemon=True)
        self._thread.start()
        ready = threading.Event()
        while not ready.wait(0.05):
            if self._server.started:
                break
            if not self._thread.is_alive() or (timeout_s := timeout_s - 0.05) <= 0:
                raise RuntimeError(
                    f"web.port: the status page could not listen on {self.bind}:{self._server.config.port}"
                )
        log.info("status page on http://%s:%d/", self.bind, self.port)

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", None)
        if servers:
            return servers[0].sockets[0].getsockname()[1]
        return self._server.config.port

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
