"""Finding 8 (TLS): the Storage SCP over TLS, tested with DCMTK storescu +tls and pynetdicom.

A test CA, a server certificate and a modality (client) certificate are made with openssl here.
The node is configured from `[tls]` keys through NodeConfig, as `serve` does.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from cxr_node.config import ConfigError, NodeConfig
from cxr_node.dicom.receiver import ReceiverSettings
from cxr_node.dicom.tls import client_context, server_context
from cxr_node.queue.tables import instances
from tests import peers
from tests.dicom_factory import gradient, make_radiograph
from tests.receiver_harness import ReceiverNode

pytestmark = pytest.mark.peers  # every test here makes its certificates with openssl


def _openssl(*args: str, cwd: Path) -> None:
    exe = peers.find_program("openssl")
    out = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _issue(name: str, cn: str, d: Path, san: str | None = None) -> tuple[Path, Path]:
    _openssl(
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-subj",
        f"/CN={cn}",
        "-out",
        f"{name}.csr",
        cwd=d,
    )
    ext = d / f"{name}.ext"
    ext.write_text((f"subjectAltName={san}\n" if san else "") + "basicConstraints=CA:FALSE\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        ext.name,
        "-out",
        f"{name}.crt",
        cwd=d,
    )
    return d / f"{name}.crt", d / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=cxr-node test CA",
        cwd=d,
    )
    server = _issue("server", "localhost", d, "DNS:localhost,IP:127.0.0.1")
    client = _issue("modality", "MODALITY", d)
    # A certificate from another CA: must not get in when client certificates are required.
    other = d / "other"
    other.mkdir()
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=rogue CA",
        cwd=other,
    )
    rogue = _issue("rogue", "ROGUE", other)
    return {"ca": d / "ca.crt", "server": server, "client": client, "rogue": rogue}


def _tls_node(tmp_path, pki, only=True, require_client_cert=True):
    cfg = replace(
        NodeConfig(),
        port=0,
        tls_port=0,
        tls_cert=pki["server"][0],
        tls_key=pki["server"][1],
        tls_ca=pki["ca"],
        tls_require_client_cert=require_client_cert,
        tls_only=only,
    )
    return ReceiverNode(tmp_path / "node", ReceiverSettings.from_config(cfg))


def _image(tmp_path) -> Path:
    path = tmp_path / f"cr{time.monotonic_ns()}.dcm"
    make_radiograph(gradient()).save_as(path, enforce_file_format=True)
    return path


def _storescu(port: int, path: Path, *tls: str) -> subprocess.CompletedProcess:
    exe = peers.find_program("storescu")
    return subprocess.run(
        [exe, "-d", *tls, "-aet", "MODALITY", "-aec", "CXR_NODE", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _ok(out: subprocess.CompletedProcess) -> bool:
    return out.returncode == 0 and "0x0000: success" in (out.stdout + out.stderr).lower()


def test_storescu_over_tls_with_a_client_certificate(tmp_path, pki):
    node = _tls_node(tmp_path, pki)
    try:
        port = node.receiver.tls_port
        cert, key = pki["client"]
        out = _storescu(port, _image(tmp_path), "+tls", str(key), str(cert), "+cf", str(pki["ca"]))
        assert _ok(out), out.stdout + out.stderr
        assert len(node.rows(instances)) == 1
    finally:
        node.stop()


def test_tls_only_refuses_plain_and_unauthenticated_connections(tmp_path, pki):
    node = _tls_node(tmp_path, pki)
    try:
        assert node.receiver.port is None  # no plain listener at all
        port = node.receiver.tls_port
        plain = _storescu(port, _image(tmp_path))
        assert not _ok(plain)
        anonymous = _storescu(port, _image(tmp_path), "+tla", "+cf", str(pki["ca"]))
        assert not _ok(anonymous), anonymous.stdout + anonymous.stderr
        cert, key = pki["rogue"]
        rogue = _storescu(port, _image(tmp_path), "+tls", str(key), str(cert), "+cf", str(pki["ca"]))
        assert not _ok(rogue), rogue.stdout + rogue.stderr
        assert node.rows(instances) == []
    finally:
        node.stop()


def test_plain_and_tls_side_by_side_when_not_tls_only(tmp_path, pki):
    node = _tls_node(tmp_path, pki, only=False, require_client_cert=False)
    try:
        assert _ok(_storescu(node.receiver.port, _image(tmp_path)))
        assert _ok(_storescu(node.receiver.tls_port, _image(tmp_path), "+tla", "+cf", str(pki["ca"])))
        assert len(node.rows(instances)) == 2
    finally:
        node.stop()


def test_pynetdicom_sender_with_the_nodes_client_context(tmp_path, pki):
    """The helper the sender uses: client_context(cfg) verifies the server against tls.ca."""
    node = _tls_node(tmp_path, pki)
    try:
        cert, key = pki["client"]
        sender_cfg = replace(NodeConfig(), tls_cert=cert, tls_key=key, tls_ca=pki["ca"])
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage)
        assoc = ae.associate(
            "127.0.0.1", node.receiver.tls_port, ae_title="CXR_NODE", tls_args=(client_context(sender_cfg), "localhost")
        )
        assert assoc.is_established
        try:
            assert assoc.send_c_store(make_radiograph(gradient())).Status == 0x0000
        finally:
            assoc.release()
    finally:
        node.stop()


def test_a_silent_tcp_connection_on_the_tls_port_blocks_nobody(tmp_path, pki):
    """pynetdicom does the handshake in its accept thread; the node defers it to the association."""
    node = _tls_node(tmp_path, pki)
    silent = socket.create_connection(("127.0.0.1", node.receiver.tls_port))
    try:
        cert, key = pki["client"]
        t0 = time.monotonic()
        out = _storescu(node.receiver.tls_port, _image(tmp_path), "+tls", str(key), str(cert), "+cf", str(pki["ca"]))
        assert _ok(out), out.stdout + out.stderr
        assert time.monotonic() - t0 < NodeConfig().network_timeout_s
    finally:
        silent.close()
        node.stop()


def test_tls_config_errors_name_the_key(tmp_path, pki):
    with pytest.raises(ConfigError, match=r"^tls.key: required"):
        server_context(replace(NodeConfig(), tls_cert=pki["server"][0]))
    with pytest.raises(ConfigError, match=r"^tls.ca: "):
        server_context(
            replace(
                NodeConfig(),
                tls_cert=pki["server"][0],
                tls_key=pki["server"][1],
                tls_require_client_cert=True,
                tls_ca=tmp_path / "missing.pem",
            )
        )
    with pytest.raises(ConfigError, match=r"^tls.cert: cannot load"):
        server_context(replace(NodeConfig(), tls_cert=pki["ca"], tls_key=pki["server"][1]))
    assert server_context(NodeConfig()) is None and client_context(NodeConfig()) is None


def test_client_context_sends_to_dcmtk_storescp_over_tls(tmp_path, pki):
    """The sender's helper against a real TLS peer (DCMTK storescp requiring our client certificate):
    the PACS certificate is checked against tls.ca, host name included."""
    cert, key = pki["server"]
    port = peers.free_port()
    out_dir = tmp_path / "received"
    out_dir.mkdir()
    scp = subprocess.Popen(
        [
            peers.find_program("storescp"),
            "+tls",
            str(key),
            str(cert),
            "+cf",
            str(pki["ca"]),
            "-od",
            str(out_dir),
            "-aet",
            "TLS_PACS",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        peers.wait_until(lambda: scp.poll() is not None or _listening(port), 30, "storescp to listen")
        assert scp.poll() is None
        ccert, ckey = pki["client"]
        ctx = client_context(replace(NodeConfig(), tls_cert=ccert, tls_key=ckey, tls_ca=pki["ca"]))
        ae = AE(ae_title="CXR_NODE")
        ae.add_requested_context(ComputedRadiographyImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="TLS_PACS", tls_args=(ctx, "localhost"))
        assert assoc.is_established
        try:
            assert assoc.send_c_store(make_radiograph(gradient())).Status == 0x0000
        finally:
            assoc.release()
        assert len(list(out_dir.iterdir())) == 1
        # A peer whose certificate does not match the host name is refused by the client side.
        wrong = ae.associate("127.0.0.1", port, ae_title="TLS_PACS", tls_args=(ctx, "pacs.example.org"))
        assert not wrong.is_established
    finally:
        peers.stop_process(scp)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
