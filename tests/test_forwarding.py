"""What the upstream receives, byte for byte, and what the client gets back."""

from __future__ import annotations

import gzip
import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from tests.conftest import AUDIENCE, ISSUER, Proxy, ProxyFactory, base_config
from tests.servers import EchoUpstream, JwksEndpoint
from tests.tokens import KeyRing, mint

Upstream = tuple[EchoUpstream, str]


def token_for(keys: KeyRing, **claims: Any) -> str:
    return mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read", **claims})


async def test_request_body_arrives_byte_for_byte(
    proxy: Proxy, keys: KeyRing, upstream: Upstream
) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    auth = {"Authorization": f"Bearer {token_for(keys)}"}
    resp = await proxy.client.post("/orders", data=payload, headers=auth)
    assert resp.status == 200
    assert upstream[0].received[-1].body == payload
    assert upstream[0].received[-1].header("Content-Length") == str(len(payload))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 65536):
            yield payload[i:i + 65536]

    resp = await proxy.client.post("/orders", data=chunks(), headers=auth)
    assert resp.status == 200
    assert upstream[0].received[-1].body == payload


async def test_compressed_bodies_are_not_decoded(
    proxy: Proxy, keys: KeyRing, upstream: Upstream
) -> None:
    packed = gzip.compress(b"hello " * 1000)
    resp = await proxy.client.post("/public/x", data=packed,
                                   headers={"Content-Encoding": "gzip"})
    assert resp.status == 200
    got = upstream[0].received[-1]
    assert got.body == packed
    assert got.header("Content-Encoding") == "gzip"


async def test_response_body_streams_back_intact(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], aiohttp_raw_server: Any
) -> None:
    blob = os.urandom(5 * 1024 * 1024)

    async def big(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(blob))})
        if request.path == "/public/chunked":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(blob), 100_000):
                await resp.write(blob[i:i + 100_000])
            await resp.write_eof()
            return resp
        if request.path == "/public/empty":
            return web.Response(status=204)
        return web.Response(body=blob, headers={"ETag": '"v1"'})

    server = await aiohttp_raw_server(big)
    proxy = await make_proxy(base_config(jwks[1], f"http://127.0.0.1:{server.port}"))
    resp = await proxy.client.get("/public/blob")
    assert await resp.read() == blob
    assert resp.headers["ETag"] == '"v1"'
    assert resp.headers["Content-Length"] == str(len(blob))
    resp = await proxy.client.get("/public/chunked")
    assert await resp.read() == blob
    resp = await proxy.client.head("/public/blob")
    assert resp.status == 200 and await resp.read() == b""
    resp = await proxy.client.get("/public/empty")
    assert resp.status == 204 and await resp.read() == b""


async def test_path_and_query_are_kept_byte_exact(proxy: Proxy, upstream: Upstream) -> None:
    raw = "/public/a%20b/%C3%A9,x=1?q=%2B+1&q=2&empty=&flag&sp=%20"
    resp = await proxy.client.get(raw)
    assert resp.status == 200, await resp.text()
    assert upstream[0].received[-1].path_qs == raw


async def test_dot_segments_cannot_reach_a_protected_route_through_a_public_one(
    proxy: Proxy, keys: KeyRing, upstream: Upstream
) -> None:
    for path in ("/public/../orders/1", "/public/%2e%2e/orders/1", "/public%2F..%2Forders/1",
                 "/public/./../orders/1", "/public\\..\\orders/1"):
        resp = await proxy.client.get(path)
        assert resp.status == 401, path
    assert upstream[0].received == []
    auth = {"Authorization": f"Bearer {token_for(keys)}"}
    resp = await proxy.client.get("/public/../orders/1", headers=auth)
    assert resp.status == 200
    assert upstream[0].received[-1].path_qs == "/orders/1"  # upstream sees what was authorized


