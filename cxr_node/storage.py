"""Durable files: write to a temporary name, fsync, rename, fsync the directory.

After `write_durably` returns, the file survives a crash or power loss with its full
content; before it returns, the final name either does not exist or holds an older
complete version. Nothing is ever visible half-written under its final name.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

_SAFE = re.compile(r"[^0-9A-Za-z.\-]")


def safe_name(uid: str) -> str:
    """A UID as a file or directory name (UIDs are digits and dots, but never trust a peer)."""
    cleaned = _SAFE.sub("_", uid.strip())[:64]
    if not cleaned or cleaned in (".", ".."):
        raise ValueError(f"UID {uid!r} cannot be used as a file name")
    return cleaned


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


class StorageLayout:
    """Where things live under the storage directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def instance_path(self, study_uid: str, sop_uid: str) -> Path:
        return self.root / "instances" / safe_name(study_uid) / f"{safe_name(sop_uid)}.dcm"

    def result_dir(self, study_uid: str) -> Path:
        return self.root / "results" / safe_name(study_uid)

    def ensure(self) -> None:
        for sub in ("instances", "results"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
