"""Importing the runtime starts nothing: warm-ups and process-wide settings belong to start-up (serve, infer, bench)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow  # imports the runtime in a fresh interpreter
def test_importing_the_runtime_starts_no_thread():
    # Every Thread.start is recorded, so a short-lived thread counts too.
    code = (
        "import threading\n"
        "started = []\n"
        "start = threading.Thread.start\n"
        "threading.Thread.start = lambda self: (started.append(self.name), start(self))[1]\n"
        "import cxr_node.cli, cxr_node.node, cxr_node.processing, cxr_node.results.writer\n"
        "print(started)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_results_warm_up_is_started_by_its_caller():
    from cxr_node.results.writer import start_warm_up

    thread = start_warm_up()
    thread.join(timeout=120)
    assert thread.name == "cxr-results-warm-up" and not thread.is_alive()
