"""Log formats: in `format: json` every line the process writes is one JSON object (also
aiohttp's, asyncio's and Python warnings); both formats stamp UTC with milliseconds."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import warnings
from collections.abc import Iterator

import pytest

from jwtproxy.log import ACCESS_LOGGER, AccessLog, JsonFormatter, TextFormatter, setup_logging
from tests.proc import proxy_process

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def record(name: str = "jwtproxy.test", msg: str = "an_event") -> logging.LogRecord:
    return logging.makeLogRecord({"name": name, "msg": msg, "levelname": "INFO",
                                  "levelno": logging.INFO, "route": "r"})


def test_text_format_times_carry_milliseconds() -> None:
    line = TextFormatter().format(record())
    stamp, level, logger, event, extra = line.split()
    assert STAMP.fullmatch(stamp), line
    assert (level, logger, event, extra) == ("info", "jwtproxy.test", "an_event", "route=r")


def test_json_format_has_time_level_logger_event() -> None:
    entry = json.loads(JsonFormatter().format(record()))
    assert STAMP.fullmatch(entry.pop("time"))
    assert entry == {"level": "info", "logger": "jwtproxy.test", "event": "an_event",
                     "route": "r"}


@pytest.fixture(params=["json"])
def captured(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """setup_logging on a captured stderr; the logging state is restored afterwards."""
    stream = io.StringIO()
    root, ours = logging.getLogger(), logging.getLogger("jwtproxy")
    saved = (root.handlers[:], root.level, ours.handlers[:], ours.level, ours.propagate)
    monkey = pytest.MonkeyPatch()
    monkey.setattr("sys.stderr", stream)
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkey.setattr(logging, name, getattr(logging, name))
    try:
        setup_logging("info", request.param)
        yield stream
    finally:
        monkey.undo()
        logging.captureWarnings(False)
        root.handlers[:], root.level = saved[0], saved[1]
        ours.handlers[:], ours.level, ours.propagate = saved[2], saved[3], saved[4]


def test_every_logger_and_warnings_come_out_as_json(captured: io.StringIO) -> None:
    logging.getLogger("jwtproxy.app").info("ours")
    logging.getLogger("aiohttp.server").warning("theirs")
    logging.getLogger("asyncio").error("loop trouble")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    logging.getLogger("aiohttp.access").info("below warning: not written")
    entries = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [(e["logger"], e["level"]) for e in entries] == [
        ("jwtproxy.app", "info"), ("aiohttp.server", "warning"), ("asyncio", "error"),
        ("py.warnings", "warning")]
    assert all(set(e) >= {"time", "level", "logger", "event"} for e in entries)


FIELDS = {"route": "api", "method": "GET", "path": "/a b", "status": 200, "duration_ms": 1.5,
          "request_id": "r-1", "sub": "user \u00e9"}


@pytest.mark.parametrize("captured", ["json", "text"], indirect=True)
def test_access_lines_skip_the_log_record_and_read_as_one_from_logging(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As setup_logging leaves logging, an access line is written without a LogRecord
    (~20 µs less a request); it reads exactly as the same line sent through logging."""
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: object, **kwargs: object) -> logging.LogRecord:
        made.append(factory(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(logging, "_logRecordFactory", counting)
    # as in the CLI: only setup_logging's handler (pytest adds its own for each test)
    installed = [handler for handler in logging.getLogger().handlers
                 if isinstance(handler, logging.StreamHandler) and handler.stream is captured]
    monkeypatch.setattr(logging.getLogger(), "handlers", installed)
    access = AccessLog()
    assert access.enabled()
    access.write(dict(FIELDS))
    assert made == []  # no record: the direct path
    # another handler on the way (a log capture, an embedding program): through logging
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    try:
        access.write(dict(FIELDS))
    finally:
        logging.getLogger().removeHandler(other)
    (record,) = made
    assert (record.name, record.getMessage(), record.route, record.sub) == (
        ACCESS_LOGGER, "request", "api", "user \u00e9")
    direct, through = captured.getvalue().splitlines()
    assert STAMP.sub("T", direct) == STAMP.sub("T", through)
    assert STAMP.search(direct) and "request" in direct and "route" in direct


def test_an_access_line_that_cannot_be_written_never_fails_the_request(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed = [handler for handler in logging.getLogger().handlers
                 if isinstance(handler, logging.StreamHandler) and handler.stream is captured]
    monkeypatch.setattr(logging.getLogger(), "handlers", installed)
    captured.close()  # stderr gone (a log collector that died)
    monkeypatch.setattr(logging, "raiseExceptions", False)  # as logging does in production
    AccessLog().write(dict(FIELDS))  # no exception


def test_access_lines_follow_the_level(captured: io.StringIO) -> None:
    logging.getLogger("jwtproxy").setLevel(logging.WARNING)
    assert not AccessLog().enabled()


def test_a_request_the_parser_rejects_is_logged_as_json_by_the_real_cli() -> None:
    config = {"log": {"format": "json"},
              "routes": [{"name": "public", "match": {"path_prefix": "/"},
                          "upstream": "http://127.0.0.1:9", "auth": "none"}]}
    with proxy_process(config) as proc:
        with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.")
        assert proc.admin_get("/healthz")[0] == 200
    lines = proc.logs().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, not just ours
    assert all(STAMP.fullmatch(e["time"]) and e["level"] and e["logger"] and e["event"]
               for e in entries)
    rejected = [e for e in entries if e["event"] == "http_request_rejected"]
    assert rejected and rejected[0]["logger"] == "aiohttp.server", lines
