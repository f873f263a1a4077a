"""The forward-auth door through real sockets: each gateway convention (Traefik, Caddy,
nginx, Envoy ext_authz, Istio CUSTOM) by direct requests, the answers next to the proxy
door's for the same request, trust, modes, metrics, logs, config checks and explain."""

from __future__ import annotations

import base64
import io
import json
import logging
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient
from prometheus_client import CollectorRegistry

from jwtproxy.app import ProxyApp
from jwtproxy.cli import main
from jwtproxy.errors import ConfigError
from jwtproxy.forward_auth import ForwardAuthDoor
from jwtproxy.loader import load_text
from jwtproxy.metrics import Metrics
from jwtproxy.server import admin_app, server_options
from tests.conftest import AUDIENCE, ISSUER, Proxy, ProxyFactory, base_config
from tests.proc import proxy_process
from tests.servers import EchoUpstream, JwksEndpoint
from tests.tokens import KeyRing, mint

Upstream = tuple[EchoUpstream, str]
Jwks = tuple[JwksEndpoint, str]
HS_SECRET = "forward-auth-test-secret-of-32-bytes!"


@dataclass
class Door:
    app: ProxyApp
    client: TestClient[web.Request, web.Application]
    admin: TestClient[web.Request, web.Application]
    metric: Callable[..., Awaitable[float]]


DoorFactory = Callable[[dict[str, Any]], Awaitable[Door]]


@pytest.fixture
async def make_door(aiohttp_client: Any) -> AsyncIterator[DoorFactory]:
    started: list[ProxyApp] = []

    async def factory(config_data: dict[str, Any]) -> Door:
        config_data = {"forward_auth": {"listen": "127.0.0.1:9191"}, **config_data}
        config = load_text(yaml.safe_dump(config_data))
        assert config.forward_auth is not None
        app = ProxyApp(config, Metrics(CollectorRegistry()))
        await app.start()
        started.append(app)
        server = RawTestServer(ForwardAuthDoor(app, config.forward_auth).handle)
        await server.start_server(**server_options(config))
        client = await aiohttp_client(server)
        admin = await aiohttp_client(admin_app(app))
        probe = Proxy(app, client, admin)
        return Door(app, client, admin, probe.metric)

    yield factory
    for app in started:
        await app.close()


def config_for(jwks_url: str, **overrides: Any) -> dict[str, Any]:
    """base_config's routes without upstreams (forward-auth only), plus claims to show."""
    config = base_config(jwks_url, "http://127.0.0.1:1", **overrides)
    for route in config["routes"]:
        del route["upstream"]
    config["routes"][1]["forward"]["payload_header"] = "X-Auth-Claims"
    config["routes"].insert(2, {"name": "report", "match": {"path_prefix": "/report"},
                                "auth": {"mode": "report_only"}})
    config["routes"].insert(3, {"name": "maybe", "match": {"path_prefix": "/maybe"},
                                "auth": {"mode": "optional"},
                                "forward": {"claims": {"sub": "X-Auth-Subject"}}})
    config["routes"].insert(4, {"name": "reads", "match": {"path_prefix": "/reads",
                                                           "methods": ["GET"]},
                                "auth": "none"})
    config["routes"].pop()  # no catch-all: some requests match no route
    return config


@pytest.fixture
async def door(make_door: DoorFactory, jwks: Jwks) -> Door:
    return await make_door(config_for(jwks[1]))


