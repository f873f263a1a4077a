"""Logging setup: stdlib logging, stable event names, data in `extra`, JSON or text.

Never log a token or key material: callers pass only `sub`, `jti` and digests.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from typing import Any, Final

ACCESS_LOGGER: Final = "jwtproxy.access"
_RECORD_ATTRIBUTES: Final = tuple(vars(logging.makeLogRecord({})))
_STANDARD: Final = frozenset(_RECORD_ATTRIBUTES) | {"message", "asctime"}
_ENCODER: Final = json.JSONEncoder(default=str, separators=(",", ":"))  # one, not one a line


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's `extra`: what makeRecord set after LogRecord's own attributes (looked
    at alone: testing all ~25 attributes of every access line cost more than the rest)."""
    return {key: value
            for key, value in itertools.islice(vars(record).items(), len(_RECORD_ATTRIBUTES), None)
            if key not in _STANDARD}


class _LineFormatter(logging.Formatter):
    """A record as one line; `line` is what AccessLog writes without a record."""

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(record.created, record.levelname.lower(), record.name,
                         record.getMessage(), _fields(record), exception)

    @staticmethod
    def line(created: float, level: str, logger: str, event: str, fields: dict[str, Any],
             exception: str | None = None) -> str:
        raise NotImplementedError


class JsonFormatter(_LineFormatter):
    @staticmethod
    def line(created: float, level: str, logger: str, event: str, fields: dict[str, Any],
             exception: str | None = None) -> str:
        entry: dict[str, Any] = {
            "time": _time(created), "level": level, "logger": logger, "event": event}
        entry.update(fields)
        if exception is not None:
            entry["exception"] = exception
        return _ENCODER.encode(entry)


_second: list[Any] = [None, ""]  # the last second formatted, and its text


def _time(created: float) -> str:
    """UTC, RFC 3339 with milliseconds: `2026-01-31T12:00:00.123Z` (the seconds formatted
    once per second: strftime per line was a tenth of an access line's cost)."""
    second = int(created)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int((created - second) * 1000):03d}Z"


class TextFormatter(_LineFormatter):
    @staticmethod
    def line(created: float, level: str, logger: str, event: str, fields: dict[str, Any],
             exception: str | None = None) -> str:
        extra = " ".join(f"{key}={value}" for key, value in fields.items())
        line = f"{_time(created)} {level:7} {logger} {event}"
        line = f"{line} {extra}" if extra else line
        if exception is not None:
            line += "\n" + exception
        return line


class AccessLog:
    """Each request's access line (`jwtproxy.access`, event `request`, at info). With
    logging as `setup_logging` leaves it (one stderr handler on the root, no other handler
    or filter on the way), the line is formatted and written here: the stdlib's record,
    handler lock, filters and formatter cost ~20 µs a line, a third of a proxied request.
    With any other handler in place (a test's log capture, an embedding program's), the
    line goes through `logging` as any other."""

    def __init__(self) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, fields: dict[str, Any]) -> None:
        handlers, parent = logging.root.handlers, self.logger.parent
        if (len(handlers) != 1 or type(handlers[0]) is not _StderrHandler
                or self.logger.handlers or self.logger.filters
                or parent is None or parent.handlers or parent.filters):
            self.logger.info("request", extra=fields)
            return
        handler = handlers[0]
        formatter = handler.formatter
        assert isinstance(formatter, _LineFormatter)
        line = formatter.line(time.time(), "info", ACCESS_LOGGER, "request", fields)
        try:
            with handler.lock:  # type: ignore[union-attr]
                handler.stream.write(line + handler.terminator)
                handler.stream.flush()
        except Exception:  # a closed stderr: logging reports it (handleError), never the request
            self.logger.info("request", extra=fields)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler setup_logging installs (its filter lets access lines through)."""


class ParserErrorFilter(logging.Filter):
    """aiohttp logs a request its HTTP parser rejected with the offending line, which can
    be `Authorization: Bearer <token>`: keep the event, drop the text (RFC 8725 spirit:
    never log a token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True  # every access line: no import statement run for it
        # imported here: the supervisor sets logging up too and must not load aiohttp (~15 MB)
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1]
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
    # what no line of ours shows, not gathered for each record (logging HOWTO,
    # "Optimization"): the caller's frame, the thread and the process names
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ParserErrorFilter())
    logging.root.handlers[:] = [handler]
    logging.root.setLevel(logging.WARNING)
    ours = logging.getLogger("jwtproxy")
    ours.handlers.clear()
    ours.setLevel(level.upper())
    ours.propagate = True
    logging.captureWarnings(True)  # `warnings.warn` lines too (logger py.warnings)
