"""A real Prometheus (Debian's `prometheus`, on loopback, scraping every second) scrapes a real
jwtproxy with `workers: 2` while a scripted mix of requests runs. Then, through Prometheus's
HTTP API: every series of the metric catalog is there with exactly its labels, the counts
are the requests sent, every query of the Grafana dashboard returns data, and the rules of
deploy/prometheus evaluate on the real series."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from aiohttp import web

from jwtproxy import __version__
from tests.catalog import ROOT, SERIES, dashboard, dashboard_queries, series_labels
from tests.debian import ensure_binary
from tests.proc import ProxyProcess, free_port, proxy_process, stop
from tests.threaded import serve_in_thread
from tests.tokens import KeyRing, make_keyring, mint

ISSUER: Final = "https://issuer.test/"
AUDIENCE: Final = "api://orders"
WORKERS: Final = 2
DEADLINE: Final = 60.0  # seconds to wait for Prometheus to have scraped what was sent
RATE_INTERVAL: Final = "1m"  # stands in for Grafana's $__rate_interval
JOB: Final = "jwtproxy"
RULES: Final = ROOT / "deploy" / "prometheus" / "jwtproxy-rules.yaml"

# The scripted mix: (path, token kind, status), each sent `count` times.
MIX: Final = [
    ("/public/a", None, 200, 5),
    ("/orders/1", "good", 200, 6),
    ("/orders/2", None, 401, 2),
    ("/orders/3", "expired", 401, 2),
    ("/orders/4", "forged", 401, 1),
    ("/orders/5", "no_scope", 403, 2),
    ("/slow", None, 504, 1),
    ("/broken", None, 502, 2),
    ("/nowhere", None, 404, 2),
]
ROUTES: Final = {"/public": "public", "/orders": "orders", "/slow": "slow",
                 "/broken": "broken"}
AUTH: Final = {  # token kind -> (issuer, result, reason) on the orders route
    "good": ("main", "allowed", "ok"),
    None: ("(none)", "denied", "missing"),
    "expired": ("main", "denied", "expired"),
    "forged": ("main", "denied", "bad_signature"),
    "no_scope": ("main", "denied", "scope"),
}


class Upstream:
    """The app and the issuer's key set on one loopback server; `/slow` outlasts the
    route's read timeout (the proxy answers 504 and drops the connection)."""

    def __init__(self, keys: KeyRing) -> None:
        self.jwks = keys.jwks()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/jwks.json":
            return web.json_response(self.jwks)
        if request.path == "/slow":
            await asyncio.sleep(2)
        return web.json_response({"path": request.path})


def _config(port: int) -> dict[str, Any]:
    upstream = f"http://127.0.0.1:{port}"
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: 502

    def route(name: str, prefix: str, auth: Any, **extra: Any) -> dict[str, Any]:
        return {"name": name, "match": {"path_prefix": prefix}, "upstream": upstream,
                "auth": auth, **extra}

    return {
        "server": {"workers": WORKERS, "graceful_timeout": "5s"},
        "issuers": {"main": {"issuer": ISSUER, "jwks_uri": f"{upstream}/jwks.json",
                             "audiences": [AUDIENCE], "algorithms": ["RS256", "ES256"]}},
        "routes": [
            route("public", "/public", "none"),
            route("orders", "/orders", {"scopes": ["orders:read"]}),
            route("slow", "/slow", "none", timeouts={"read": "200ms"}),
            {**route("broken", "/broken", "none"), "upstream": closed},
        ],
    }


def _tokens(keys: KeyRing) -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read"}
    return {
        "good": mint(keys.rsa, claims),
        "expired": mint(keys.rsa, {**claims, "exp": now - 600, "iat": now - 900}),
        "forged": mint(keys.other_rsa, claims),  # the same kid, another key
        "no_scope": mint(keys.ec, {**claims, "scope": "orders:write"}),
    }