def good(**extra: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read", **extra}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def traefik(method: str, uri: str, host: str = "api.example.com") -> dict[str, str]:
    """What Traefik's forwardAuth (and Caddy's forward_auth) add to the subrequest."""
    return {"X-Forwarded-Method": method, "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": host, "X-Forwarded-Uri": uri, "X-Forwarded-For": "203.0.113.9"}


def nginx(method: str, uri: str) -> dict[str, str]:
    return {"X-Original-Method": method, "X-Original-URI": uri}


# -- the conventions ----------------------------------------------------------------------


async def test_traefik_allowed_with_claim_headers_and_empty_body(
    door: Door, keys: KeyRing,
) -> None:
    token = mint(keys.rsa, good(groups=["a", "b"]))
    resp = await door.client.get("/", headers={**traefik("GET", "/orders/7?x=1"),
                                               **bearer(token)})
    assert resp.status == 200
    assert await resp.read() == b""
    assert resp.headers["X-Auth-Subject"] == "user-1"
    assert resp.headers["X-Auth-Groups"] == "a,b"
    claims = json.loads(base64.urlsafe_b64decode(resp.headers["X-Auth-Claims"] + "=="))
    assert claims["sub"] == "user-1" and claims["groups"] == ["a", "b"]
    assert await door.metric("jwtproxy_forward_auth_requests_total", route="orders",
                             code="200") == 1
    assert await door.metric("jwtproxy_auth_total", route="orders", issuer="main",
                             result="allowed", reason="ok") == 1


async def test_nginx_original_headers_and_host(door: Door, keys: KeyRing) -> None:
    resp = await door.client.get("/_auth", headers={
        **nginx("GET", "/orders/1"), **bearer(mint(keys.rsa, good())),
        "Host": "api.example.com"})
    assert resp.status == 200
    assert resp.headers["X-Auth-Subject"] == "user-1"


async def test_method_is_the_original_one(door: Door) -> None:
    """/reads is public for GET only: a POST described by the gateway matches no route."""
    assert (await door.client.get("/", headers=nginx("GET", "/reads/1"))).status == 200
    resp = await door.client.get("/", headers=nginx("POST", "/reads/1"))
    assert resp.status == 403
    assert await resp.json() == {"error": "not_found"}
    resp = await door.client.get("/", headers=traefik("delete", "/reads/1"))
    assert resp.status == 403


async def test_envoy_ext_authz_the_request_itself_with_path_prefix(
    make_door: DoorFactory, jwks: Jwks, keys: KeyRing,
) -> None:
    """Envoy's HTTP ext_authz sends the original method, Host and path (after its
    path_prefix) with the allowed headers."""
    config = config_for(jwks[1], forward_auth={"listen": "127.0.0.1:9191",
                                               "path_prefix": "/ext_authz"})
    door = await make_door(config)
    token = mint(keys.rsa, good())
    resp = await door.client.post("/ext_authz/orders/3?q=1", headers={
        **bearer(token), "Host": "api.example.com", "x-request-id": "abc"})
    assert resp.status == 200
    assert resp.headers["X-Auth-Subject"] == "user-1"
    # a path outside the prefix is not a question about any route
    resp = await door.client.get("/orders/3", headers=bearer(token))
    assert resp.status == 403 and await resp.json() == {"error": "not_found"}
    resp = await door.client.get("/ext_authzorders/3", headers=bearer(token))
    assert resp.status == 403
    assert (await door.client.get("/ext_authz")).status == 403  # "/" matches no route


async def test_istio_custom_denial_carries_challenge_and_json(
    make_door: DoorFactory, jwks: Jwks,
) -> None:
    """Istio's envoyExtAuthzHttp provider: as Envoy, with pathPrefix; the denial's status,
    WWW-Authenticate and body go back to the client (headersToDownstreamOnDeny)."""
    config = config_for(jwks[1], forward_auth={"listen": "127.0.0.1:9191",
                                               "path_prefix": "/check"})
    door = await make_door(config)
    resp = await door.client.delete("/check/orders/9", headers={
        "Host": "orders.shop.svc.cluster.local", "x-forwarded-proto": "http",
        "x-envoy-expected-rq-timeout-ms": "600000"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="jwtproxy"'
    assert (await resp.json())["error"] == "unauthorized"


# -- the same answers as the proxy door -------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "expired", "bad_signature", "scope",
                                  "audience", "two_places", "no_route", "malformed"])
async def test_denials_match_the_proxy_door(
    make_door: DoorFactory, make_proxy: ProxyFactory, jwks: Jwks, upstream: Upstream,
    keys: KeyRing, case: str,
) -> None:
    config = config_for(jwks[1], tokens=[{"header": "Authorization"},
                                         {"query": "access_token"}])
    door = await make_door(config)
    proxy_config = base_config(jwks[1], upstream[1], tokens=config["tokens"])
    proxy_config["routes"].pop()
    proxy = await make_proxy(proxy_config)
    now_token = mint(keys.rsa, good())
    path, headers = {
        "missing": ("/orders/1", {}),
        "expired": ("/orders/1", bearer(mint(keys.rsa, good(exp=1000, iat=900)))),
        "bad_signature": ("/orders/1", bearer(mint(keys.other_rsa, good()))),
        "scope": ("/orders/1", bearer(mint(keys.rsa, good(scope="other")))),
        "audience": ("/orders/1", bearer(mint(keys.rsa, good(aud="api://else")))),
        "two_places": (f"/orders/1?access_token={now_token}", bearer(now_token)),
        "no_route": ("/nowhere", {}),
        "malformed": ("/orders/1", bearer("not.a.jwt")),
    }[case]
    via_proxy = await proxy.client.get(path, headers=headers)
    via_door = await door.client.get("/", headers={**traefik("GET", path), **headers})
    expected_status = 403 if case == "no_route" else via_proxy.status
    assert via_door.status == expected_status
    assert via_door.headers.get("WWW-Authenticate") == via_proxy.headers.get(
        "WWW-Authenticate")
    assert via_door.headers.get("Retry-After") == via_proxy.headers.get("Retry-After")
    assert await via_door.json() == await via_proxy.json()
    assert upstream[0].received == []


async def test_keys_unavailable_is_503_with_retry_after(
    make_door: DoorFactory, jwks: Jwks, keys: KeyRing,
) -> None:
    jwks[0].status = 500
    door = await make_door(config_for(jwks[1]))
    resp = await door.client.get("/", headers={**nginx("GET", "/orders/1"),
                                               **bearer(mint(keys.rsa, good()))})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "30"
    assert (await resp.json())["error"] == "temporarily_unavailable"
    ready = await door.admin.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["missing"][0]["issuer"] == "main"


# -- normalisation and trust -------------------------------------------------------------


@pytest.mark.parametrize("uri", [
    "/public/../orders/1", "/public/%2e%2e/orders/1", "/public/%2E%2E/orders/1",
    "/public/..;/orders/1", "/public/..%2forders/1", "//orders/1", "/public/./../orders",
    # and the other way: the gateway sends the URI on as it came, so a route chosen for
    # the normalised path (`/public/x`) is not the one a router reading `/orders/...` picks
    "/orders/%2e%2e/public/x", "/orders/..%2fpublic/x", "/orders/../public/x",
])
async def test_a_path_that_normalising_changes_is_refused(door: Door, uri: str) -> None:
    """Issue 16: this door cannot forward the path it matched, so it matches only paths
    already in normal form (400 `invalid_request` otherwise)."""
    for headers in (traefik("GET", uri), nginx("GET", uri)):
        resp = await door.client.get("/", headers=headers)
        assert resp.status == 400, (uri, headers)
        assert (await resp.json())["error"] == "invalid_request"
    assert (await door.client.get("/", headers=traefik("GET", "/public/x"))).status == 200
    assert (await door.client.get("/", headers=traefik("GET", "/%70ublic/x"))).status == 200


async def test_untrusted_peer_gets_403_whatever_it_sends(
    make_door: DoorFactory, jwks: Jwks, keys: KeyRing,
) -> None:
    config = config_for(jwks[1], forward_auth={"listen": "0.0.0.0:9191",
                                               "trusted_proxies": ["10.0.0.0/8"]})
    door = await make_door(config)
    token = mint(keys.rsa, good())
    for headers in ({}, traefik("GET", "/public/x"), nginx("GET", "/orders/1"),
                    {**traefik("GET", "/orders/1"), **bearer(token)}):
        resp = await door.client.get("/public/x", headers=headers)
        assert resp.status == 403
        assert (await resp.json())["error"] == "access_denied"
        assert "X-Auth-Subject" not in resp.headers
    assert await door.metric("jwtproxy_forward_auth_requests_total", route="(none)",
                             code="403") == 4
    assert await door.metric("jwtproxy_auth_total") == 0


@pytest.mark.parametrize(("headers", "why"), [
    ({"X-Forwarded-Uri": "/public/x"}, "go together"),
    ({"X-Original-URI": "/public/x"}, "go together"),  # no default method
    ({**{"X-Original-Method": "GET", "X-Original-URI": "/orders/1"},
      **{"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/public/x"}}, "both"),
])
async def test_half_or_two_descriptions_are_400(
    door: Door, headers: dict[str, str], why: str,
) -> None:
    resp = await door.client.get("/", headers=headers)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid_request" and why in body["error_description"]


async def test_a_doubled_description_header_is_400(door: Door) -> None:
    resp = await door.client.get("/", headers=[
        ("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/public/x"),
        ("X-Forwarded-Uri", "/orders/1")])
    assert resp.status == 400


async def test_pinned_convention_ignores_the_others(
    make_door: DoorFactory, jwks: Jwks,
) -> None:
    config = config_for(jwks[1], forward_auth={"listen": "127.0.0.1:9191",
                                               "convention": "x-original"})
    door = await make_door(config)
    # a client's X-Forwarded-* the gateway let through are not even looked at
    resp = await door.client.get("/", headers={**nginx("GET", "/orders/1"),
                                               **traefik("GET", "/public/x")})
    assert resp.status == 401
    resp = await door.client.get("/public/x", headers=traefik("GET", "/public/x"))
    assert resp.status == 400


# -- modes ---------------------------------------------------------------------------------


async def test_report_only_and_optional(door: Door, keys: KeyRing) -> None:
    resp = await door.client.get("/", headers={**nginx("GET", "/report/1"),
                                               **bearer(mint(keys.other_rsa, good()))})
    assert resp.status == 200
    assert await door.metric("jwtproxy_auth_total", route="report", result="denied",
                             reason="bad_signature") == 1
    resp = await door.client.get("/", headers=nginx("GET", "/maybe/1"))
    assert resp.status == 200 and "X-Auth-Subject" not in resp.headers
    resp = await door.client.get("/", headers={**nginx("GET", "/maybe/1"),
                                               **bearer(mint(keys.rsa, good(sub="ann")))})
    assert resp.status == 200 and resp.headers["X-Auth-Subject"] == "ann"
    resp = await door.client.get("/", headers={**nginx("GET", "/maybe/1"),
                                               **bearer(mint(keys.other_rsa, good()))})
    assert resp.status == 401


async def test_query_token_comes_from_the_original_uri(
    make_door: DoorFactory, jwks: Jwks, keys: KeyRing,
) -> None:
    door = await make_door(config_for(jwks[1], tokens=[{"query": "access_token"}]))
    token = mint(keys.rsa, good())
    resp = await door.client.get("/", headers=traefik("GET", f"/orders/1?access_token={token}"))
    assert resp.status == 200
    # the auth request's own query is not the original request's
    resp = await door.client.get(f"/?access_token={token}", headers=traefik("GET", "/orders/1"))
    assert resp.status == 401


async def test_one_access_line_per_decision(
    door: Door, keys: KeyRing, caplog: pytest.LogCaptureFixture,
) -> None:
    token = mint(keys.rsa, good(jti="j-1"))
    with caplog.at_level(logging.INFO, logger="jwtproxy.access"):
        await door.client.get("/", headers={**traefik("GET", f"/orders/1?t={token}"),
                                            **bearer(token)})
    (line,) = [r for r in caplog.records if r.name == "jwtproxy.access"]
    fields = vars(line)
    assert fields["door"] == "forward_auth" and fields["route"] == "orders"
    assert fields["source"] == "x-forwarded" and fields["path"] == "/orders/1"
    assert fields["status"] == 200 and fields["auth"] == "ok" and fields["jti"] == "j-1"
    assert token not in caplog.text
    assert "trace_id" not in fields


async def test_access_line_carries_the_trace_id_the_gateway_passed_on(
    door: Door, caplog: pytest.LogCaptureFixture,
) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with caplog.at_level(logging.INFO, logger="jwtproxy.access"):
        await door.client.get("/", headers={**traefik("GET", "/reads/1"),
                                            "traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    (line,) = [r for r in caplog.records if r.name == "jwtproxy.access"]
    assert vars(line)["trace_id"] == trace


# -- the proxy door and upstream-less routes ---------------------------------------------


async def test_proxy_door_answers_a_route_without_upstream_404(
    make_proxy: ProxyFactory, jwks: Jwks, upstream: Upstream, keys: KeyRing,
) -> None:
    config = base_config(jwks[1], upstream[1])
    del config["routes"][1]["upstream"]  # orders: forward-auth only
    proxy = await make_proxy(config)
    resp = await proxy.client.get("/orders/1", headers=bearer(mint(keys.rsa, good())))
    assert resp.status == 404 and await resp.json() == {"error": "not_found"}
    assert upstream[0].received == []
    assert await proxy.metric("jwtproxy_auth_total") == 0
    assert (await proxy.client.get("/public/x")).status == 200


# -- config ----------------------------------------------------------------------------------


def problems(data: dict[str, Any]) -> list[str]:
    try:
        load_text(yaml.safe_dump(data))
    except ConfigError as err:
        return err.problems
    return []


def minimal(**extra: Any) -> dict[str, Any]:
    return {"issuers": {"hs": {"issuer": "hs", "secret": HS_SECRET, "algorithms": ["HS256"]}},
            "routes": [{"name": "r", "match": {"path_prefix": "/"},
                        "auth": {"issuers": ["hs"]}}], **extra}


def test_config_forward_auth_only() -> None:
    config = load_text(yaml.safe_dump(minimal(
        server={"listen": None}, forward_auth={"listen": "127.0.0.1:9191"})))
    assert config.server.listen is None
    assert config.forward_auth is not None
    assert config.forward_auth.trusted_proxies == ("127.0.0.0/8", "::1/128")
    assert config.routes[0].upstream == ""


@pytest.mark.parametrize(("section", "expected"), [
    ({"listen": "0.0.0.0:9191"}, "forward_auth.trusted_proxies: required when listen is not "
                                 "loopback"),
    ({"listen": "10.1.2.3:9191", "trusted_proxies": []}, "forward_auth.trusted_proxies: "
                                                         "expected at least one network"),
    ({"listen": "0.0.0.0:9191", "trusted_proxies": ["10.0.0.0/33"]},
     "forward_auth.trusted_proxies[0]: not an IP network"),
    ({}, "forward_auth.listen: required"),
    ({"listen": "127.0.0.1:9090"}, "forward_auth.listen: must differ"),
    ({"listen": "127.0.0.1:9191", "path_prefix": "ext_authz"}, "forward_auth.path_prefix"),
    ({"listen": "127.0.0.1:9191", "convention": "envoy"}, "forward_auth.convention"),
    ({"listen": "127.0.0.1:9191", "trusted": []}, "forward_auth.trusted: unknown key"),
])
def test_config_forward_auth_refused_with_its_path(
    section: dict[str, Any], expected: str,
) -> None:
    found = problems(minimal(forward_auth=section))
    assert any(problem.startswith(expected) for problem in found), found


def test_check_names_the_path_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal(forward_auth={"listen": "0.0.0.0:9191"}),
                                   sort_keys=False))
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "forward_auth.trusted_proxies: required when listen is not loopback" in err
    assert "(line " in err
    path.write_text(yaml.safe_dump(minimal(forward_auth={"listen": "0.0.0.0:9191",
                                                         "trusted_proxies": ["10.0.0.0/8"]})))
    assert main(["check", "-c", str(path)]) == 0


# -- explain --forward-auth ------------------------------------------------------------------


def explain_lines(tmp_path: Path, *args: str) -> tuple[int, str]:
    config = minimal(forward_auth={"listen": "127.0.0.1:9191"})
    config["routes"].insert(0, {"name": "public", "match": {"path_prefix": "/public"},
                                "auth": "none"})
    config["routes"][1].update(name="orders", match={"path_prefix": "/orders"})
    config["routes"][1]["forward"] = {"claims": {"sub": "X-Auth-Subject",
                                                 "email": "X-Auth-Email"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["explain", "-c", str(path), "--offline", "--forward-auth", *args])
    return code, out.getvalue()


def test_explain_forward_auth_shows_the_reconstruction(tmp_path: Path) -> None:
    token = mint(None, {"iss": "hs", "sub": "ann"}, secret=HS_SECRET.encode())
    code, text = explain_lines(tmp_path, "-H", "X-Original-Method: post", "-H",
                               "X-Original-URI: /orders/1?x=1", "--host", "api.test",
                               "/_auth", token)
    assert code == 0, text
    assert ("original  POST http://api.test/orders/1?x=1  "
            "(from X-Original-Method / X-Original-URI + Host)") in text
    assert "route orders" in text
    assert "ALLOW: 200 to the gateway" in text
    assert "X-Auth-Subject: ann" in text
    assert "X-Auth-Email: (not sent: the token has no email claim)" in text


def test_explain_forward_auth_denials(tmp_path: Path) -> None:
    code, text = explain_lines(tmp_path, "-H", "X-Forwarded-Method: GET", "-H",
                               "X-Forwarded-Uri: /nowhere", "/")
    assert code == 1
    assert "DENY: 403 (not_found)" in text and '"error": "not_found"' in text
    code, text = explain_lines(tmp_path, "-H", "X-Forwarded-Uri: /orders", "/")
    assert code == 1
    assert "not reconstructed: X-Forwarded-Method and X-Forwarded-Uri go together" in text
    assert "DENY: 400" in text
    code, text = explain_lines(tmp_path, "--json", "/orders/1")  # the request itself
    report = json.loads(text)
    assert report["door"] == "forward_auth" and report["status"] == 401
    assert report["original_request"].startswith("GET http://localhost/orders/1")


def test_explain_header_needs_forward_auth(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    assert main(["explain", "-c", str(path), "-H", "X-Original-URI: /", "/"]) == 2
    assert main(["explain", "-c", str(path), "--forward-auth", "-H", "nocolon", "/"]) == 2


# -- the process: both doors, reload -------------------------------------------------------


def test_both_doors_in_one_process_and_trusted_proxies_follow_a_reload(
    keys: KeyRing, tmp_path: Path,
) -> None:
    """`jwtproxy run` serves the proxy and the forward-auth door from one policy; SIGHUP
    swaps the policy of both, trusted_proxies included."""
    def get(port: int, path: str, headers: dict[str, str]) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    config = {
        "forward_auth": {},
        "issuers": {"hs": {"issuer": "hs", "secret": HS_SECRET, "algorithms": ["HS256"]}},
        "routes": [
            {"name": "gate-only", "match": {"path_prefix": "/gate"}, "auth": {}},
            {"name": "public", "match": {"path_prefix": "/"}, "upstream": "http://127.0.0.1:1",
             "auth": "none"},
        ],
    }
    token = mint(None, {"iss": "hs"}, secret=HS_SECRET.encode())
    ask = {**nginx("GET", "/gate/1"), **bearer(token)}
    with proxy_process(config) as proc:
        assert proc.forward_port is not None
        assert get(proc.forward_port, "/", ask) == 200
        assert get(proc.port, "/gate/1", bearer(token)) == 404  # no upstream: not the proxy's
        text = proc.config_path.read_text().replace(
            "forward_auth:\n", "forward_auth:\n  trusted_proxies: [192.0.2.0/24]\n")
        proc.config_path.write_text(text)
        proc.process.send_signal(signal.SIGHUP)
        for _ in range(200):  # polling for the reload, not a timing guess
            if get(proc.forward_port, "/", ask) == 403:
                break
            time.sleep(0.05)
        assert get(proc.forward_port, "/", ask) == 403
        assert "config_reloaded" in proc.logs()
