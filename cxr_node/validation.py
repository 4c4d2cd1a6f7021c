"""The one set of config checks shared by the node (cxr_node.config) and training (training.config).

Each checker takes the TOML key and the value and returns the value (possibly converted) or
raises ConfigError with a message that starts with the key, e.g. `node.port: 'x' is not ...`.
Choices that the command line also offers live here once, so click choices derive from them.
"""

from __future__ import annotations

import dataclasses
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxr_node.errors import ConfigError

Check = Callable[[str, Any], Any]

ROLE_NAMES: tuple[str, ...] = ("receiver", "worker", "dispatcher", "housekeeping")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 chars, no backslash, no control chars


def ae_title(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _AET.match(value) or not value.strip():
        raise ConfigError(f"{key}: {value!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)")
    return value.strip()


def port(key: str, value: Any, listen: bool = False) -> int:
    lowest = 0 if listen else 1  # listening on port 0 takes any free port (tests, demo)
    if not isinstance(value, int) or isinstance(value, bool) or not lowest <= value <= 65535:
        raise ConfigError(f"{key}: {value!r} is not a TCP port ({lowest}-65535)")
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive(key: str, v: Any) -> Any:
    if not _is_number(v) or v <= 0:
        raise ConfigError(f"{key}: {v!r} must be a positive number")
    return v


def non_negative(key: str, v: Any) -> Any:
    if not _is_number(v) or v < 0:
        raise ConfigError(f"{key}: {v!r} must be a number >= 0")
    return v


def number(key: str, v: Any) -> float:
    if not _is_number(v) or v != v or v in (float("inf"), float("-inf")):
        raise ConfigError(f"{key}: {v!r} must be a finite number")
    return float(v)


def string(key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{key}: {v!r} must be a string")
    return v


def owner_only(key: str, path: Path) -> Path:
    """A secret's file (password, private key, token) that group or others can read is refused,
    as OpenSSH and PostgreSQL do: another account on the host must not be able to copy it."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{key}: {path} is readable by group or others (mode {mode:04o}); chmod 600 it")
    return path


def time_zone(key: str, v: Any) -> str:
    """An IANA zone name the system's tz database knows ("Europe/Madrid"), or "" for the server's own."""
    from zoneinfo import ZoneInfo

    if not isinstance(v, str):
        raise ConfigError(f"{key}: {v!r} must be a string")
    if v:
        try:
            ZoneInfo(v)
        except (KeyError, ValueError, OSError) as exc:  # not found (a KeyError), a malformed or unreadable key
            raise ConfigError(
                f'{key}: {v!r} is not a time zone (an IANA name such as Europe/Madrid, or "" for the server\'s)'
            ) from exc
    return v


def boolean(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: {v!r} must be true or false")
    return v


def int_range(lo: int, hi: int) -> Check:
    def check(key: str, v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ConfigError(f"{key}: {v!r} must be an integer in {lo}..{hi}")
        return v

    return check


def choice(*options: str) -> Check:
    def check(key: str, v: Any) -> str:
        if v not in options:
            raise ConfigError(f"{key}: {v!r} must be one of {', '.join(options)}")
        return v

    return check


def device(key: str, v: Any) -> str:
    if not isinstance(v, str) or not _DEVICE.match(v):
        raise ConfigError(f"{key}: {v!r} must be {DEVICE_HELP}")
    return v


def roles(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)) or not v:
        raise ConfigError(f"{key}: must be a non-empty list of roles ({', '.join(ROLE_NAMES)})")
    for i, role in enumerate(v):
        if role not in ROLE_NAMES:
            raise ConfigError(f"{key}[{i}]: {role!r} is not a role ({', '.join(ROLE_NAMES)})")
    return tuple(dict.fromkeys(v))


def like_default(key: str, value: Any, default: Any) -> Any:
    """A value of the same type as the field's default (bool, int, float or str)."""
    if isinstance(default, bool):
        return boolean(key, value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: {value!r} must be an integer")
        return value
    if isinstance(default, float):
        if not _is_number(value):
            raise ConfigError(f"{key}: {value!r} must be a number")
        return float(value)
    return string(key, value)


def section_from_table(section: str, table: Any, kind: type) -> Any:
    """A frozen dataclass section (training's [run], [optim], ...) from its TOML table:
    unknown keys are errors, each value checked against its default's type."""
    if not isinstance(table, dict):
        raise ConfigError(f"{section}: must be a table [{section}]")
    defaults = kind()
    known = {f.name for f in dataclasses.fields(kind)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key (known: {', '.join(sorted(known))})")
        values[key] = like_default(f"{section}.{key}", value, getattr(defaults, key))
    return kind(**values)


__all__ = [
    "DEVICE_HELP",
    "PRECISIONS",
    "ROLE_NAMES",
    "Check",
    "ConfigError",
    "boolean",
    "choice",
    "device",
    "int_range",
    "like_default",
    "non_negative",
    "positive",
    "roles",
    "section_from_table",
    "string",
]
