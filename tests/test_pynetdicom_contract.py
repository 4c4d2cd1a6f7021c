"""The pynetdicom internals the receiver relies on, checked so that a release that changes them
fails here, loudly, instead of silently unbounding or leaking the receiver's servers.

cxr_node.dicom.receiver relies on three things pynetdicom does not promise as public API:
- `AE.make_server(address, ..., server_class=...)` builds a server without starting it;
- `AE._servers` is the list `AE.shutdown()` stops and `AssociationServer.shutdown()` removes
  itself from (so the receiver appends its servers there, as `AE.start_server` does);
- `AssociationServer.get_request()` is what socketserver calls to accept a connection, and the
  server has `socket`, `ae` and `ssl_context` attributes (BoundedAssociationServer overrides it to
  put every accepted socket under `ae.network_timeout`).
"""

from __future__ import annotations

import inspect
import socket
import socketserver
import struct
import threading

from pynetdicom import AE
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationServer, ThreadedAssociationServer

from cxr_node.dicom.receiver import BoundedAssociationServer


def test_make_server_takes_a_server_class() -> None:
    parameters = inspect.signature(AE.make_server).parameters
    assert "server_class" in parameters and "ssl_context" in parameters and "evt_handlers" in parameters


def test_get_request_is_the_accept_hook_we_override() -> None:
    # socketserver accepts through get_request(); pynetdicom overrides it for TLS, so do we.
    assert "self.get_request()" in inspect.getsource(socketserver.BaseServer._handle_request_noblock)
    assert list(inspect.signature(AssociationServer.get_request).parameters) == ["self"]
    assert issubclass(BoundedAssociationServer, ThreadedAssociationServer)
    assert BoundedAssociationServer.get_request is not AssociationServer.get_request


def _bounded_server(ae: AE) -> BoundedAssociationServer:
    server = ae.make_server(("127.0.0.1", 0), server_class=BoundedAssociationServer)
    assert isinstance(server, BoundedAssociationServer)
    assert server.ae is ae and server.ssl_context is None and server.socket is not None
    return server


def test_a_half_sent_pdu_is_dropped_after_the_network_timeout() -> None:
    ae = AE(ae_title="CONTRACT")
    ae.add_supported_context(Verification)
    ae.network_timeout = 0.5
    ae.acse_timeout = 0.5
    server = _bounded_server(ae)
    ae._servers.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(server.server_address[:2], timeout=10) as client:
            client.settimeout(10)
            # An A-ASSOCIATE-RQ header declaring 4 GB, 20 bytes of it, then silence: pynetdicom's
            # own server waits for the rest forever (checked: recv times out); ours closes it.
            client.sendall(struct.pack(">BBL", 0x01, 0x00, 0xFFFFFFFF) + bytes(20))
            try:
                while client.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    finally:
        ae.shutdown()
    # AE.shutdown() stopped our server and AssociationServer.shutdown() removed it from _servers.
    assert ae._servers == []


def test_server_shutdown_removes_itself_from_the_ae() -> None:
    ae = AE(ae_title="CONTRACT")
    ae.add_supported_context(Verification)
    server = _bounded_server(ae)
    ae._servers.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.shutdown()
    assert server not in ae._servers
