"""Finding 4: hostile or idle connections cannot lock modalities out.

Before, 10 connections sending half an A-ASSOCIATE-RQ (declared length 4 GB) blocked the node
for as long as they stayed open, and idle associations or bare TCP connections blocked real
senders for 30-60 s (pynetdicom's default of 10 associations, no network timeout). Now the
limit is receiver.max_associations and every silent connection is dropped after
receiver.network_timeout_s. Everything here is on 127.0.0.1 with bounded loops and times.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from cxr_node.config import NodeConfig
from cxr_node.dicom.receiver import ReceiverSettings
from cxr_node.queue.tables import instances
from tests import peers
from tests.dicom_factory import gradient, make_radiograph
from tests.receiver_harness import ReceiverNode

HOSTILE_EACH = 7  # 7 half PDUs + 7 idle associations + 6 bare TCP = 20


def _half_associate_rq(port: int) -> socket.socket:
    """An A-ASSOCIATE-RQ PDU header declaring 4 GB, then the first 68 bytes of its body, then silence."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(
        struct.pack(">BBL", 0x01, 0x00, 0xFFFFFFFF)
        + struct.pack(">HH", 1, 0)
        + b"CXR_NODE".ljust(16)
        + b"EVIL".ljust(16)
        + bytes(32)
    )
    return s


def _bare_tcp(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _idle_association(port: int):
    ae = AE(ae_title="IDLER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_NODE")
    assert assoc.is_established
    return assoc


def _open_hostiles(port: int):
    sockets = [_half_associate_rq(port) for _ in range(HOSTILE_EACH)]
    sockets += [_bare_tcp(port) for _ in range(20 - 2 * HOSTILE_EACH)]
    idle = [_idle_association(port) for _ in range(HOSTILE_EACH)]
    return sockets, idle


def _closed_by_peer(s: socket.socket, within_s: float) -> bool:
    s.settimeout(within_s)
    try:
        while True:
            data = s.recv(65536)  # an A-ABORT or nothing, then EOF
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _storescu(port: int, path) -> subprocess.CompletedProcess:
    exe = peers.find_program("storescu")
    return subprocess.run(
        [exe, "-d", "-aet", "MODALITY", "-aec", "CXR_NODE", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.peers
def test_a_modality_gets_through_while_20_hostile_connections_are_open(tmp_path):
    cfg = NodeConfig()  # the shipped defaults, on a free port
    settings = ReceiverSettings.from_config(cfg)
    settings.port = 0
    node = ReceiverNode(tmp_path / "node", settings)
    sockets, idle = [], []
    try:
        port = node.receiver.port
        sockets, idle = _open_hostiles(port)
        image = tmp_path / "cr.dcm"
        make_radiograph(gradient()).save_as(image, enforce_file_format=True)
        t0 = time.monotonic()
        out = _storescu(port, image)
        seconds = time.monotonic() - t0
        assert out.returncode == 0, out.stdout + out.stderr
        assert "0x0000: success" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
        assert len(node.rows(instances)) == 1
        # Not after the hostile ones timed out: at once.
        assert seconds < cfg.network_timeout_s, f"storescu took {seconds:.1f} s"
    finally:
        for s in sockets:
            s.close()
        for a in idle:
            a.abort()
        node.stop()


def test_silent_connections_are_dropped_within_the_network_timeout(tmp_path):
    settings = ReceiverSettings("CXR_NODE", "127.0.0.1", 0, network_timeout_s=2.0, acse_timeout_s=2.0)
    node = ReceiverNode(tmp_path / "node", settings)
    sockets, idle = [], []
    try:
        sockets, idle = _open_hostiles(node.receiver.port)
        limit = settings.network_timeout_s + 5.0
        assert all(_closed_by_peer(s, limit) for s in sockets), "a half-sent PDU or bare TCP connection was kept open"
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not all(a.is_aborted or not a.is_alive() for a in idle):
            time.sleep(0.2)
        assert all(a.is_aborted or not a.is_alive() for a in idle), "an idle association was kept open"
    finally:
        for s in sockets:
            s.close()
        for a in idle:
            a.abort()
        node.stop()


def test_max_associations_is_the_configured_limit(tmp_path):
    node = ReceiverNode(tmp_path / "node", ReceiverSettings("CXR_NODE", "127.0.0.1", 0, max_associations=2))
    idle = []
    try:
        idle = [_idle_association(node.receiver.port) for _ in range(2)]
        assert node.send(make_radiograph(gradient())) is None  # rejected: local limit exceeded
        for a in idle:
            a.release()
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline and status is None:
            status = node.send(make_radiograph(gradient()))
            time.sleep(0.2)
        assert status is not None and status.Status == 0x0000
    finally:
        for a in idle:
            a.abort()
        node.stop()
