"""One test per row of DESIGN.md's response table, through real sockets: the proxy on a
real port, a real JWKS server and a real upstream that records what it received."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import AUDIENCE, ISSUER, Proxy, ProxyFactory, base_config
from tests.servers import EchoUpstream, JwksEndpoint
from tests.tokens import KeyRing, mint

Upstream = tuple[EchoUpstream, str]
Jwks = tuple[JwksEndpoint, str]


def good(**extra: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read", **extra}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def body(resp: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await resp.text())
    return data


async def test_allowed_request_is_forwarded_with_claim_headers(
    proxy: Proxy, keys: KeyRing, upstream: Upstream
) -> None:
    token = mint(keys.rsa, good(groups=["a", "b"]))
    resp = await proxy.client.get("/orders/7?b=2&a=1", headers=bearer(token))
    assert resp.status == 200
    got = upstream[0].received[-1]
    assert got.path_qs == "/orders/7?b=2&a=1"
    assert got.header("X-Auth-Subject") == "user-1"
    assert got.header("X-Auth-Groups") == "a,b"
    assert got.header("Authorization") == f"Bearer {token}"
    assert resp.headers["X-Upstream"] == "echo"
    assert await proxy.metric("jwtproxy_auth_total", route="orders", issuer="main",
                              result="allowed", reason="ok") == 1


async def test_no_route_is_404(make_proxy: ProxyFactory, jwks: Jwks, upstream: Upstream) -> None:
    config = base_config(jwks[1], upstream[1])
    config["routes"] = config["routes"][:2]
    proxy = await make_proxy(config)
    resp = await proxy.client.get("/elsewhere")
    assert resp.status == 404
    assert await body(resp) == {"error": "not_found"}
    assert upstream[0].received == []
    assert await proxy.metric("jwtproxy_requests_total", route="(none)", code="404") == 1


async def test_missing_token_is_401_with_realm_only(proxy: Proxy, upstream: Upstream) -> None:
    resp = await proxy.client.get("/orders/1")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="jwtproxy"'
    assert (await body(resp))["error_description"]
    assert upstream[0].received == []
    assert await proxy.metric("jwtproxy_auth_total", route="orders", result="denied",
                              reason="missing") == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("malformed", "malformed"),
        ("bad_signature", "bad_signature"),
        ("expired", "expired"),
        ("not_yet_valid", "not_yet_valid"),
        ("wrong_iss", "issuer"),
        ("wrong_aud", "audience"),
        ("alg_not_allowed", "alg"),
        ("unknown_kid", "unknown_kid"),
        ("typ", "typ"),
    ],
)
async def test_invalid_token_is_401_invalid_token(
    proxy: Proxy, keys: KeyRing, upstream: Upstream, case: str, reason: str
) -> None:
    import time

    now = int(time.time())
    tokens = {
        "malformed": "not-a-jwt",
        "bad_signature": mint(keys.other_rsa, good()),
        "expired": mint(keys.rsa, good(exp=now - 3600, iat=now - 7200)),
        "not_yet_valid": mint(keys.rsa, good(nbf=now + 3600)),
        "wrong_iss": mint(keys.rsa, good(iss="https://evil.test/")),
        "wrong_aud": mint(keys.rsa, good(aud="api://other")),
        "alg_not_allowed": mint(keys.rsa, good(), alg="RS512"),
        "unknown_kid": mint(keys.rsa, good(), header={"kid": "nope"}),
        "typ": mint(keys.rsa, good(), header={"typ": "dpop+jwt"}),
    }
    resp = await proxy.client.get("/orders/1", headers=bearer(tokens[case]))
    assert resp.status == 401, await resp.text()
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="jwtproxy", error="invalid_token"')
    assert 'error_description="' in challenge
    payload = await body(resp)
    assert payload["error"] == "invalid_token"
    assert tokens[case] not in json.dumps(payload)
    assert upstream[0].received == []
    assert await proxy.metric("jwtproxy_auth_total", route="orders", result="denied",
                              reason=reason) == 1


async def test_missing_scope_is_403_insufficient_scope(
    proxy: Proxy, keys: KeyRing, upstream: Upstream
) -> None:
    resp = await proxy.client.get("/orders/1", headers=bearer(mint(keys.rsa, good(scope="x"))))
    assert resp.status == 403
    challenge = resp.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="orders:read"' in challenge
    assert (await body(resp))["error"] == "insufficient_scope"
    assert upstream[0].received == []
    assert await proxy.metric("jwtproxy_auth_total", route="orders", issuer="main",
                              result="denied", reason="scope") == 1


async def test_missing_claim_is_403_reason_claim(
    make_proxy: ProxyFactory, keys: KeyRing, jwks: Jwks, upstream: Upstream
) -> None:
    config = base_config(jwks[1], upstream[1])
    config["routes"][1]["auth"] = {"claims": {"cognito:groups": "admin"}}
    proxy = await make_proxy(config)
    member = mint(keys.rsa, good(**{"cognito:groups": ["users", "admin"]}))
    outsider = mint(keys.rsa, good(**{"cognito:groups": ["users"]}))
    assert (await proxy.client.get("/orders/1", headers=bearer(member))).status == 200
    resp = await proxy.client.get("/orders/1", headers=bearer(outsider))
    assert resp.status == 403
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
    assert await proxy.metric("jwtproxy_auth_total", reason="claim", result="denied") == 1


async def test_two_authorization_headers_is_400(proxy: Proxy, keys: KeyRing) -> None:
    token = mint(keys.rsa, good())
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    resp = await proxy.client.get("/orders/1", headers=headers)
    assert resp.status == 400
    assert 'error="invalid_request"' in resp.headers["WWW-Authenticate"]
    assert (await body(resp))["error"] == "invalid_request"


async def test_token_in_two_places_is_400(
    make_proxy: ProxyFactory, keys: KeyRing, jwks: Jwks, upstream: Upstream
) -> None:
    config = base_config(jwks[1], upstream[1],
                         tokens=[{"header": "Authorization"}, {"cookie": "access_token"},
                                 {"query": "access_token"}])
    proxy = await make_proxy(config)
    token = mint(keys.rsa, good())
    resp = await proxy.client.get("/orders/1", headers={
        **bearer(token), "Cookie": f"access_token={token}"})
    assert resp.status == 400
    resp = await proxy.client.get(f"/orders/1?access_token={token}", headers=bearer(token))
    assert resp.status == 400
    # each source alone works
    resp = await proxy.client.get("/orders/1", headers={"Cookie": f"a=b; access_token={token}"})
    assert resp.status == 200
    resp = await proxy.client.get(f"/orders/1?access_token={token}")
    assert resp.status == 200


async def test_strip_takes_the_token_from_wherever_it_came(
    make_proxy: ProxyFactory, keys: KeyRing, jwks: Jwks, upstream: Upstream
) -> None:
    config = base_config(jwks[1], upstream[1],
                         tokens=[{"header": "Authorization"}, {"cookie": "access_token"},
                                 {"query": "access_token"}])
    config["routes"][1]["forward"]["authorization"] = "strip"
    proxy = await make_proxy(config)
    token = mint(keys.rsa, good())
    resp = await proxy.client.get("/orders/1", headers={"Cookie": f"a=b;access_token={token}"})
    assert resp.status == 200
    got = upstream[0].received[-1]
    assert got.header_all("Cookie") == ["a=b"]
    resp = await proxy.client.get(f"/orders/1?z=1&access_token={token}&a=x%20y")
    assert resp.status == 200
    assert upstream[0].received[-1].path_qs == "/orders/1?z=1&a=x%20y"
    resp = await proxy.client.get(f"/orders/1?access_token={token}")
    assert resp.status == 200
    assert upstream[0].received[-1].path_qs == "/orders/1"
    assert token not in str(upstream[0].received)
    # `keep` (the default, route api) passes the credential on as it came
    resp = await proxy.client.get(f"/api?access_token={token}")
    assert upstream[0].received[-1].path_qs == f"/api?access_token={token}"


async def test_keys_unavailable_is_503_with_retry_after(
    make_proxy: ProxyFactory, keys: KeyRing, jwks: Jwks, upstream: Upstream
) -> None:
    jwks[0].status = 500
    proxy = await make_proxy(base_config(jwks[1], upstream[1]))
    resp = await proxy.client.get("/orders/1", headers=bearer(mint(keys.rsa, good())))
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) > 0
    assert await proxy.metric("jwtproxy_auth_total", reason="keys_unavailable") == 1
    ready = await proxy.admin.get("/readyz")
    assert ready.status == 503
    missing = (await ready.json())["missing"]
    assert missing[0]["issuer"] == "main"
    assert "HTTP 500" in missing[0]["error"]
    # public routes keep working while the issuer is down
    assert (await proxy.client.get("/public/x")).status == 200


async def test_a_cached_token_dies_with_its_issuers_keys_past_stale_if_error(
    make_proxy: ProxyFactory, keys: KeyRing, jwks: Jwks, upstream: Upstream
) -> None:
    config = base_config(jwks[1], upstream[1])
    config["issuers"]["main"]["jwks"].update(cache_ttl="60s", stale_if_error="60s")
    proxy = await make_proxy(config)
    store = proxy.app.state.stores["main"] if proxy.app.state else None
    assert store is not None
    now = [store.clock()]
    store.clock = lambda: now[0]  # the store's monotonic clock, driven by the test
    token = bearer(mint(keys.rsa, good()))
    assert (await proxy.client.get("/orders/1", headers=token)).status == 200
    assert (await proxy.client.get("/orders/1", headers=token)).status == 200  # cache hit
    assert await proxy.metric("jwtproxy_token_cache_total", result="hit") == 1
    jwks[0].status = 500
    now[0] += 90  # past the TTL, within stale_if_error: stale keys still serve
    assert (await proxy.client.get("/orders/1", headers=token)).status == 200
    now[0] += 60  # past TTL + stale_if_error
    resp = await proxy.client.get("/orders/1", headers=token)
    assert resp.status == 503
    assert (await body(resp))["error"] == "temporarily_unavailable"
    assert await proxy.metric("jwtproxy_auth_total", reason="keys_unavailable") == 1
    assert await proxy.metric("jwtproxy_jwks_keys", issuer="main") == 0
    assert (await proxy.admin.get("/readyz")).status == 503
    jwks[0].status = 200  # the issuer is back: the next fetch brings the keys again
    now[0] += 60
    assert (await proxy.client.get("/orders/1", headers=token)).status == 200
    assert await proxy.metric("jwtproxy_jwks_keys", issuer="main") == 3


async def test_upstream_refused_is_502(
    make_proxy: ProxyFactory, keys: KeyRing, jwks: Jwks
) -> None:
    from tests.proc import free_port

    proxy = await make_proxy(base_config(jwks[1], f"http://127.0.0.1:{free_port()}"))
    resp = await proxy.client.get("/public/x")
    assert resp.status == 502
    assert (await body(resp))["error"] == "bad_gateway"


async def test_upstream_reset_is_502(
    make_proxy: ProxyFactory, jwks: Jwks, aiohttp_raw_server: Any
) -> None:
    async def reset(request: web.BaseRequest) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    server = await aiohttp_raw_server(reset)
    proxy = await make_proxy(base_config(jwks[1], f"http://127.0.0.1:{server.port}"))
    resp = await proxy.client.get("/public/x")
    assert resp.status == 502
    assert (await proxy.client.get("/public/y")).status == 502  # and keeps serving


async def test_upstream_timeout_is_504(
    make_proxy: ProxyFactory, jwks: Jwks, aiohttp_raw_server: Any
) -> None:
    import asyncio

    release = asyncio.Event()

    async def hang(request: web.BaseRequest) -> web.StreamResponse:
        await release.wait()
        return web.Response()

    server = await aiohttp_raw_server(hang)
    config = base_config(jwks[1], f"http://127.0.0.1:{server.port}")
    config["routes"][0]["timeouts"] = {"read": "200ms"}
    proxy = await make_proxy(config)
    resp = await proxy.client.get("/public/x")
    release.set()
    assert resp.status == 504
    assert (await body(resp))["error"] == "gateway_timeout"


def test_remembered_error_renderings_stay_apart_and_bounded() -> None:
    """error_bytes remembers each (error, description, scope, challenge) rendering: a
    replayed bad token costs no JSON encoding, and two errors never share an answer."""
    from jwtproxy import answers
    from jwtproxy.errors import BadSignature, Expired, Forbidden
    from jwtproxy.gate import Challenge

    def answer(err: Exception, offer: Challenge | None = None) -> tuple[bytes, bytes]:
        data = answers.error_bytes(err, offer, "r-1", True, False)  # type: ignore[arg-type]
        head, _, body = data.partition(b"\r\n\r\n")
        return b"\r\n".join(line for line in head.split(b"\r\n")
                            if not line.startswith(b"Date:")), body

    assert answer(BadSignature("signature does not verify")) == answer(
        BadSignature("signature does not verify"))
    first, second = answer(Expired("token expired")), answer(Expired("token expired 2"))
    assert first != second and b"token expired 2" in second[1]
    scoped = Forbidden("missing scope")
    scoped.scope = "orders:read"
    head, _ = answer(scoped)
    assert b'scope="orders:read"' in head
    dpop = Challenge(bearer=True, dpop_algs="ES256", advertise_dpop=True, used="DPoP")
    assert answer(BadSignature("x"), dpop)[0] != answer(BadSignature("x"))[0]
    for i in range(answers.RENDERED_MAX + 10):
        answer(Expired(f"token expired {i}"))
    assert len(answers._RENDERED) <= answers.RENDERED_MAX