async def test_hop_by_hop_and_connection_named_headers_are_dropped(
    proxy: Proxy, upstream: Upstream
) -> None:
    resp = await proxy.client.get("/public/x", headers={
        "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "300",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==", "TE": "trailers", "X-Kept": "yes",
    })
    assert resp.status == 200
    got = upstream[0].received[-1]
    for name in ("X-Secret-Hop", "Keep-Alive", "Proxy-Authorization", "TE"):
        assert got.header(name) is None, name
    assert got.header("X-Kept") == "yes"


async def test_claim_headers_sent_by_clients_are_stripped_everywhere(
    proxy: Proxy, keys: KeyRing, upstream: Upstream
) -> None:
    spoof = {"X-Auth-Subject": "admin", "X_Auth_Subject": "admin", "x-auth-groups": "admin"}
    resp = await proxy.client.get("/public/x", headers=spoof)
    assert resp.status == 200
    got = upstream[0].received[-1]
    assert got.header("X-Auth-Subject") is None
    assert got.header("X_Auth_Subject") is None
    assert got.header("X-Auth-Groups") is None
    resp = await proxy.client.get("/orders/1", headers={
        **spoof, "Authorization": f"Bearer {token_for(keys)}"})
    got = upstream[0].received[-1]
    assert got.header_all("X-Auth-Subject") == ["user-1"]
    assert got.header("X_Auth_Subject") is None
    assert got.header("X-Auth-Groups") is None  # the token has no groups claim


async def test_forwarded_headers(proxy: Proxy, upstream: Upstream) -> None:
    resp = await proxy.client.get("/public/x", headers={
        "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example", "Forwarded": "for=203.0.113.9"})
    assert resp.status == 200
    got = upstream[0].received[-1]
    assert got.header("X-Forwarded-For") == "203.0.113.9, 127.0.0.1"
    assert got.header("X-Forwarded-Proto") == "http"  # the client is not a trusted proxy
    host = got.header("Host")
    assert host is not None and host.startswith("127.0.0.1:")
    assert got.header("X-Forwarded-Host") == host
    assert got.header("Forwarded") == f'for=127.0.0.1;proto=http;host="{host}"'


async def test_trusted_proxy_keeps_its_forwarded_headers(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], upstream: Upstream
) -> None:
    config = base_config(jwks[1], upstream[1], server={"trusted_proxies": ["127.0.0.0/8"]})
    proxy = await make_proxy(config)
    await proxy.client.get("/public/x", headers={
        "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "api.example.com"})
    got = upstream[0].received[-1]
    assert got.header("X-Forwarded-For") == "203.0.113.9, 127.0.0.1"
    assert got.header("X-Forwarded-Proto") == "https"
    assert got.header("X-Forwarded-Host") == "api.example.com"


async def test_authorization_strip_and_payload_header(
    make_proxy: ProxyFactory, keys: KeyRing, jwks: tuple[JwksEndpoint, str], upstream: Upstream
) -> None:
    import base64
    import json

    config = base_config(jwks[1], upstream[1])
    config["routes"][2]["forward"] = {"authorization": "strip", "payload_header": "X-Claims",
                                      "claims": {"sub": "X-Auth-Subject"}}
    proxy = await make_proxy(config)
    resp = await proxy.client.get("/x", headers={"Authorization": f"Bearer {token_for(keys)}"})
    assert resp.status == 200
    got = upstream[0].received[-1]
    assert got.header("Authorization") is None
    encoded = got.header("X-Claims")
    assert encoded is not None
    claims = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert claims["sub"] == "user-1" and claims["iss"] == ISSUER


async def test_request_id_is_generated_or_passed_through(proxy: Proxy, upstream: Upstream) -> None:
    resp = await proxy.client.get("/public/x", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    assert upstream[0].received[-1].header("X-Request-Id") == "abc-123"
    resp = await proxy.client.get("/public/x", headers={"X-Request-Id": "bad id " * 40})
    generated = resp.headers["X-Request-Id"]
    assert len(generated) == 32
    assert upstream[0].received[-1].header("X-Request-Id") == generated
