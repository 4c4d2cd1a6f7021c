"""C-STORE statuses as data: the codes the node answers or meets, read against pynetdicom's tables.

pynetdicom keeps the Storage Service Class statuses (PS3.4 Annex B.2.3) as a table of code ->
(category, meaning); the names here are the cases the node uses, and every decision ("was it
stored?") and every message ("0x0122 Refused: SOP Class Not Supported") goes through that table.
"""

from __future__ import annotations

from pynetdicom.status import (
    GENERAL_STATUS,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (disk, database): the sender may retry
DATASET_DOES_NOT_MATCH = 0xA900  # Error: Data Set does not match SOP Class (a header check failed)
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand
SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: SOP Class not supported (the peer takes no context for it)


def status_ok(code: int | None) -> bool:
    """Success or a warning (0xB000, 0xB006, 0xB007): the object was stored."""
    return code is not None and code_to_category(code) in (STATUS_SUCCESS, STATUS_WARNING)


def status_meaning(code: int) -> str:
    """`0x0122 Refused: SOP Class Not Supported`: the code and what the standard calls it."""
    found = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code)
    return f"0x{code:04X} {found[1] if found else code_to_category(code)}"


__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_DOES_NOT_MATCH",
    "OUT_OF_RESOURCES",
    "SOP_CLASS_NOT_SUPPORTED",
    "SUCCESS",
    "status_meaning",
    "status_ok",
]
