"""Structured logs: one JSON object per line, for access and events alike.

Access lines carry the request id, trace id, principal (key id and team, never the key),
deployment, status, latency and cost; no prompt or answer text. Event lines (reloads, breaker
changes, a Redis outage) carry their message and whatever fields the caller attached with
`extra=`. `logging.format: text` gives the classic human format instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup(fmt: str, level: str) -> None:
    """Configure the root logger once, at process start (the CLI calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # litellm logs every call at INFO through its own handler; Podium's access log says more.
    litellm_log = logging.getLogger("LiteLLM")
    litellm_log.setLevel(logging.WARNING)
    litellm_log.propagate = True
