"""Route table: host, path, path_prefix, methods, file order, path normalisation."""

from __future__ import annotations

import random
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from jwtproxy.config import Match, Route
from jwtproxy.gate import Gate, RequestView
from jwtproxy.loader import load_text
from jwtproxy.matcher import NormalizedPath, RouteTable, normalize_path
from jwtproxy.verifier import Verifier

UPSTREAM = "http://127.0.0.1:8000"


def route(name: str, host: str | None = None, path: str | None = None,
          prefix: str | None = None, methods: set[str] | None = None) -> Route:
    return Route(name, UPSTREAM, Match(host, path, prefix,
                                       frozenset(methods) if methods else None), auth=None)


def matched(routes: list[Route], path: str, method: str = "GET",
            host: str = "api.example.com") -> str | None:
    found = RouteTable(routes).match(method, host, path)
    return found.name if found else None


# -- host ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "host", "hit"), [
    ("api.example.com", "api.example.com", True),
    ("api.example.com", "API.Example.COM", True),
    ("api.example.com", "api.example.com:8443", True),
    ("api.example.com", "api.example.com.", True),
    ("api.example.com", "api.example.com.:80", True),
    ("api.example.com", "www.example.com", False),
    ("api.example.com", "api.example.com.evil.test", False),
    ("api.example.com", "xapi.example.com", False),
    ("api.example.com", "", False),
    ("*.example.com", "api.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "API.EXAMPLE.COM:443", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", ".example.com", False),
    ("*.example.com", "evilexample.com", False),
    ("*.example.com", "example.com.evil.test", False),
    ("127.0.0.1", "127.0.0.1:8080", True),
])
def test_host(pattern: str, host: str, hit: bool) -> None:
    assert matched([route("r", host=pattern)], "/", host=host) == ("r" if hit else None)


def test_no_host_rule_matches_any_host() -> None:
    assert matched([route("r")], "/x", host="") == "r"
    assert matched([route("r")], "/x", host="[::1]:8080") == "r"


# -- path and path_prefix -------------------------------------------------------------------

@pytest.mark.parametrize(("path", "hit"), [
    ("/health", True), ("/health/", False), ("/healthz", False), ("/health/x", False),
    ("/Health", False), ("/", False),
])
def test_exact_path(path: str, hit: bool) -> None:
    assert matched([route("r", path="/health")], path) == ("r" if hit else None)


@pytest.mark.parametrize(("prefix", "path", "hit"), [
    ("/orders", "/orders", True),
    ("/orders", "/orders/", True),
    ("/orders", "/orders/1", True),
    ("/orders", "/orders/1/items/", True),
    ("/orders", "/ordersx", False),
    ("/orders", "/orders.json", False),
    ("/orders", "/order", False),
    ("/orders", "/", False),
    ("/orders", "/v1/orders", False),
    ("/orders/", "/orders/1", True),
    ("/orders/", "/orders/", True),
    ("/api/v1", "/api/v1/x", True),
    ("/api/v1", "/api/v10", False),
    ("/api/v1", "/api", False),
    ("/", "/", True),
    ("/", "/anything/at/all", True),
    ("/", "/x", True),
])
def test_path_prefix_is_segment_aware(prefix: str, path: str, hit: bool) -> None:
    assert matched([route("r", prefix=prefix)], path) == ("r" if hit else None)


@pytest.mark.parametrize(("methods", "method", "hit"), [
    ({"GET"}, "GET", True), ({"GET"}, "POST", False), ({"GET", "POST"}, "POST", True),
    ({"GET"}, "get", False), ({"GET"}, "HEAD", False), (None, "DELETE", True),
])
def test_methods(methods: set[str] | None, method: str, hit: bool) -> None:
    assert matched([route("r", methods=methods)], "/", method) == ("r" if hit else None)


def test_first_match_in_file_order_wins() -> None:
    routes = [
        route("catch-all", prefix="/"),
        route("orders", prefix="/orders"),
        route("health", path="/orders/health"),
    ]
    assert matched(routes, "/orders/health") == "catch-all"
    assert matched(routes[1:], "/orders/health") == "orders"
    assert matched(routes[2:], "/orders/health") == "health"


