#!/usr/bin/env python3
"""Reload storm: the real jwtproxy CLI reloaded (SIGHUP) hundreds of times while traffic
flows to an https upstream (a local trustme CA, verified through the route's ca_file) and
a plain http one. Every reload switches between two configs: A routes to both upstreams,
B drops the http one (so its connections must be closed) and renames the https route (so
routes are new objects with equal upstream settings, whose connections must be kept).

After each reload one keep-alive client sends a request to every route of the config now
in force; `--concurrency` more clients keep a steady load throughout. Measured: the
proxy's RSS and open fds, and the connections each upstream has open (all of them come
from the proxy), before and after.

    python3 bench/reload_storm.py --reloads 1000 --concurrency 8

Needs the test extra (trustme). Everything listens on 127.0.0.1; the script stops only
the process it started, by its pid. Prints one JSON report; exit 0 when fds and upstream
connections stayed bounded and no request failed, 1 otherwise.
tests/test_reload_leaks.py runs it with a few hundred reloads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trustme
import yaml
from aiohttp import web

START_TIMEOUT = 20.0


class Upstream:
    """An aiohttp server on its own loop in a thread; counts its open connections."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.port = 0
        self._server: web.Server | None = None
        self._runner: web.ServerRunner | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def open_connections(self) -> int:
        return len(self._server.connections) if self._server is not None else 0

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        return web.Response(text=f"ok {request.path}")

    async def _start(self) -> None:
        self._server = web.Server(self._handle, access_log=None)
        self._runner = web.ServerRunner(self._server)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def __enter__(self) -> Upstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def configs(https_port: int, http_port: int, ca_file: str, port: int, admin: int
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    def route(name: str, prefix: str, upstream: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "match": {"path_prefix": prefix}, "upstream": upstream,
                "auth": "none", **extra}

    base = {"server": {"listen": f"127.0.0.1:{port}"}, "admin": {"listen": f"127.0.0.1:{admin}"},
            "log": {"level": "warning"}, "issuers": {}}
    tls = route("secure", "/tls", f"https://127.0.0.1:{https_port}", ca_file=ca_file)
    a = {**base, "routes": [tls, route("plain", "/plain", f"http://127.0.0.1:{http_port}")]}
    b = {**base, "routes": [{**tls, "name": "secure-b"}]}
    return a, b


@dataclass
class Sample:
    rss_kb: int
    fds: int
    https_connections: int
    http_connections: int


@dataclass
class Report:
    reloads: int
    requests: int
    failures: list[str] = field(default_factory=list)
    before: Sample | None = None
    after: Sample | None = None
    peak_https_connections: int = 0
    peak_fds: int = 0
    seconds: float = 0.0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def reloads_ok(admin: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('jwtproxy_config_reloads_total{result="ok"}'):
                return int(float(line.split()[-1]))
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running(config_path: Path, admin: int) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jwtproxy", "run", "-c", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"jwtproxy exited:\n{log.read().decode(errors='replace')}")
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2).close()
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("jwtproxy did not become ready")
                time.sleep(0.05)  # polling interval, not a readiness guess
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


class Client:
    """One keep-alive client connection to the proxy."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str) -> str | None:
        """None when answered 200 with the upstream's body, else what went wrong."""
        try:
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as err:
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            return f"{path}: {type(err).__name__}: {err}"
        if resp.status != 200 or body != f"ok {path}".encode():
            return f"{path}: {resp.status} {body[:60]!r}"
        return None


def storm(reloads: int, concurrency: int) -> Report:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    report = Report(reloads=reloads, requests=0)
    with tempfile.TemporaryDirectory(prefix="jwtproxy-storm-") as tmp, \
            Upstream(server_tls) as secure, Upstream() as plain:
        ca_file = str(Path(tmp) / "ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        port, admin = free_port(), free_port()
        config_a, config_b = configs(secure.port, plain.port, ca_file, port, admin)
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(config_a))
        stop = threading.Event()
        lock = threading.Lock()

        def load() -> None:
            client = Client(port)
            while not stop.is_set():
                problem = client.get("/tls/load")
                with lock:
                    report.requests += 1
                    if problem:
                        report.failures.append(problem)

        with running(config_path, admin) as process:
            pid = process.pid
            client = Client(port)
            for path in ("/tls/warm", "/plain/warm"):
                client.get(path)
            report.before = Sample(rss_kb(pid), fds(pid), secure.open_connections(),
                                   plain.open_connections())
            threads = [threading.Thread(target=load, daemon=True) for _ in range(concurrency)]
            for thread in threads:
                thread.start()
            started = time.monotonic()
            try:
                for n in range(1, reloads + 1):
                    current = config_b if n % 2 else config_a
                    config_path.write_text(yaml.safe_dump(current))
                    process.send_signal(signal.SIGHUP)
                    deadline = time.monotonic() + 10
                    while reloads_ok(admin) < n:
                        if time.monotonic() > deadline:
                            report.failures.append(f"reload {n} not applied within 10 s")
                            break
                        time.sleep(0.005)  # polling interval
                    paths = ["/tls/x"] + (["/plain/x"] if current is config_a else [])
                    for path in paths:
                        problem = client.get(path)
                        report.requests += 1
                        if problem:
                            report.failures.append(problem)
                    report.peak_https_connections = max(report.peak_https_connections,
                                                        secure.open_connections())
                    report.peak_fds = max(report.peak_fds, fds(pid))
            finally:
                stop.set()
                for thread in threads:
                    thread.join(15)
            report.seconds = round(time.monotonic() - started, 2)
            if reloads % 2:  # B is in force: the http upstream's connections are closing
                deadline = time.monotonic() + 5
                while plain.open_connections() and time.monotonic() < deadline:
                    time.sleep(0.01)  # polling interval: the close crosses two threads
            report.after = Sample(rss_kb(pid), fds(pid), secure.open_connections(),
                                  plain.open_connections())
    return report


def bounded(report: Report, concurrency: int) -> list[str]:
    """What went wrong: failed requests, or fds/connections that grew with the reloads."""
    problems = list(report.failures[:10])
    assert report.before is not None and report.after is not None
    # one https connection per client connection (the storm's own client + the load)
    limit = concurrency + 1
    if report.peak_https_connections > limit:
        problems.append(f"{report.peak_https_connections} connections to the https upstream "
                        f"(at most {limit} clients)")
    if report.after.fds > report.before.fds + concurrency + 4:
        problems.append(f"fds {report.before.fds} -> {report.after.fds}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reloads", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    report = storm(args.reloads, args.concurrency)
    problems = bounded(report, args.concurrency)
    print(json.dumps({**asdict(report), "failures": report.failures[:10],
                      "problems": problems}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
