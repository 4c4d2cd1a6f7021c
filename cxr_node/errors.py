"""Errors shared across the package (kept here so that any module can raise them without import cycles)."""

from __future__ import annotations

import re


class ConfigError(ValueError):
    """A setting is wrong; the message starts with the key (e.g. `node.port: ...`)."""


class ConfigErrors(ConfigError):
    """Every problem found in one config, one line each (`config check` and `serve` print them all)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


_CODE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


class NotAnalysable(ValueError):
    """The image holds too little for an answer: no class is given, the job ends `not_analysable`.

    `code` is short and stable (a metric label and the jobs list's tag: "too-small",
    "out-of-domain", ...); `reason` is one plain sentence for the operator, naming what was
    measured against which setting. Not an error: nothing is retried and nothing is wrong with
    the node. Raise it from any per-image step of cxr_node.processing.process_batch. A ValueError, so
    that code which skips unreadable images (training) skips these too.
    """

    def __init__(self, code: str, reason: str) -> None:
        if not _CODE.match(code):
            raise ValueError(f"NotAnalysable code {code!r}: 1-32 of a-z, 0-9 and '-', starting with a letter")
        super().__init__(code, reason)
        self.code = code
        self.reason = " ".join(reason.split())

    def __str__(self) -> str:
        return self.reason


__all__ = ["ConfigError", "ConfigErrors", "NotAnalysable"]
