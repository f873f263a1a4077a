"""Fault injection with real servers the tests control: a JWKS issuer that is slow,
failing, lying, huge, redirecting or behind the wrong CA; and an upstream that refuses,
resets, hangs, stops mid-body, closes idle connections, sends interim responses, or
answers faster than the client reads."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from tests.conftest import AUDIENCE, ISSUER, Proxy, ProxyFactory, base_config
from tests.proc import proxy_process
from tests.scripted import ScriptedFactory, ScriptedUpstream, Turn, ok, read_request
from tests.servers import EchoUpstream, JwksEndpoint
from tests.tokens import KeyRing, mint

Jwks = tuple[JwksEndpoint, str]
FLAKY_ISSUER = "https://flaky.test/"
MB = 1024 * 1024
JWKS_BODY_CAP = 150 * 1024


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- JWKS faults --------------------------------------------------------------------------


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def jwks_log() -> Iterator[list[logging.LogRecord]]:
    """Records of `jwtproxy.jwks`, whether or not another test configured logging."""
    logger = logging.getLogger("jwtproxy.jwks")
    handler = ListHandler()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


class Firehose:
    """Answers one request with a 100 MB body, streamed, counting what it got to send
    before the client hung up."""

    TOTAL = 100 * 1000 * 1000

    def __init__(self) -> None:
        self.sent = 0
        self.hung_up = asyncio.Event()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/jwks.json"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b" " * 65536
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n{\"keys\": [" % self.TOTAL)
            while self.sent < self.TOTAL:
                writer.write(chunk)
                await writer.drain()
                self.sent += len(chunk)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hung_up.set()
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class Fault:
    issuer: dict[str, Any]  # the flaky issuer's config
    iss: str  # what its tokens carry
    log_detail: str  # a piece of the logged error
    check: Callable[[], Awaitable[None]] | None = None
    cleanup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, Path, Path]:
    """A server context whose certificate (for 127.0.0.1) is signed by one CA, that CA's
    PEM, and the PEM of an unrelated CA."""
    issuing, unrelated = trustme.CA(), trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issuing.issue_cert("127.0.0.1").configure_cert(context)
    right, wrong = tmp_path / "right-ca.pem", tmp_path / "wrong-ca.pem"
    issuing.cert_pem.write_to_path(str(right))
    unrelated.cert_pem.write_to_path(str(wrong))
    return context, right, wrong


async def build_fault(
    name: str, keys: KeyRing, aiohttp_server: Any, tmp_path: Path
) -> Fault:
    document = keys.jwks()
    release = asyncio.Event()
    hits = {"jwks": 0, "elsewhere": 0}

    async def valid(request: web.Request) -> web.Response:
        hits["jwks"] += 1
        return web.json_response(document)

    async def slow(request: web.Request) -> web.Response:
        await release.wait()  # fault injection: an issuer slower than jwks.timeout
        return web.json_response(document)

    async def failing(request: web.Request) -> web.Response:
        return web.json_response({"message": "internal"}, status=500)

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG\r\n\x1a\n{\"keys\": [", content_type="application/json")

    async def elsewhere(request: web.Request) -> web.Response:
        hits["elsewhere"] += 1
        return web.json_response(document)

    async def serve(handler: Any, path: str = "/jwks.json", **kwargs: Any) -> str:
        app = web.Application()
        app.router.add_get(path, handler)
        server = await aiohttp_server(app, **kwargs)
        return str(server.make_url(path))

    def flaky(uri: str, **extra: Any) -> dict[str, Any]:
        return {"issuer": FLAKY_ISSUER, "jwks_uri": uri, **extra}

    if name == "slow":
        fault = Fault(flaky(await serve(slow)), FLAKY_ISSUER, "timed out")

        async def unblock() -> None:
            release.set()

        fault.cleanup.append(unblock)
        return fault
    if name == "status-500":
        return Fault(flaky(await serve(failing)), FLAKY_ISSUER, "HTTP 500")
    if name == "garbage":
        return Fault(flaky(await serve(garbage)), FLAKY_ISSUER, "not valid JSON")
    if name == "100MB-body":
        firehose = Firehose()
        await firehose.start()

        async def cut_early() -> None:
            await asyncio.wait_for(firehose.hung_up.wait(), 10)
            assert firehose.sent < 16 * MB, f"{firehose.sent} bytes sent of a 100 MB body"

        return Fault(flaky(firehose.url), FLAKY_ISSUER, "body over", cut_early,
                     [firehose.close])
    if name == "redirect-elsewhere":
        target = await serve(elsewhere)

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(target)

        async def not_followed() -> None:
            assert hits["elsewhere"] == 0

        return Fault(flaky(await serve(redirect)), FLAKY_ISSUER, "HTTP 302", not_followed)
    if name == "tls-wrong-ca":
        context, _, wrong = tls_pair(tmp_path)
        uri = await serve(valid, ssl=context)
        assert uri.startswith("https://")
        return Fault(flaky(uri, ca_file=str(wrong)), FLAKY_ISSUER, "certificate verify failed")
    if name == "discovery-issuer-differs":
        base = {"url": ""}

        async def discovery(request: web.Request) -> web.Response:
            return web.json_response({"issuer": base["url"] + "/someone-else",
                                      "jwks_uri": base["url"] + "/jwks.json"})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks.json", valid)
        server = await aiohttp_server(app)
        base["url"] = str(server.make_url("")).rstrip("/")

        async def keys_never_fetched() -> None:
            assert hits["jwks"] == 0

        return Fault({"issuer": base["url"]}, base["url"], "discovery issuer",
                     keys_never_fetched)
    raise AssertionError(name)


async def _flaky_proxy(
    make_proxy: ProxyFactory, jwks_url: str, upstream_url: str, fault: Fault
) -> Proxy:
    flaky = {"audiences": [AUDIENCE], "algorithms": ["RS256"],
             "jwks": {"timeout": "300ms", "refresh_min_interval": "5s"}, **fault.issuer}
    return await make_proxy({
        "issuers": {
            "main": {"issuer": ISSUER, "jwks_uri": jwks_url, "audiences": [AUDIENCE],
                     "algorithms": ["RS256"]},
            "flaky": flaky,
        },
        "routes": [
            {"name": "public", "match": {"path_prefix": "/public"}, "upstream": upstream_url,
             "auth": "none"},
            {"name": "good", "match": {"path_prefix": "/good"}, "upstream": upstream_url,
             "auth": {"issuers": ["main"]}},
            {"name": "flaky", "match": {"path_prefix": "/flaky"}, "upstream": upstream_url,
             "auth": {"issuers": ["flaky"]}},
        ],
    })


@pytest.mark.parametrize("name", ["slow", "status-500", "garbage", "100MB-body",
                                  "redirect-elsewhere", "tls-wrong-ca",
                                  "discovery-issuer-differs"])
async def test_jwks_fault_is_503_for_that_issuer_only(
    name: str, make_proxy: ProxyFactory, keys: KeyRing, jwks: Jwks,
    upstream: tuple[EchoUpstream, str], aiohttp_server: Any, tmp_path: Path,
    jwks_log: list[logging.LogRecord],
) -> None:
    fault = await build_fault(name, keys, aiohttp_server, tmp_path)
    try:
        started = time.monotonic()
        proxy = await _flaky_proxy(make_proxy, jwks[1], upstream[1], fault)
        assert time.monotonic() - started < 3.0  # a fetch waits at most jwks.timeout
        flaky_token = mint(keys.rsa, {"iss": fault.iss, "aud": AUDIENCE})
        good_token = mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE})

        started = time.monotonic()
        resp = await proxy.client.get("/flaky/x", headers=bearer(flaky_token))
        assert resp.status == 503, await resp.text()
        assert time.monotonic() - started < 1.0
        assert int(resp.headers["Retry-After"]) > 0
        assert (await resp.json())["error"] == "temporarily_unavailable"

        assert (await proxy.client.get("/good/x", headers=bearer(good_token))).status == 200
        assert (await proxy.client.get("/public/x")).status == 200
        assert [r.path_qs for r in upstream[0].received] == ["/good/x", "/public/x"]

        failures = [r for r in jwks_log if r.getMessage() == "jwks_refresh_failed"]
        assert failures and {getattr(r, "issuer", None) for r in failures} == {"flaky"}
        assert fault.log_detail in getattr(failures[0], "error", ""), failures[0].__dict__
        assert await proxy.metric("jwtproxy_jwks_refresh_total", issuer="flaky",
                                  result="error") >= 1
        assert await proxy.metric("jwtproxy_jwks_refresh_total", issuer="main",
                                  result="error") == 0
        ready = await proxy.admin.get("/readyz")
        assert ready.status == 503
        assert [m["issuer"] for m in (await ready.json())["missing"]] == ["flaky"]
        if fault.check is not None:
            await fault.check()
    finally:
        for cleanup in fault.cleanup:
            await cleanup()


async def test_jwks_over_tls_with_the_issuers_ca_file_works(
    make_proxy: ProxyFactory, keys: KeyRing, jwks: Jwks,
    upstream: tuple[EchoUpstream, str], aiohttp_server: Any, tmp_path: Path,
) -> None:
    context, right, _ = tls_pair(tmp_path)

    async def valid(request: web.Request) -> web.Response:
        return web.json_response(keys.jwks())

    app = web.Application()
    app.router.add_get("/jwks.json", valid)
    server = await aiohttp_server(app, ssl=context)
    fault = Fault({"issuer": FLAKY_ISSUER, "jwks_uri": str(server.make_url("/jwks.json")),
                   "ca_file": str(right)}, FLAKY_ISSUER, "")
    proxy = await _flaky_proxy(make_proxy, jwks[1], upstream[1], fault)
    token = mint(keys.rsa, {"iss": FLAKY_ISSUER, "aud": AUDIENCE})
    assert (await proxy.client.get("/flaky/x", headers=bearer(token))).status == 200
    assert await proxy.metric("jwtproxy_jwks_refresh_total", issuer="flaky", result="ok") == 1


async def proxy_to(
    make_proxy: ProxyFactory, jwks: Jwks, upstream: ScriptedUpstream, read: str = "2s"
) -> Proxy:
    config = base_config(jwks[1], upstream.url)
    config["routes"][0]["timeouts"] = {"read": read}
    return await make_proxy(config)


# -- upstream faults ----------------------------------------------------------------------


async def test_upstream_that_restarts_is_502_while_down_then_served_again(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    """Refused after a working period (idle pooled connections now dead): a prompt 502,
    and the first request after the upstream is back succeeds."""

    async def answer(turn: Turn) -> bool:
        await turn.send(ok())
        return True

    upstream = await scripted(answer)
    proxy = await proxy_to(make_proxy, jwks, upstream)
    for _ in range(3):
        assert (await proxy.client.get("/public/x")).status == 200
    await upstream.stop()
    started = time.monotonic()
    resp = await proxy.client.get("/public/x")
    assert resp.status == 502 and (await resp.json())["error"] == "bad_gateway"
    assert time.monotonic() - started < 1.0
    again = ScriptedUpstream(answer, upstream.port)
    await again.start()
    try:
        assert (await proxy.client.get("/public/x")).status == 200
    finally:
        await again.stop()


@pytest.mark.parametrize("how", ["length-then-rst", "chunked-then-rst", "length-then-fin"])
async def test_upstream_dying_mid_body_cuts_the_client_connection(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory, how: str
) -> None:
    part = os.urandom(100_000)

    async def die(turn: Turn) -> bool:
        if turn.request.target == "/public/ok":
            await turn.send(ok())
            return True
        if how.startswith("chunked"):
            await turn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + b"%x\r\n%b\r\n" % (len(part), part))
        else:
            await turn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + part)
        await asyncio.sleep(0.2)  # fault injection: the body stops, then the connection dies
        if how.endswith("rst"):
            turn.reset()
        return False

    upstream = await scripted(die)
    proxy = await proxy_to(make_proxy, jwks, upstream)
    resp = await proxy.client.get("/public/x")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()  # a broken transfer, never a clean short body
    assert (await proxy.client.get("/public/ok")).status == 200


@pytest.mark.parametrize("how", ["fin", "hang"])
async def test_chunked_body_that_stops_early_is_a_broken_transfer(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory, how: str
) -> None:
    async def stop_early(turn: Turn) -> bool:
        await turn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n6\r\n world\r\n")
        if how == "hang":
            await turn.release.wait()  # fault injection: no terminal chunk, no close
        return False

    upstream = await scripted(stop_early)
    proxy = await proxy_to(make_proxy, jwks, upstream, read="500ms")
    started = time.monotonic()
    resp = await proxy.client.get("/public/x")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert time.monotonic() - started < 2.0  # a stalled body is cut after timeouts.read


@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200", b"HTTP/1.1 200 OK\r\nX-Half: y",
                                  b"HTTP/1.1 100 Continue\r\n\r\n"])
async def test_upstream_hanging_before_the_head_is_504_within_the_read_timeout(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory, sent: bytes
) -> None:
    async def hang(turn: Turn) -> bool:
        await turn.send(sent)
        await turn.release.wait()  # fault injection: the final head never comes
        return False

    upstream = await scripted(hang)
    proxy = await proxy_to(make_proxy, jwks, upstream, read="300ms")
    started = time.monotonic()
    resp = await proxy.client.get("/public/x")
    assert resp.status == 504
    assert (await resp.json())["error"] == "gateway_timeout"
    assert 0.3 <= time.monotonic() - started < 1.3


async def test_connection_close_responses_do_not_break_the_next_request(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    async def close_each(turn: Turn) -> bool:
        target = turn.request.target
        if target == "/public/http10":
            await turn.send(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!")
        else:
            await turn.send(ok(target.encode(), b"Connection: close"))
        return False

    upstream = await scripted(close_each)
    proxy = await proxy_to(make_proxy, jwks, upstream)
    for i in range(30):
        resp = await proxy.client.get(f"/public/{i}")
        assert resp.status == 200 and await resp.read() == f"/public/{i}".encode()
    resp = await proxy.client.get("/public/http10")
    assert resp.status == 200 and await resp.read() == b"old!"
    assert (await proxy.client.get("/public/after")).status == 200
    assert upstream.connections == 32


async def test_close_delimited_response_body_arrives_whole(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    """RFC 9112 §6.3 rule 8: no Content-Length and no chunking, the body ends when the
    upstream closes. That end is the whole body, not a broken transfer."""
    blob = os.urandom(300_000)

    async def until_close(turn: Turn) -> bool:
        if turn.request.target == "/public/small":
            await turn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsmall")
        else:
            await turn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + blob)
        return False

    upstream = await scripted(until_close)
    proxy = await proxy_to(make_proxy, jwks, upstream)
    resp = await proxy.client.get("/public/small")
    assert resp.status == 200 and await resp.read() == b"small"
    resp = await proxy.client.get("/public/blob")
    assert resp.status == 200 and await resp.read() == blob


async def test_close_delimited_body_cut_by_a_reset_is_a_broken_transfer(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    """A FIN ends a close-delimited body; an RST does not: that one is truncated."""

    async def reset_midway(turn: Turn) -> bool:
        await turn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 100_000)
        await asyncio.sleep(0.2)  # fault injection: part of the body, then a reset
        turn.reset()
        return False

    upstream = await scripted(reset_midway)
    proxy = await proxy_to(make_proxy, jwks, upstream)
    resp = await proxy.client.get("/public/x")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_a_client_vanishing_mid_response_frees_the_upstream_connection(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client reads the head and a little of a large body, then goes away: the
    upstream connection is closed (not kept reading, not pooled), the disconnect is not
    an unhandled error, and the proxy keeps serving."""
    upstream_gone = asyncio.Event()

    async def large(turn: Turn) -> bool:
        if turn.request.target == "/public/ok":
            await turn.send(ok())
            return True
        try:
            await turn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (256 * MB))
            for _ in range(256 * 16):
                await turn.send(b"y" * 65536)
        except ConnectionError:
            upstream_gone.set()
        return False

    upstream = await scripted(large)
    proxy = await proxy_to(make_proxy, jwks, upstream)
    async with aiohttp.ClientSession() as session:
        resp = await session.get(proxy.client.make_url("/public/large"))
        assert resp.status == 200
        await resp.content.readexactly(65536)
        resp.close()  # drops the connection mid-body
    await asyncio.wait_for(upstream_gone.wait(), 5.0)
    unhandled = [r for r in caplog.records
                 if r.name == "aiohttp.server" and r.levelno >= logging.ERROR]
    assert unhandled == [], [r.getMessage() for r in unhandled]
    assert (await proxy.client.get("/public/ok")).status == 200


