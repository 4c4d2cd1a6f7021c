"""TLS contexts for DICOM associations, built from the `[tls]` keys of the node config.

The Storage SCP and the C-STORE SCU (sender / destinations) use the same certificate,
key and CA bundle:

    server_context(cfg)  -> ssl.SSLContext for AE.start_server(ssl_context=...), or None
    client_context(cfg)  -> ssl.SSLContext for AE.associate(tls_args=(ctx, host)), or None

None means TLS is not configured (`tls.cert` empty). Errors are ConfigErrors naming the key.
The receiver's server defers the handshake to the association thread (BoundedAssociationServer).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cxr_node import validation as V
from cxr_node.config import ConfigError, NodeConfig


def _existing(key: str, path: Path | None) -> str:
    if path is None:
        raise ConfigError(f"{key}: required when tls.cert is set")
    if not Path(path).is_file():
        raise ConfigError(f"{key}: {path} is not a readable file")
    return str(path)


def _load_identity(ctx: ssl.SSLContext, cfg: NodeConfig) -> None:
    cert = _existing("tls.cert", cfg.tls_cert)
    key = _existing("tls.key", cfg.tls_key)
    V.owner_only("tls.key", Path(key))
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls.cert: cannot load {cert} with key {key}: {exc}") from exc


def _load_ca(ctx: ssl.SSLContext, cfg: NodeConfig) -> None:
    ca = _existing("tls.ca", cfg.tls_ca)
    try:
        ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls.ca: cannot load {ca}: {exc}") from exc


def server_context(cfg: NodeConfig) -> ssl.SSLContext | None:
    """The Storage SCP's context; client certificates are verified against tls.ca when required."""
    if cfg.tls_cert is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_identity(ctx, cfg)
    if cfg.tls_require_client_cert:
        _load_ca(ctx, cfg)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cfg: NodeConfig) -> ssl.SSLContext | None:
    """The sender's context: verifies the peer against tls.ca and presents the node's certificate."""
    if cfg.tls_cert is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_identity(ctx, cfg)  # first: a key others can read is refused before anything is loaded
    _load_ca(ctx, cfg)
    return ctx


__all__ = ["client_context", "server_context"]
