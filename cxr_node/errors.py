"""Errors shared across the package (kept here so that any module can raise them without import cycles)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is wrong; the message starts with the key (e.g. `node.port: ...`)."""


__all__ = ["ConfigError"]