async def test_streamed_responses_carry_the_request_id_too(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    """A response relayed as it arrives gets the same X-Request-Id as a buffered one."""

    async def slow_body(turn: Turn) -> bool:
        body = b"x" * 200_000
        await turn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        await asyncio.sleep(0.05)  # fault injection: the body comes after the head
        await turn.send(body)
        return True

    upstream = await scripted(slow_body)
    proxy = await proxy_to(make_proxy, jwks, upstream)
    resp = await proxy.client.get("/public/x", headers={"X-Request-Id": "stream-1"})
    assert resp.status == 200 and len(await resp.read()) == 200_000
    assert resp.headers.get("X-Request-Id") == "stream-1"
    assert upstream.requests[0].headers.count(("X-Request-Id", "stream-1")) == 1


async def test_a_response_without_content_type_is_not_given_one(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    """RFC 9110 §8.3: without Content-Type the recipient may sniff or assume
    application/octet-stream; a proxy that adds one changes what the origin said."""

    async def untyped(turn: Turn) -> bool:
        if turn.request.target == "/public/streamed":
            await turn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n")
            await asyncio.sleep(0.05)  # fault injection: the body comes after the head
            await turn.send(b"x" * 200_000)
        else:
            await turn.send(ok(b"<p>hi</p>"))
        return True

    upstream = await scripted(untyped)
    proxy = await proxy_to(make_proxy, jwks, upstream)
    for path in ("/public/buffered", "/public/streamed"):
        resp = await proxy.client.get(path)
        assert resp.status == 200
        await resp.read()
        assert "Content-Type" not in resp.headers, (path, resp.headers["Content-Type"])


@pytest.mark.parametrize("split", [True, False], ids=["separate-packets", "one-packet"])
async def test_interim_responses_before_the_final_one(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory, split: bool
) -> None:
    hints = (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
             b"HTTP/1.1 100 Continue\r\n\r\n")
    final = ok(b"hello", b"X-Final: yes")

    async def interim(turn: Turn) -> bool:
        if split:
            await turn.send(hints)
            await asyncio.sleep(0.05)  # fault injection: the final head comes later
            await turn.send(final)
        else:
            await turn.send(hints + final)
        return True

    upstream = await scripted(interim)
    proxy = await proxy_to(make_proxy, jwks, upstream)
    for _ in range(3):  # the pooled connection stays in step after interim responses
        resp = await proxy.client.get("/public/x")
        assert resp.status == 200 and await resp.read() == b"hello"
        assert resp.headers["X-Final"] == "yes"
        assert "Link" not in resp.headers  # an interim's fields are not the final's
    assert upstream.connections == 1


async def test_head_204_and_304_have_no_body_and_keep_both_connections_in_step(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    answers = {
        "/public/head": b"HTTP/1.1 200 OK\r\nContent-Length: 123456\r\nETag: \"h\"\r\n\r\n",
        "/public/304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 999\r\nETag: \"h\"\r\n\r\n",
        "/public/204": b"HTTP/1.1 204 No Content\r\n\r\n",
        "/public/body": ok(b"after"),
    }

    async def bodyless(turn: Turn) -> bool:
        await turn.send(answers[turn.request.target])
        return True

    upstream = await scripted(bodyless)
    proxy = await proxy_to(make_proxy, jwks, upstream)
    for _ in range(2):
        resp = await proxy.client.head("/public/head")
        assert resp.status == 200 and await resp.read() == b""
        assert resp.headers["Content-Length"] == "123456"
        resp = await proxy.client.get("/public/304")
        assert resp.status == 304 and await resp.read() == b""
        assert resp.headers["ETag"] == '"h"'
        resp = await proxy.client.get("/public/204")
        assert resp.status == 204 and await resp.read() == b""
        resp = await proxy.client.get("/public/body")
        assert resp.status == 200 and await resp.read() == b"after"
    assert upstream.connections == 1  # reused throughout: nothing was left unread


@pytest.mark.parametrize("how", ["fin-on-reuse", "rst-on-reuse", "close-when-idle"])
async def test_idle_connections_closed_by_the_upstream_are_retried(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory, how: str
) -> None:
    """Every 2nd reuse of a kept-alive connection finds it dead: closed (FIN or RST) just
    as the next request arrives (the keep-alive race), or closed while idle in the pool.
    A body-less request is retried on a fresh connection: no 502 reaches the client."""
    dropped, reuses, responses = 0, 0, 0

    async def flaky(turn: Turn) -> bool:
        nonlocal dropped, reuses, responses
        if turn.number > 0 and how != "close-when-idle":
            reuses += 1
            if reuses % 2 == 1:
                dropped += 1
                if how == "rst-on-reuse":
                    turn.reset()
                return False
        await turn.send(ok(turn.request.target.encode()))
        responses += 1
        return not (how == "close-when-idle" and responses % 2 == 1)

    upstream = await scripted(flaky)
    proxy = await proxy_to(make_proxy, jwks, upstream)
    statuses = []
    for i in range(200):
        resp = await proxy.client.get(f"/public/{i}")
        statuses.append(resp.status)
        assert await resp.read() == f"/public/{i}".encode()
    assert statuses == [200] * 200
    if how != "close-when-idle":
        assert dropped > 0  # the race was exercised


async def test_large_response_to_a_slow_reader_is_not_buffered() -> None:
    """64 MiB through the real CLI to a client reading at ~40 MB/s: the proxy's RSS stays
    within +32 MB (reading from the upstream pauses at the pool's 1 MiB high-water mark)."""
    size, block = 64 * MB, os.urandom(MB)
    expected = hashlib.sha256(block * 64).hexdigest()

    handlers: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        with contextlib.suppress(ConnectionError):
            while (request := await read_request(reader)) is not None:
                total = size if request.target == "/big" else MB
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
                for _ in range(total // MB):
                    writer.write(block)
                    await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = {"log": {"level": "warning"},
              "routes": [{"name": "all", "match": {"path_prefix": "/"}, "auth": "none",
                          "upstream": f"http://127.0.0.1:{port}"}]}
    try:
        with proxy_process(config) as proc:
            async with aiohttp.ClientSession() as session:
                for _ in range(3):  # warm up allocator and pools at full speed
                    async with session.get(proc.url + "/small") as resp:
                        assert len(await resp.read()) == MB
                baseline = vm_rss(proc.process.pid)
                peak = baseline
                digest = hashlib.sha256()
                async with session.get(proc.url + "/big") as resp:
                    assert resp.status == 200
                    received = 0
                    while chunk := await resp.content.read(65536):
                        digest.update(chunk)
                        received += len(chunk)
                        if received % MB < 65536:
                            peak = max(peak, vm_rss(proc.process.pid))
                        await asyncio.sleep(0.0015)  # fault injection: a slow reader
                assert received == size and digest.hexdigest() == expected
            grown = (peak - baseline) / MB
            assert grown < 32, f"RSS grew {grown:.1f} MB relaying {size // MB} MiB"
    finally:
        server.close()
        await server.wait_closed()
        if handlers:  # the proxy is gone: its pooled connections see EOF
            await asyncio.wait(handlers, timeout=5)


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- request bodies -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 8 * MB], ids=["0B", "1B", "8MiB"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_request_bodies_arrive_byte_identical(
    proxy: Proxy, keys: KeyRing, upstream: tuple[EchoUpstream, str], size: int, framing: str
) -> None:
    payload = os.urandom(size)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, size, 65536):
            yield payload[i:i + 65536]

    token = mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read"})
    data: Any = payload if framing == "content-length" else chunks()
    resp = await proxy.client.post("/orders/upload", data=data, headers=bearer(token))
    assert resp.status == 200
    assert json.loads(await resp.text())["bytes"] == size
    got = upstream[0].received[-1]
    assert got.body == payload
    framing_headers = got.header_all("Content-Length") + got.header_all("Transfer-Encoding")
    assert len(framing_headers) <= 1
    if framing == "content-length" and size:
        assert framing_headers == [str(size)]


# -- flow control towards the upstream ------------------------------------------------------


@pytest.mark.parametrize("upstream_reads", [True, False])
async def test_a_writer_waits_while_the_upstream_does_not_read(upstream_reads: bool) -> None:
    """8 MB written to an upstream that reads nothing yet: the connection pauses the writer
    (the pool's flow control) instead of buffering; once the upstream reads, every byte
    arrives in order; an upstream that closes instead wakes the writer, whose next send
    fails (502 for the request), never a hang."""
    from jwtproxy.connection import UpstreamError
    from jwtproxy.pool import UpstreamPool

    go = asyncio.Event()
    received = bytearray()
    done = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        if upstream_reads:
            while chunk := await reader.read(1 << 16):
                received.extend(chunk)
        writer.transport.abort()
        done.set()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    data = os.urandom(8 << 20)
    try:
        conn = await UpstreamPool().open(("127.0.0.1", port, None), 5.0)
        conn.begin(head_only=False)
        assert conn.send(data), "8 MB did not fill the transport: no flow control to test"
        drained = asyncio.ensure_future(conn.drained())
        await asyncio.sleep(0)  # one turn of the loop: nothing was read, it still waits
        assert not drained.done()
        if upstream_reads:
            go.set()
            await asyncio.wait_for(drained, 10)
            assert conn.transport is not None
            conn.transport.write_eof()
            await asyncio.wait_for(done.wait(), 10)
            assert bytes(received) == data
        else:
            go.set()
            await asyncio.wait_for(done.wait(), 10)
            await asyncio.wait_for(drained, 10)
            with pytest.raises(UpstreamError):
                for _ in range(100):  # the close reaches the transport within a few turns
                    conn.send(b"more")
                    await asyncio.sleep(0.01)
    finally:
        server.close()
        await server.wait_closed()
