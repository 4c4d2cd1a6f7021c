"""A private key that group or others can read is refused with one line, before it is used."""

from __future__ import annotations

import pytest

from cxr_node.config import ConfigError, NodeConfig
from cxr_node.dicom.tls import client_context, server_context


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
@pytest.mark.parametrize("build", [server_context, client_context])
def test_key_readable_by_group_or_others_is_refused(tmp_path, mode, build):
    cert, key, ca = tmp_path / "node.crt", tmp_path / "node.key", tmp_path / "ca.crt"
    for path in (cert, key, ca):
        path.write_text("not used: the mode is checked first\n")
    key.chmod(mode)
    cfg = NodeConfig(tls_cert=cert, tls_key=key, tls_ca=ca)
    with pytest.raises(ConfigError) as err:
        build(cfg)
    assert str(err.value) == f"tls.key: {key} is readable by group or others (mode {mode:04o}); chmod 600 it"


def test_a_key_only_its_owner_reads_gets_past_the_mode_check(tmp_path):
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    cert.write_text("x\n")
    key.write_text("x\n")
    key.chmod(0o600)
    with pytest.raises(ConfigError, match=r"^tls.cert: cannot load"):  # the contents, not the mode
        server_context(NodeConfig(tls_cert=cert, tls_key=key))
