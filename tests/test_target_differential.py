"""Differential test of request targets (issue 16): for a generated table of hostile
targets, the route the proxy decides on must equal the route that the target the upstream
receives maps to under independent URL parsers (Python's urllib.parse, a WSGI/ASGI server
that decodes but leaves dot segments to the router, yarl, Node's WHATWG URL, and a
servlet-style model that drops `;params`), or the proxy refuses the target.

Every route is public and has its own raw-socket upstream, so which upstream a request
reaches is the route the proxy chose; what that upstream read off the wire is the target.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from jwtproxy.gate import Gate, RequestView
from jwtproxy.loader import load_text
from jwtproxy.verifier import Verifier
from tests.conftest import ProxyFactory, base_config
from tests.test_hostile_clients import Jwks, RawClient, RawUpstream, _UpstreamConnection

# (name, kind, path) in file order: first match wins, prefixes match whole segments
ROUTES = [("admin", "prefix", "/admin"), ("exact", "path", "/public/exact"),
          ("public", "prefix", "/public"), ("api", "prefix", "/api/v1"),
          ("root", "prefix", "/")]

# Pieces of a path: names, dot segments in every encoding, separators encoded and not,
# path parameters, fragments, query marks, double encoding, trailing dots, bad escapes,
# unicode (raw, encoded, overlong, fullwidth).
TRICKS = [
    "admin", "public", "exact", "api", "v1", "", ".", "..", "...", "%2e", "%2E", ".%2e",
    "%2e.", "%2e%2e", "%2E%2E", "%252e", "%252e%252e", "%%32%65", "admin.", "admin..",
    "admin%2e", "admin%20", "admin%09", "admin%00", "admin;x=1", "..;", "..;x", "admin%3Bx",
    ";", "admin#x", "#", "admin%23x", "%23", "admin?x", "?/../admin", "admin%3Fx", "%3F",
    "admin%2Fx", "%2F", "..%2F", "..%2Fadmin", "%2f..%2f", "%5C", "..%5C", "..%5cadmin",
    "admin\\x", "\\", "..\\admin", "%61dmin", "%2561dmin", "\u00e4dmin", "%C3%A4dmin",
    "%c0%ae%c0%ae", "%u002e%u002e", "%ff", "%", "%zz", "\uff41dmin", "%EF%BC%8F",
]
HEADS = ["public", "admin", "api", "api/v1", "", "public/exact"]
TAILS = ["admin", "public/exact", "x", ""]
SECONDS = ["admin", "..", "%2e%2e", "x", "", "exact"]
ABSOLUTE = [
    "http://a/admin", "http://a/public/../admin", "HTTP://a/public", "https://evil/admin",
    "http://a:80/admin", "http:/admin", "//a/admin", "///admin", "//public/../admin",
    "*", "a/admin", "admin", "/public/x#/../../admin", "/public?x=/../admin",
    "/public/exact", "/public/exact/", "/public/exact/.", "/public/exact%2F",
    "/public/./exact", "/api/v1/../../admin", "/api%2Fv1/x", "/api/v1%2F..%2F..%2Fadmin",
    # re-encoded after normalising: an encoded `;`, `#` or `?` must stay encoded
    "/public/../admin%3Bx", "/x/%2e%2e/admin%3bx/y", "/public/..%2Fadmin%3Bx",
    "/public/../admin%23x", "/public/../admin%3Fx", "/public//admin%3B",
]


def targets() -> list[str]:
    found = dict.fromkeys(ABSOLUTE)
    for head, trick, tail in itertools.product(HEADS, TRICKS, TAILS):
        found["/" + "/".join(part for part in (head, trick, tail) if part or part is trick)] \
            = None
    for first, second in itertools.product(TRICKS, SECONDS):
        found[f"/{first}/{second}"] = None
        found[f"/public/{first}{second}"] = None
    return list(found)


# -- the reference models (independent of jwtproxy's matcher) ----------------------------


def route_of(path: str) -> str:
    for name, kind, route_path in ROUTES:
        if kind == "path" and path == route_path:
            return name
        if kind == "prefix" and (route_path == "/" or path == route_path
                                 or path.startswith(route_path + "/")):
            return name
    raise AssertionError("the root route matches everything")


def remove_dot_segments(path: str, merge_slashes: bool = False) -> str:
    """RFC 3986 §5.2.4, as an upstream resolving a path (file server, router) does."""
    out: list[str] = []
    segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment != "." and not (merge_slashes and segment == "" and out
                                     and out[-1] == ""):
            out.append(segment)
    trailing = bool(segments) and segments[-1] in (".", "..")
    return "/" + "/".join(out) + ("/" if trailing and out else "")


def decode(path: str) -> str:
    return unquote(path, errors="replace")


def urllib_model(target: str) -> str | None:
    return route_of(remove_dot_segments(decode(urlsplit(target).path)))


def wsgi_model(target: str) -> str | None:
    """WSGI/ASGI servers (gunicorn, uvicorn) hand Flask, Django or Starlette the decoded
    path with its dot segments unresolved: `/admin/../x` is under `/admin` to a router."""
    return route_of(decode(urlsplit(target).path))


def yarl_model(target: str) -> str | None:
    """aiohttp's request.path: yarl splits off query and fragment and decodes."""
    return route_of(remove_dot_segments(URL(target).path))