def test_later_route_used_when_earlier_ones_do_not_fit() -> None:
    routes = [
        route("admin-post", prefix="/admin", methods={"POST"}),
        route("admin-host", prefix="/admin", host="admin.example.com"),
        route("exact", path="/admin/x"),
        route("rest", prefix="/"),
    ]
    assert matched(routes, "/admin/x", "POST") == "admin-post"
    assert matched(routes, "/admin/x", "GET", "admin.example.com") == "admin-host"
    assert matched(routes, "/admin/x", "GET") == "exact"
    assert matched(routes, "/admin/y", "GET") == "rest"


def test_no_match_is_none() -> None:
    routes = [route("orders", prefix="/orders"), route("h", path="/health", methods={"GET"})]
    assert matched(routes, "/other") is None
    assert matched(routes, "/health", "POST") is None
    assert matched([], "/") is None


# -- normalisation -------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "path", "changed"), [
    ("/orders/1", "/orders/1", False),
    ("/", "/", False),
    ("/a/b/", "/a/b/", False),
    ("/public/../admin", "/admin", True),
    ("/public/%2e%2e/admin", "/admin", True),
    ("/public/%2E%2E/admin", "/admin", True),
    ("/public%2f..%2fadmin", "/admin", True),
    ("/public%2F..%2Fadmin", "/admin", True),
    ("/./admin", "/admin", True),
    ("/admin/.", "/admin/", True),
    ("/admin/x/..", "/admin/", True),
    ("/..", "/", True),
    ("/../../admin", "/admin", True),
    ("//admin", "/admin", True),
    ("/a//b///c", "/a/b/c", True),
    ("/public\\..\\admin", "/admin", True),
    ("/public%5c..%5cadmin", "/admin", True),
    ("/admin\\x", "/admin/x", True),
    ("/public/..;/admin", "/admin", True),
    ("/public/..;jsessionid=1/admin", "/admin", True),
    ("/%61dmin", "/admin", False),  # decoded for matching, forwarded as sent
    ("/a%2fb", "/a/b", True),       # an encoded separator changes the structure
    ("/.well-known/jwks.json", "/.well-known/jwks.json", False),
    ("/a/...", "/a/...", False),
    ("/a;b/c", "/a;b/c", False),
    ("/caf%C3%A9", "/café", False),
    ("/%ff", "/\ufffd", False),
])
def test_normalize_path(raw: str, path: str, changed: bool) -> None:
    assert normalize_path(raw) == NormalizedPath(path, changed)


@pytest.mark.parametrize("raw", [
    "/public/../admin", "/public/%2e%2e/admin", "/public%2f..%2fadmin", "/./admin",
    "//admin", "/public\\..\\admin", "/public/..;/admin", "/public/./../admin",
])
def test_traversal_reaches_the_protected_route(raw: str) -> None:
    routes = [route("admin", prefix="/admin"), route("public", prefix="/public"),
              route("rest", prefix="/")]
    assert matched(routes, normalize_path(raw).path) == "admin"


@pytest.mark.parametrize(("raw", "upstream"), [
    ("/public/../admin", "/admin"),
    ("/public/%2e%2e/admin/a%20b", "/admin/a%20b"),
    ("//admin", "/admin"),
    ("/admin\\x", "/admin/x"),
    ("/admin/%7Euser", "/admin/%7Euser"),   # unchanged structure: forwarded as sent
    ("/admin/a%2Fb", "/admin/a/b"),
    ("/admin/x?y", "/admin/x?y"),
])
async def test_gate_forwards_the_normalised_path(raw: str, upstream: str) -> None:
    config = load_text(
        "routes:\n"
        "  - {name: admin, match: {path_prefix: /admin}, upstream: 'http://127.0.0.1:1', "
        "auth: none}\n", {})
    gate = Gate(config, Verifier({}, {}))
    view = RequestView("GET", "h", raw, "", CIMultiDictProxy(CIMultiDict()))
    decision = await gate.decide(view)
    assert decision.allowed
    assert decision.route is not None and decision.route.route.name == "admin"
    assert decision.upstream_path == upstream