def _status(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


@dataclass
class PrometheusServer:
    url: str

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result = data["result"]
        assert isinstance(result, list)
        return result

    def by(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
                for r in self.query(expr)}

    def wait_for(self, expr: str, expected: float, what: str) -> None:
        """Poll until `expr` (one value) is `expected`: the workers publish within a
        second and Prometheus scrapes every second."""
        deadline = time.monotonic() + DEADLINE
        value: float | None = None
        while time.monotonic() < deadline:
            result = self.query(expr)
            value = float(result[0]["value"][1]) if result else None
            if value == expected:
                return
            time.sleep(0.2)  # polling interval
        raise AssertionError(f"{what}: {expr} is {value}, expected {expected}")


@contextlib.contextmanager
def prometheus(binary: str, target: str, tmp: Path) -> Iterator[PrometheusServer]:
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }))
    log = (tmp / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    server = PrometheusServer(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + DEADLINE
        while _ready(server) is False:
            if process.poll() is not None or time.monotonic() > deadline:
                output = (tmp / "prometheus.log").read_text()
                raise RuntimeError(f"prometheus did not start:\n{output}")
            time.sleep(0.1)  # polling interval
        yield server
    finally:
        stop(process)
        log.close()


def _ready(server: PrometheusServer) -> bool:
    try:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class Scenario:
    prometheus: PrometheusServer
    proxy: ProxyProcess
    started: float


def _reload(proxy: ProxyProcess, prom: PrometheusServer, result: str) -> None:
    proxy.process.send_signal(signal.SIGHUP)  # the supervisor passes it to every worker
    prom.wait_for(f'sum(jwtproxy_config_reloads_total{{result="{result}"}})', WORKERS,
                  f"every worker's {result} reload")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    binary = ensure_binary("prometheus", "prometheus")
    keys = make_keyring()
    tokens = _tokens(keys)
    started = time.time()
    with serve_in_thread(Upstream(keys).handle) as port, proxy_process(_config(port)) as proxy, \
            prometheus(binary, f"127.0.0.1:{proxy.admin_port}",
                       tmp_path_factory.mktemp("prometheus")) as prom:
        prom.wait_for(f'up{{job="{JOB}"}}', 1, "the first scrape")
        for path, kind, status, count in MIX:
            headers = {"Authorization": f"Bearer {tokens[kind]}"} if kind else {}
            for _ in range(count):
                assert _status(proxy.url + path, headers) == status, (path, kind)
        sent = sum(count for *_, count in MIX)
        prom.wait_for("sum(jwtproxy_requests_total)", sent, "every request scraped")
        _reload(proxy, prom, "ok")  # the same file again
        good = proxy.config_path.read_text()
        proxy.config_path.write_text(good + "no_such_section: {}\n")
        _reload(proxy, prom, "error")
        proxy.config_path.write_text(good)
        yield Scenario(prom, proxy, started)


def _route(path: str) -> str:
    return next((name for prefix, name in ROUTES.items() if path.startswith(prefix)), "(none)")


def _expected(keyed: Callable[[str, str | None, int], tuple[str, ...] | None]
              ) -> dict[tuple[str, ...], float]:
    totals: dict[tuple[str, ...], float] = {}
    for path, kind, status, count in MIX:
        key = keyed(path, kind, status)
        if key is not None:
            totals[key] = totals.get(key, 0) + count
    return totals


# --- the catalog --------------------------------------------------------------------------------


def test_every_catalog_series_is_scraped_with_exactly_its_labels(scenario: Scenario) -> None:
    found: dict[str, set[frozenset[str]]] = {}
    for series in scenario.prometheus.api("series", **{"match[]": '{__name__=~"jwtproxy_.+"}'}):
        name = series.pop("__name__")
        found.setdefault(name, set()).add(frozenset(series))
    assert set(found) == set(SERIES), f"missing {set(SERIES) - set(found)}, " \
                                      f"not in the catalog {set(found) - set(SERIES)}"
    for name, label_sets in found.items():
        assert label_sets == {series_labels(name) | {"job", "instance"}}, name


def test_request_counts_are_the_requests_sent(scenario: Scenario) -> None:
    prom = scenario.prometheus
    assert prom.by("sum by (route, code) (jwtproxy_requests_total)", "route", "code") == \
        _expected(lambda path, _, status: (_route(path), str(status)))
    assert prom.by("sum by (route) (jwtproxy_request_duration_seconds_count)", "route") == \
        _expected(lambda path, *_: (_route(path),))
    # the upstream histogram times the upstream's answer: 502 and 504 never got one
    assert prom.by("sum by (route) (jwtproxy_upstream_duration_seconds_count)", "route") == \
        _expected(lambda path, _, status: (_route(path),) if status < 400 else None)
    # the one request that timed out left its upstream connection unusable: closed
    assert prom.by("sum by (reason) (jwtproxy_upstream_connections_closed_total) > 0", "reason") \
        == _expected(lambda _, __, status: ("aborted",) if status == 504 else None)
    buckets = prom.by('sum by (route) (jwtproxy_request_duration_seconds_bucket{le="+Inf"})',
                      "route")
    assert buckets == prom.by("sum by (route) (jwtproxy_request_duration_seconds_count)", "route")


def test_auth_decisions_are_the_requests_sent(scenario: Scenario) -> None:
    prom = scenario.prometheus
    assert prom.by("sum by (route, issuer, result, reason) (jwtproxy_auth_total)",
                   "route", "issuer", "result", "reason") == \
        _expected(lambda path, kind, _: ("orders", *AUTH[kind]) if path.startswith("/orders")
                  else None)
    # Each worker has its own token cache: a token is a miss once per worker at most.
    lookups = sum(count for path, kind, _, count in MIX if kind)
    cache = prom.by("sum by (result) (jwtproxy_token_cache_total)", "result")
    assert cache[("hit",)] + cache[("miss",)] == lookups
    distinct = len({kind for _, kind, _, _ in MIX if kind})
    assert distinct <= cache[("miss",)] <= distinct * WORKERS


def test_keys_reloads_and_build_info(scenario: Scenario) -> None:
    prom = scenario.prometheus
    assert prom.by("sum by (issuer, result) (jwtproxy_jwks_refresh_total)", "issuer", "result") \
        == {("main", "ok"): WORKERS}  # one fetch per worker at start
    assert prom.by("jwtproxy_jwks_keys", "issuer") == {("main",): 3.0}  # max over live workers
    [(issuer, last)] = prom.by("jwtproxy_jwks_last_success_timestamp_seconds", "issuer").items()
    assert issuer == ("main",) and scenario.started <= last <= time.time()
    assert prom.by("sum by (result) (jwtproxy_config_reloads_total)", "result") == \
        {("ok",): WORKERS, ("error",): WORKERS}
    assert prom.by("jwtproxy_build_info", "version") == {(__version__,): 1.0}


# --- the Grafana dashboard against the real series ------------------------------------------------

_VARIABLES: Final = {"$__rate_interval": RATE_INTERVAL, "$route": ".*", "$issuer": ".*"}
_LABEL_VALUES: Final = re.compile(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)")
_GROUPING: Final = re.compile(r"\bby\s*\(([^)]*)\)")
QUERIES: Final = dashboard_queries(dashboard())


@pytest.mark.parametrize("query", QUERIES)
def test_every_dashboard_query_returns_data(scenario: Scenario, query: str) -> None:
    prom = scenario.prometheus
    variable = _LABEL_VALUES.fullmatch(query)
    if variable is not None:  # a Grafana variable: the label API answers it
        metric, label = variable.groups()
        values = prom.api(f"label/{label}/values", **{"match[]": metric})
        assert values, query
        return
    expr = query
    for name, value in _VARIABLES.items():
        expr = expr.replace(name, value)
    result = prom.query(expr)
    assert result, f"no data: {expr}"
    grouped = {label.strip() for labels in _GROUPING.findall(expr)
               for label in labels.split(",")} - {"le", ""}
    for sample in result:
        assert grouped <= set(sample["metric"]), (expr, sample)


# --- the rules of deploy/prometheus against the real series ---------------------------------------


def test_rules_evaluate_on_the_real_series(scenario: Scenario) -> None:
    prom = scenario.prometheus
    groups = {g["name"]: g for g in prom.api("rules")["groups"]}
    rules = [rule for group in groups.values() for rule in group["rules"]]
    expected = {rule.get("record") or rule.get("alert")
                for group in yaml.safe_load(RULES.read_text())["groups"]
                for rule in group["rules"]}
    assert {rule["name"] for rule in rules} == expected
    deadline = time.monotonic() + DEADLINE
    while any(rule["health"] == "unknown" for rule in rules):  # not evaluated yet
        assert time.monotonic() < deadline, rules
        time.sleep(0.2)  # polling interval; rules are evaluated every second
        rules = [rule for group in prom.api("rules")["groups"] for rule in group["rules"]]
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    for rule in rules:
        if rule["type"] == "recording":
            while not prom.query(rule["name"]):  # the next evaluation writes it
                assert time.monotonic() < deadline, f"no data: {rule['name']} = {rule['query']}"
                time.sleep(0.2)  # polling interval
