"""Structured logging: one JSON object per line, with the context fields a log call passes in `extra`.

Every line has the known secrets blanked out (bridge.redact.scrub): libraries log addresses as given.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from bridge.redact import scrub

# Attributes every LogRecord has; anything else on a record came from `extra=` and is context.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        return scrub(f"{record.levelname:<7} {record.name}: {record.getMessage()}" + (f"  {context}" if context else ""))


class _Context(logging.Filter):
    """Fixed fields on every line: a process sharing the bridge's stderr (the sink process) names itself."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__()
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self.fields.items():
            if name not in vars(record):  # a call's own `extra` wins
                setattr(record, name, value)
        return True


def configure_logging(level: str = "INFO", fmt: str = "json", *, context: Mapping[str, Any] | None = None) -> None:
    """One handler on stderr for every logger; `context`: fields every line carries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if context:
        handler.addFilter(_Context(context))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every failed connection attempt (two or three lines each, many per second while a broker
    # is away): the bridge says itself what went wrong and what it waits for, one line every few seconds.
    # At DEBUG its warnings and errors come through, for diagnosing the client itself.
    logging.getLogger("kafka").setLevel(logging.WARNING if root.level <= logging.DEBUG else logging.CRITICAL)