def servlet_model(target: str) -> str | None:
    """Tomcat/Spring: `;params` dropped from every raw segment, then decoded, dots
    removed and `//` merged."""
    raw = target.split("#", 1)[0].split("?", 1)[0]
    stripped = "/".join(segment.split(";", 1)[0] for segment in raw.split("/"))
    return route_of(remove_dot_segments(decode(stripped), merge_slashes=True))


WHATWG_SCRIPT = """
const targets = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(targets.map((t) => {
  try { return new URL(t, 'http://upstream.test').pathname; } catch (e) { return null; }
})));
"""


def whatwg_paths(node: str, received: list[str]) -> list[str | None]:
    result = subprocess.run([node, "-e", WHATWG_SCRIPT], input=json.dumps(received),
                            capture_output=True, text=True, timeout=60, check=True)
    paths: list[str | None] = json.loads(result.stdout)
    return paths


def test_the_models_disagree_where_the_review_found_bypasses() -> None:
    """The table is only worth something if the models see what upstreams see."""
    for model in (urllib_model, yarl_model, servlet_model):
        assert model("/admin#x") == "admin", model
        assert model("/public/../admin") == "admin", model
        assert model("/%61dmin") == "admin", model
    assert servlet_model("/admin;x=1") == "admin"
    assert servlet_model("/public/..;/admin") == "admin"
    assert urllib_model("/admin;x=1") == "root"
    assert wsgi_model("/admin/%2e%2e/public") == "admin"


# -- the proxy under test -----------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str | None:
    """Node for the WHATWG parser: installed from Debian when missing and root (CI).
    Without it the WHATWG model alone is left out (and says so)."""
    found = shutil.which("node")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y", "-q",
                        "nodejs"], capture_output=True, timeout=900, check=False)
        found = shutil.which("node")
    if found is None:
        warnings.warn("node is not installed: the WHATWG URL model is left out", stacklevel=1)
    return found


@dataclass
class Routed:
    """What became of one target: the proxy's status, and the route (upstream) that got
    it with the target as that upstream read it."""

    target: str
    status: int | None
    route: str | None = None
    received: str | None = None


@pytest.fixture
async def per_route_upstreams() -> AsyncIterator[dict[str, RawUpstream]]:
    loop = asyncio.get_running_loop()
    upstreams: dict[str, RawUpstream] = {}
    servers = []
    for name, _, _ in ROUTES:
        upstream = RawUpstream()

        def factory(owner: RawUpstream = upstream) -> _UpstreamConnection:
            return _UpstreamConnection(owner)

        server = await loop.create_server(factory, "127.0.0.1", 0)
        upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        upstreams[name], servers = upstream, [*servers, server]
    yield upstreams
    for server in servers:
        server.close()
    for upstream in upstreams.values():
        for conn in upstream.connections:
            if conn.transport is not None:
                conn.transport.abort()


async def route_all(port: int, upstreams: dict[str, RawUpstream],
                    table: list[str]) -> list[Routed]:
    """One connection per target, a few at a time; each result names its upstream."""
    gate = asyncio.Semaphore(8)

    async def one(index: int, target: str) -> Routed:
        async with gate:
            client = await RawClient.open(port)
            head = f"GET {target} HTTP/1.1\r\nHost: a\r\nX-Request-Id: t{index}\r\n\r\n"
            await client.send(head.encode("utf-8"))
            answers = await client.read_answers(1)
            client.close()
        return Routed(target, answers[0].status if answers else None)

    results = await asyncio.gather(*(one(index, target) for index, target in
                                     enumerate(table)))
    for name, upstream in upstreams.items():
        for seen in upstream.requests:
            marker = seen.header("X-Request-Id") or ""
            routed = results[int(marker[1:])]
            assert routed.route is None, ("forwarded twice", routed)
            routed.route = name
            routed.received = seen.target.encode("latin-1").decode("utf-8", "replace")
    return list(results)


