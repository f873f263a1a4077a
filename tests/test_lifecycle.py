"""The real CLI as a subprocess: SIGTERM drains, SIGHUP and --watch reload, workers."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.proc import proxy_process
from tests.threaded import serve_in_thread

DEADLINE = 20.0


class SlowUpstream:
    """`/slow` holds the response until released, so a request is in flight."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/slow"):
            self.arrived.set()
            while not self.release.is_set():
                await asyncio.sleep(0.01)  # polling a thread event from the loop
        return web.json_response({"path": request.path})


@pytest.fixture
def slow() -> Iterator[tuple[SlowUpstream, int]]:
    upstream = SlowUpstream()
    with serve_in_thread(upstream.handle) as port:
        yield upstream, port


def config_for(port: int, paths: list[str], **server: Any) -> dict[str, Any]:
    return {
        "server": {"graceful_timeout": "10s", **server},
        "log": {"format": "json"},
        "routes": [{"name": path.strip("/") or "root", "match": {"path_prefix": path},
                    "upstream": f"http://127.0.0.1:{port}", "auth": "none"} for path in paths],
    }


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def answers(url: str) -> int | None:
    try:
        return get(url)[0]
    except OSError:
        return None


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def reloads(proxy: Any, result: str) -> float:
    _, text = proxy.admin_get("/metrics")
    for line in text.splitlines():
        if line.startswith(f'jwtproxy_config_reloads_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_sigterm_finishes_in_flight_requests_then_exits_0(
    slow: tuple[SlowUpstream, int]
) -> None:
    upstream, port = slow
    with proxy_process(config_for(port, ["/"])) as proxy:
        result: dict[str, Any] = {}
        client = threading.Thread(target=lambda: result.update(r=get(proxy.url + "/slow")))
        client.start()
        assert upstream.arrived.wait(DEADLINE)
        proxy.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in proxy.logs(), "the drain to start")
        upstream.release.set()
        client.join(DEADLINE)
        assert result["r"][0] == 200
        assert proxy.process.wait(DEADLINE) == 0
        assert '"stopped"' in proxy.logs()


def log_time(logs: str, event: str) -> float:
    """The process's own timestamp (JSON log, milliseconds) of the first `event` line."""
    for line in logs.splitlines():
        entry = json.loads(line)
        if entry["event"] == event:
            stamp = datetime.datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
            return stamp.replace(tzinfo=datetime.UTC).timestamp()
    raise AssertionError(f"no {event} line in:\n{logs}")


def test_sigterm_cuts_what_outlasts_graceful_timeout_and_readyz_says_draining(
    slow: tuple[SlowUpstream, int]
) -> None:
    upstream, port = slow
    graceful = 2.0
    with proxy_process(config_for(port, ["/"], graceful_timeout=f"{graceful}s")) as proxy:
        result: dict[str, Any] = {}

        def call() -> None:
            try:
                result["r"] = get(proxy.url + "/slow")
            except OSError as err:  # the cut: the connection closes without a response
                result["r"] = err

        client = threading.Thread(target=call)
        client.start()
        assert upstream.arrived.wait(DEADLINE)
        proxy.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in proxy.logs(), "the drain to start")
        # load balancers must stop sending at once; the process itself is alive
        assert proxy.admin_get("/readyz") == (503, '{"status": "draining"}')
        assert proxy.admin_get("/healthz")[0] == 200
        assert proxy.process.wait(DEADLINE) == 0
        client.join(DEADLINE)
        upstream.release.set()
        assert isinstance(result["r"], OSError), result
        logs = proxy.logs()
        assert '"drain_cut"' in logs
        # aiohttp's own shutdown waited up to twice its timeout (4 s here): the cut comes
        # at graceful_timeout after the signal, measured on the process's own clock
        drained = log_time(logs, "stopped") - log_time(logs, "draining")
        assert graceful - 0.1 <= drained < graceful * 1.5, drained


def test_sighup_reloads_and_refuses_a_bad_config(slow: tuple[SlowUpstream, int]) -> None:
    _, port = slow
    with proxy_process(config_for(port, ["/a"])) as proxy:
        assert get(proxy.url + "/b")[0] == 404
        new = yaml.safe_load(proxy.config_path.read_text())
        new["routes"] = config_for(port, ["/a", "/b"])["routes"]
        proxy.config_path.write_text(yaml.safe_dump(new))
        proxy.process.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(proxy, "ok") == 1, "the reload")
        assert get(proxy.url + "/b")[0] == 200
        proxy.config_path.write_text("routes: [{name: x, upstream: nope}]\n")
        proxy.process.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(proxy, "error") == 1, "the refused reload")
        assert get(proxy.url + "/b")[0] == 200  # the old config keeps serving
        refused = [json.loads(line) for line in proxy.logs().splitlines()
                   if "config_reload_refused" in line]
        assert "routes[0].upstream" in " ".join(refused[0]["problems"])


def test_watch_reloads_on_file_change(slow: tuple[SlowUpstream, int]) -> None:
    _, port = slow
    with proxy_process(config_for(port, ["/a"]), extra_args=("--watch",)) as proxy:
        new = yaml.safe_load(proxy.config_path.read_text())
        new["routes"] = config_for(port, ["/a", "/c"])["routes"]
        proxy.config_path.write_text(yaml.safe_dump(new))
        wait_for(lambda: get(proxy.url + "/c")[0] == 200, "the watched reload")


def test_workers_share_the_port_merge_metrics_and_restart(
    slow: tuple[SlowUpstream, int], tmp_path: Path
) -> None:
    _, port = slow
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with proxy_process(config_for(port, ["/"], workers=2), env=env) as proxy:
        for _ in range(40):
            assert get(proxy.url + "/x")[0] == 200

        def total() -> float:  # each worker publishes its figures within a second
            _, text = proxy.admin_get("/metrics")
            return sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("jwtproxy_requests_total{"))

        wait_for(lambda: total() == 40, "both workers' figures in one scrape")
        pids: set[int] = set()
        wait_for(lambda: pids.add(json.loads(proxy.admin_get("/healthz")[1])["pid"])
                 or len(pids) == 2, "both workers to answer")
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: "worker_started" in proxy.logs().split("worker_exited")[-1],
                 "the worker to be replaced")
        # connections queued on the killed worker's socket are lost (SO_REUSEPORT):
        # the service is whole again once every new connection is answered
        wait_for(lambda: all(answers(proxy.url + "/x") == 200 for _ in range(10)),
                 "every connection to be answered")
    assert proxy.process.returncode == 0, proxy.logs()[-3000:]
