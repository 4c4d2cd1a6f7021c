"""deploy/systemd: the units parse cleanly under `systemd-analyze verify` and carry the promised settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "deploy" / "systemd"
INSTALLED_CLI = "/opt/cxr-node/venv/bin/cxr-node"
ROLE_UNITS = {
    "cxr-node.service": [],
    "cxr-node-receiver.service": ["--role", "receiver"],
    "cxr-node-worker@.service": ["--role", "worker", "--no-web"],
    "cxr-node-dispatcher.service": ["--role", "dispatcher", "--no-web"],
    "cxr-node-housekeeping.service": ["--role", "housekeeping", "--no-web"],
}


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        message = "systemd-analyze not installed (Debian package systemd)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return exe


def _parse(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("name", sorted(ROLE_UNITS))
def test_unit_settings(name):
    unit = _parse(UNITS / name)
    assert unit["User"] == ["cxr-node"] and unit["Restart"] == ["on-failure"]
    for key, value in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ReadWritePaths", "/var/lib/cxr-node"),
        ("CapabilityBoundingSet", ""),
    ):
        assert unit[key] == [value], key
    command = unit["ExecStart"][0].split()
    assert command[:4] == [INSTALLED_CLI, "serve", "--config", "/etc/cxr-node/node.toml"]
    assert command[4:] == ROLE_UNITS[name]
    # Only units that may run a worker (GPU) keep the devices.
    assert ("PrivateDevices" in unit) == ("worker" not in name and name != "cxr-node.service")


def _local_copies(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this checkout's venv (verify checks the program exists)."""
    copies = []
    for name in ROLE_UNITS:
        text = (UNITS / name).read_text().replace(INSTALLED_CLI, str(Path(sys.executable).with_name("cxr-node")))
        target = tmp_path / name.replace("@.service", "@1.service")  # a template is verified as an instance
        target.write_text(text)
        copies.append(target)
    return copies


def test_systemd_analyze_verify_is_clean(tmp_path):
    exe = _systemd_analyze()
    out = subprocess.run(
        [exe, "verify", *map(str, _local_copies(tmp_path))], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and (out.stdout + out.stderr).strip() == "", out.stdout + out.stderr


def test_verify_catches_a_mistake(tmp_path):
    """The check above can fail: a misspelt key is reported."""
    exe = _systemd_analyze()
    unit = _local_copies(tmp_path)[0]
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    out = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert "Unknown key 'ProtectSytem'" in out.stdout + out.stderr