# -- the table agrees with a linear scan ---------------------------------------------------

SEGMENTS = [f"s{i}" for i in range(150)] + ["orders", "api", "v1", "x"]
HOSTS = ["api.example.com", "*.example.com", "other.test", "*.b.example.com"]
METHODS = ["GET", "POST", "PUT", "DELETE"]


def host_fits(pattern: str, host: str) -> bool:
    name = host.lower().rsplit(":", 1)[0].rstrip(".")
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and name != pattern[2:] and len(name) > len(
            pattern) - 1
    return name == pattern


def linear(routes: list[Route], method: str, host: str, path: str) -> Route | None:
    for candidate in routes:
        rule = candidate.match
        if rule.methods is not None and method not in rule.methods:
            continue
        if rule.host is not None and not host_fits(rule.host, host):
            continue
        if rule.path is not None and path != rule.path:
            continue
        if rule.path_prefix is not None:
            stem = rule.path_prefix.rstrip("/")
            if not (path == stem or path.startswith(stem + "/")):
                continue
        return candidate
    return None


@cache
def big_table() -> tuple[list[Route], RouteTable]:
    rng = random.Random(1234)
    routes = []
    for i in range(10_000):
        kind = rng.random()
        depth = rng.choice([1, 2, 3] if kind < 0.45 else [2, 2, 3, 4])
        path = "/" + "/".join(rng.choice(SEGMENTS) for _ in range(depth))
        methods = (frozenset(rng.sample(METHODS, rng.randint(1, 2)))
                   if rng.random() < 0.3 else None)
        host = rng.choice(HOSTS) if rng.random() < 0.3 else None
        if kind < 0.45:
            rule = Match(host, path, None, methods)
        elif kind < 0.9:
            rule = Match(host, None, path + ("/" if rng.random() < 0.1 else ""), methods)
        elif kind < 0.995:
            rule = Match(host, None, None, methods) if host else Match(
                "other.test", None, None, methods)
        else:
            rule = Match(None, None, "/", frozenset({"DELETE"}))
        routes.append(Route(f"r{i}", UPSTREAM, rule, auth=None))
    return routes, RouteTable(routes)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str]:
    """A path near one of the table's own paths (equal, extended, cut, or a sibling
    prefix like /ordersx), or a random one."""
    routes, _ = big_table()
    rule = routes[draw(st.integers(0, len(routes) - 1))].match
    segments = (rule.path or rule.path_prefix or "/").strip("/").split("/")
    how = draw(st.sampled_from(["same", "longer", "shorter", "suffix", "random"]))
    if how == "longer":
        segments += draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=2))
    elif how == "shorter":
        segments = segments[:-1]
    elif how == "suffix":
        segments[-1] += "x"
    elif how == "random":
        segments = draw(st.lists(st.sampled_from(SEGMENTS), max_size=5))
    path = "/" + "/".join(s for s in segments if s) + draw(st.sampled_from(["", "/"]))
    method = draw(st.sampled_from(METHODS))
    host = draw(st.sampled_from(["api.example.com", "a.b.example.com", "OTHER.test:8080",
                                 "example.com", "unknown.test", "", "unknown.test"]))
    return method, host, path.replace("//", "/")


@settings(max_examples=400, deadline=None)
@given(requests())
def test_big_table_agrees_with_linear_scan(request: tuple[str, str, str]) -> None:
    method, host, path = request
    routes, table = big_table()
    assert table.match(method, host, path) is linear(routes, method, host, path)


def test_big_table_is_not_trivial() -> None:
    """The property test above must see both matches deep in the table and misses."""
    routes, table = big_table()
    rng = random.Random(99)
    found = []
    for _ in range(500):
        path = "/" + "/".join(rng.choice(SEGMENTS) for _ in range(rng.randint(1, 4)))
        hit = table.match("GET", "unknown.test", path)
        assert hit is linear(routes, "GET", "unknown.test", path)
        found.append(int(hit.name[1:]) if hit else None)
    assert None in found
    assert max(i for i in found if i is not None) > 1000
