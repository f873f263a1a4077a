"""`jwtproxy demo` as a user runs it: start it, paste every printed command, get the
announced status, then Ctrl-C (and SIGTERM) stop it with exit 0."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from jwtproxy.demo import listen_socket

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
READY_LINE = "Ready."


@dataclass
class Demo:
    process: subprocess.Popen[str]
    lines: list[str]
    log: Path


def _pump(stream: IO[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


def _read_until_ready(demo: Demo, lines: queue.Queue[str | None]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {READY_LINE!r} line within {START_TIMEOUT}s:\n"
                               + "\n".join(demo.lines) + demo.log.read_text())
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError(f"demo exited {demo.process.wait()}:\n{demo.log.read_text()}")
        demo.lines.append(line)
        if line.startswith(READY_LINE):
            return


@contextmanager
def running_demo() -> Iterator[Demo]:
    with tempfile.TemporaryDirectory(prefix="jwtproxy-demo-test-") as tmp:
        log = Path(tmp) / "demo.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "jwtproxy", "demo", "--port", "0", "--admin-port", "0"],
                stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=ROOT,
                env={**os.environ, "PYTHONIOENCODING": "utf-8"},
            )
            demo = Demo(process, [], log)
            try:
                assert process.stdout is not None
                lines: queue.Queue[str | None] = queue.Queue()
                threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
                _read_until_ready(demo, lines)
                yield demo
            finally:
                if process.poll() is None:  # only the process this test started
                    process.kill()
                    process.wait()


@dataclass
class Example:
    comment: str
    command: str

    @property
    def status(self) -> int:
        match = re.search(r"expect (\d{3})", self.comment)
        assert match, self.comment
        return int(match.group(1))


def examples(lines: list[str]) -> list[Example]:
    """Each command line with the comment above it (commands under one comment share it)."""
    found, comment = [], ""
    for line in lines:
        if line.startswith("# "):
            comment = line[2:]
        elif line.startswith("curl ") or " explain -c " in line:
            found.append(Example(comment, line))
    return found


def run_curl(command: str) -> tuple[int, str]:
    """Run the line as pasted (the curl binary if present); status and headers + body."""
    argv = shlex.split(command)
    if shutil.which("curl"):
        with tempfile.NamedTemporaryFile(suffix=".out") as out:
            result = subprocess.run([*argv, "-o", out.name, "-w", "%{http_code}"],
                                    capture_output=True, text=True, timeout=30, check=True)
            return int(result.stdout), Path(out.name).read_text()
    headers = dict(argv[i + 1].split(": ", 1) for i, arg in enumerate(argv) if arg == "-H")
    url = next(arg for arg in reversed(argv) if arg.startswith("http"))
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=30) as resp:
            return resp.status, f"{resp.headers}\n{resp.read().decode()}"
    except urllib.error.HTTPError as err:
        return err.code, f"{err.headers}\n{err.read().decode()}"


def echo_headers(output: str) -> dict[str, str]:
    body: dict[str, dict[str, str]] = json.loads(output[output.index("{"):])
    return body["headers"]


def test_every_printed_command_gets_its_announced_status() -> None:
    with running_demo() as demo:
        found = examples(demo.lines)
        curls = [ex for ex in found if ex.command.startswith("curl ")]
        assert {ex.status for ex in curls} == {200, 401, 403, 404}
        assert any("/metrics" in ex.command for ex in curls)
        assert any("/readyz" in ex.command for ex in curls)
        for example in curls:
            status, output = run_curl(example.command)
            assert status == example.status, (example, output)
            if example.comment.startswith(("allowed", "client-sent")):
                headers = echo_headers(output)
                assert headers["X-Auth-Subject"] == "alice"
                assert headers["X-Auth-Scopes"] == "orders:read profile"
            if example.comment.startswith("forward-auth"):
                assert "X-Auth-Subject: alice" in output, output
            if "missing scope" in example.comment:
                assert 'error="insufficient_scope"' in output
                assert 'scope="orders:read"' in output
            if example.comment.startswith("no token"):
                assert 'WWW-Authenticate: Bearer realm="jwtproxy"' in output
            if "/metrics" in example.command:
                assert any(line.startswith("jwtproxy_auth_total{") and 'route="orders"' in line
                           and 'reason="expired"' in line and line.endswith(" 1.0")
                           for line in output.splitlines())
        (explain,) = [ex for ex in found if " explain -c " in ex.command]
        result = subprocess.run(shlex.split(explain.command), capture_output=True, text=True,
                                timeout=60, cwd=ROOT,
                                env={**os.environ, "PYTHONIOENCODING": "utf-8"})
        assert result.returncode == 1, result.stderr
        assert "✗ exp" in result.stdout and "expired at" in result.stdout
        demo.process.send_signal(signal.SIGINT)
        assert demo.process.wait(timeout=STOP_TIMEOUT) == 0, demo.log.read_text()


def test_sigterm_stops_cleanly() -> None:
    with running_demo() as demo:
        demo.process.send_signal(signal.SIGTERM)
        assert demo.process.wait(timeout=STOP_TIMEOUT) == 0, demo.log.read_text()
        assert "stopping" in demo.log.read_text()


def test_a_taken_port_falls_back_to_a_free_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with listen_socket(port) as sock:
            assert sock.getsockname()[1] not in (port, 0)
    with listen_socket(0) as sock:
        free = sock.getsockname()[1]
    with listen_socket(free) as sock:
        assert sock.getsockname()[1] == free
