"""The ports tests hand to peers: outside the kernel's ephemeral range, never twice, free when handed out."""

import socket

from tests import peers


def test_free_ports_are_below_the_ephemeral_range_distinct_and_bindable():
    low, _high = peers._ephemeral_range()
    ports = [peers.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(peers.LOWEST_TEST_PORT <= port < low for port in ports), ports
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_each_pytest_worker_has_its_own_slice(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    slices = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(set(peers._worker_slice()))
    assert all(slices) and not (slices[0] & slices[1] or slices[1] & slices[2] or slices[0] & slices[2])
