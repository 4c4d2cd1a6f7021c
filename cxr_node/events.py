"""Wake-up signals between the roles: "there are new jobs" / "there are exports to send".

The queue calls `notify("jobs")` after it commits a job that can be claimed and
`notify("exports")` after it commits exports; the worker and the dispatcher subscribe
their loop's `wake`. `Notifier` delivers inside the process (roles sharing a process);
`PgNotifier` also sends PostgreSQL NOTIFY and LISTENs, so a receiver in one process
wakes a worker in another. A lost signal only costs time: the loops still poll.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text

log = logging.getLogger(__name__)

CHANNELS = ("jobs", "exports")


class Notifier:
    """In-process signals. Callbacks run on the notifying thread, so they must be quick (set an Event)."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Callable[[], None]]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, channel: str, callback: Callable[[], None]) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r} (known: {', '.join(CHANNELS)})")
        with self._lock:
            self._subscribers[channel].append(callback)

    def notify(self, channel: str) -> None:
        self._deliver(channel)

    def _deliver(self, channel: str) -> None:
        with self._lock:
            callbacks = list(self._subscribers.get(channel, ()))
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a broken subscriber must not fail the queue write that notified
                log.exception("wake-up callback for %s failed", channel)

    def start(self) -> None:
        """Nothing to run in-process; `PgNotifier` starts its listener here."""

    def stop(self) -> None:
        pass


def _pg_channel(channel: str) -> str:
    return f"cxr_node_{channel}"


def _psycopg_connect(engine: Engine):
    """A plain autocommit psycopg connection to the engine's database (LISTEN needs its own, held open)."""
    import psycopg

    url = engine.url
    params: dict[str, Any] = {k: v for k, v in dict(url.query).items() if isinstance(v, str)}
    conn = psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
        autocommit=True,
        **params,
    )
    return conn


class PgNotifier(Notifier):
    """In-process signals plus PostgreSQL NOTIFY/LISTEN for roles in other processes or hosts."""

    def __init__(self, engine: Engine, reconnect_s: float = 5.0, connect: Callable | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.reconnect_s = reconnect_s
        self._connect = connect or (lambda: _psycopg_connect(engine))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set while LISTEN is active (tests wait on it)

    def notify(self, channel: str) -> None:
        self._deliver(channel)
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": _pg_channel(channel)})
                conn.commit()
        except Exception as exc:  # the other processes fall back to polling
            log.warning("NOTIFY %s failed: %s", channel, exc)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._listen_forever, name="cxr-listen", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _listen_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen_once()
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); polling until it is back", exc)
            self.listening.clear()
            self._stop.wait(self.reconnect_s)

    def _listen_once(self) -> None:
        with self._connect() as conn:
            for channel in CHANNELS:
                conn.execute(f"LISTEN {_pg_channel(channel)}")
            self.listening.set()
            by_name = {_pg_channel(c): c for c in CHANNELS}
            while not self._stop.is_set():
                # Returns after the timeout so stop() is honoured within a second.
                for note in conn.notifies(timeout=1.0):
                    if note.channel in by_name:
                        self._deliver(by_name[note.channel])


def notifier_for(engine: Engine) -> Notifier:
    """PostgreSQL gets cross-process signals; SQLite (one host, usually one process) the in-process ones."""
    return PgNotifier(engine) if engine.dialect.name == "postgresql" else Notifier()