async def test_the_proxy_routes_every_target_as_every_upstream_parser_would(
    make_proxy: ProxyFactory, jwks: Jwks, per_route_upstreams: dict[str, RawUpstream],
    node: str | None,
) -> None:
    config = base_config(jwks[1], "http://127.0.0.1:9")
    config["routes"] = [
        {"name": name, "match": {("path" if kind == "path" else "path_prefix"): path},
         "upstream": per_route_upstreams[name].url, "auth": "none"}
        for name, kind, path in ROUTES
    ]
    proxy = await make_proxy(config)
    table = targets()
    results = await route_all(proxy.client.port, per_route_upstreams, table)
    for routed in results:
        assert routed.status in (200, 400), routed
        assert (routed.status == 200) == (routed.route is not None), routed
    forwarded = [r for r in results if r.route is not None]
    assert len(forwarded) > len(table) // 4  # most of the table is still served
    received = [r.received or "" for r in forwarded]
    models: list[tuple[str, Callable[[str], str | None]]] = [
        ("urllib", urllib_model), ("wsgi", wsgi_model), ("yarl", yarl_model),
        ("servlet", servlet_model)]
    whatwg = dict(zip(received, whatwg_paths(node, received), strict=True)) if node else {}
    mismatches: list[Any] = []
    for routed, target in zip(forwarded, received, strict=True):
        views = [(name, model(target)) for name, model in models]
        if node:
            path = whatwg[target]  # None: the upstream could not parse it, so refuses it
            views.append(("whatwg", None if path is None else route_of(remove_dot_segments(
                decode(path)))))
        wrong = [(name, route) for name, route in views if route not in (routed.route, None)]
        if wrong:
            mismatches.append((routed.target, routed.received, routed.route, wrong))
    assert mismatches == [], f"{len(mismatches)} of {len(forwarded)}: {mismatches[:20]}"


@pytest.mark.parametrize("rewrites_path", [True, False], ids=["proxy-door", "forward-auth"])
async def test_the_gate_routes_every_target_as_every_upstream_parser_would(
    node: str | None, rewrites_path: bool,
) -> None:
    """The same table through `Gate.decide` alone, as a door that has no HTTP parser in
    front (explain, forward-auth, Lambda) sees it: targets llhttp would refuse (raw
    unicode, `\\`, absolute-form) included. A door that cannot rewrite the path
    (forward-auth: the gateway sends the client's target on) is held to the raw target."""
    config = load_text(yaml.safe_dump({"routes": [
        {"name": name, "match": {("path" if kind == "path" else "path_prefix"): path},
         "upstream": "http://127.0.0.1:9", "auth": "none"}
        for name, kind, path in ROUTES
    ]}))
    gate = Gate(config, Verifier({}, {}))
    forwarded: list[tuple[str, str, str]] = []
    for target in targets():
        raw_path, sep, query = target.partition("?")
        decision = await gate.decide(RequestView("GET", "a", raw_path, query,
                                                 CIMultiDictProxy(CIMultiDict(Host="a")),
                                                 rewrites_path=rewrites_path))
        if decision.allowed:
            assert decision.route is not None
            assert rewrites_path or decision.upstream_path == raw_path, target
            forwarded.append((target, decision.upstream_path + sep + query,
                              decision.route.route.name))
        else:
            assert decision.status == 400, (target, decision.error)
    sent = [upstream_target for _, upstream_target, _ in forwarded]
    whatwg = dict(zip(sent, whatwg_paths(node, sent), strict=True)) if node else {}
    mismatches = []
    for target, upstream_target, route in forwarded:
        views = [(name, model(upstream_target)) for name, model in
                 (("urllib", urllib_model), ("wsgi", wsgi_model), ("yarl", yarl_model),
                  ("servlet", servlet_model))]
        path = whatwg.get(upstream_target)
        if path is not None:
            views.append(("whatwg", route_of(remove_dot_segments(decode(path)))))
        wrong = [(name, seen) for name, seen in views if seen not in (route, None)]
        if wrong:
            mismatches.append((target, upstream_target, route, wrong))
    assert mismatches == [], f"{len(mismatches)} of {len(forwarded)}: {mismatches[:20]}"
