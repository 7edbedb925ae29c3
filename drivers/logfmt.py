"""Structured logs: one line per event, ``key=value`` pairs (logfmt).

``log_event(logger, "serial_opened", port=...)`` writes
``2026-11-30T08:00:00.123Z INFO pumpgw.serial event=serial_opened port=/dev/ttyACM0``.
Callers never pass secrets; values are quoted when they hold spaces.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        pairs = " ".join(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
        logger.log(level, f"event={event} {pairs}".rstrip())


class _Formatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        line = f"{stamp} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += " exc=" + _quote(self.formatException(record.exc_info))
        return line


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
