"""Log set-up for the node: one line per event, as text or JSON.

Identifiers travel as `extra=` fields (job_id, sop_instance_uid, study_instance_uid, calling_aet, ...)
so the JSON form carries them as keys. Nothing here logs patient names or IDs; code elsewhere must
not either at INFO or above (tests/test_admin_logs.py checks a real serve run).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into JSON.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Libraries that are chatty at INFO (pynetdicom logs every PDU; highdicom several per SR and SC; uvicorn every request).
QUIET_LIBRARIES = ("pynetdicom", "highdicom", "uvicorn", "uvicorn.access", "uvicorn.error", "apscheduler", "alembic")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(verbose: bool = False, fmt: str = "text", stream: IO[str] | None = None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"--log-format: {fmt!r} must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
