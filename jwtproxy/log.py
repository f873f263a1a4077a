"""Logging setup: stdlib logging, stable event names, data in `extra`, JSON or text.

Never log a token or key material: callers pass only `sub`, `jti` and digests.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final

ACCESS_LOGGER: Final = "jwtproxy.access"
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def _time(record: logging.LogRecord) -> str:
    """UTC, RFC 3339 with milliseconds: `2026-01-31T12:00:00.123Z`."""
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = _time(record)
        extra = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        line = f"{stamp} {record.levelname.lower():7} {record.name} {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class ParserErrorFilter(logging.Filter):
    """aiohttp logs a request its HTTP parser rejected with the offending line, which can
    be `Authorization: Bearer <token>`: keep the event, drop the text (RFC 8725 spirit:
    never log a token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # imported here: the supervisor sets logging up too and must not load aiohttp (~15 MB)
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg = "http_request_rejected"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.error = type(error).__name__
        return True


def setup_logging(level: str, fmt: str) -> None:
    """One handler on the root logger, so that every line the process writes — ours,
    aiohttp's, asyncio's, Python warnings — comes out in the one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ParserErrorFilter())
    logging.root.handlers[:] = [handler]
    logging.root.setLevel(logging.WARNING)
    ours = logging.getLogger("jwtproxy")
    ours.handlers.clear()
    ours.setLevel(level.upper())
    ours.propagate = True
    logging.captureWarnings(True)  # `warnings.warn` lines too (logger py.warnings)
