"""Wake-up signals: a resting loop looks again when told, in-process and through PostgreSQL NOTIFY."""

from __future__ import annotations

import threading

import pytest

from cxr_node.events import Notifier, PgNotifier, notifier_for
from cxr_node.polling import PollingLoop
from cxr_node.queue.tables import make_engine

LONG_REST_S = 600.0  # far longer than any wait below: a step can only come from a wake


def _counting_loop():
    steps = []
    stepped = threading.Event()

    def step():
        steps.append(1)
        stepped.set()
        return 0

    return PollingLoop("test-loop", step, LONG_REST_S), steps, stepped


def test_wake_ends_the_rest():
    loop, steps, stepped = _counting_loop()
    loop.start()
    try:
        assert stepped.wait(10)
        stepped.clear()
        loop.wake()
        assert stepped.wait(10), "the loop did not look again after wake()"
        assert len(steps) == 2
    finally:
        loop.stop(timeout_s=10)


def test_stop_ends_the_rest():
    loop, _, stepped = _counting_loop()
    loop.start()
    assert stepped.wait(10)
    loop.stop(timeout_s=10)
    assert not loop._thread.is_alive()


def test_wake_during_a_step_is_not_lost():
    entered, release = threading.Event(), threading.Event()
    calls = []

    def step():
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            release.wait(10)
        return 0

    loop = PollingLoop("test-loop", step, LONG_REST_S)
    loop.start()
    try:
        assert entered.wait(10)
        loop.wake()  # arrives while the first step runs
        release.set()
        for _ in range(100):
            if len(calls) >= 2:
                break
            threading.Event().wait(0.1)
        assert len(calls) >= 2, "a wake that arrived mid-step was dropped"
    finally:
        loop.stop(timeout_s=10)


def test_notifier_delivers_to_its_channel_only():
    notifier = Notifier()
    got = []
    notifier.subscribe("jobs", lambda: got.append("jobs"))
    notifier.subscribe("exports", lambda: got.append("exports"))
    notifier.notify("jobs")
    assert got == ["jobs"]
    with pytest.raises(ValueError, match="unknown channel"):
        notifier.subscribe("job", lambda: None)


def test_a_failing_subscriber_does_not_break_notify():
    notifier = Notifier()
    got = []
    notifier.subscribe("jobs", lambda: 1 / 0)
    notifier.subscribe("jobs", lambda: got.append(1))
    notifier.notify("jobs")
    assert got == [1]


def test_sqlite_gets_the_in_process_notifier(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    assert type(notifier_for(engine)) is Notifier


@pytest.mark.peers
def test_postgres_notify_wakes_another_process_listener(postgres):
    """Two notifiers on one database stand for two processes: one announces, the other wakes."""
    engine_a, engine_b = make_engine(postgres.url), make_engine(postgres.url)
    sender, listener = notifier_for(engine_a), notifier_for(engine_b)
    assert isinstance(listener, PgNotifier)
    woke = threading.Event()
    listener.subscribe("exports", woke.set)
    listener.start()
    try:
        assert listener.listening.wait(30), "LISTEN did not start"
        sender.notify("jobs")
        assert not woke.wait(1.5), "a jobs notice woke an exports subscriber"
        sender.notify("exports")
        assert woke.wait(15), "NOTIFY did not reach the listener"
    finally:
        listener.stop()
        engine_a.dispose()
        engine_b.dispose()
