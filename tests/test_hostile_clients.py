"""Hostile clients: raw HTTP/1.1 over sockets, sending what a well-behaved client library
refuses to send (oversized and ambiguous framing, smuggling attempts, odd request targets,
trickled headers and bodies), against the proxy on a real port in front of a raw-socket
upstream that records every byte it receives and counts the requests in them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httptools
import pytest

from jwtproxy.server import server_options
from tests.conftest import AUDIENCE, ISSUER, Proxy, ProxyFactory, base_config
from tests.proc import proxy_process
from tests.servers import HeaderLookup, JwksEndpoint
from tests.tokens import KeyRing, mint

Jwks = tuple[JwksEndpoint, str]
READ_TIMEOUT = 5.0  # the longest any single exchange below may take
AIOHTTP_KEEPALIVE_DEFAULT = 3630.0  # aiohttp's RequestHandler default, in seconds
HEADER_DEADLINE_MAX = 75.0  # nginx client_header_timeout 60s, old aiohttp keep-alive 75s


# -- the raw upstream ---------------------------------------------------------------------


@dataclass
class Seen(HeaderLookup):
    """One complete request as the upstream parsed it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The last value of `name`, if any."""
        values = self.header_all(name)
        return values[-1] if values else None


class _UpstreamConnection(asyncio.Protocol):
    def __init__(self, owner: RawUpstream) -> None:
        self.owner = owner
        self.raw = bytearray()
        self.parser = httptools.HttpRequestParser(self)
        self.in_message = False
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner.connections.append(self)

    def data_received(self, data: bytes) -> None:
        self.raw += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.owner.errors.append("upgrade")
        except httptools.HttpParserError as err:
            self.owner.errors.append(f"{type(err).__name__}: {err}")
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def on_message_begin(self) -> None:
        self.in_message = True
        self._url, self._headers, self._body = b"", [], bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.in_message = False
        method = self.parser.get_method().decode()
        self.owner.requests.append(
            Seen(method, self._url.decode("latin-1"), self._headers, bytes(self._body)))
        body = b"" if method == "HEAD" else b'{"upstream":"raw"}'
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 18\r\n\r\n" + body)


@dataclass
class RawUpstream:
    """Answers every complete request with 200; keeps the raw bytes of each connection."""

    connections: list[_UpstreamConnection] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    url: str = ""

    @property
    def bytes_received(self) -> int:
        return sum(len(conn.raw) for conn in self.connections)

    @property
    def partial(self) -> bool:
        """True when some connection holds the start of a request that never completed."""
        return any(conn.in_message for conn in self.connections)

    def paths(self) -> list[str]:
        return [seen.target for seen in self.requests]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _UpstreamConnection(upstream), "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield upstream
    server.close()
    for conn in upstream.connections:
        if conn.transport is not None:
            conn.transport.abort()
    await server.wait_closed()


# -- the raw client -----------------------------------------------------------------------


@dataclass
class Answer(HeaderLookup):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class RawClient:
    """One TCP connection to the proxy; responses are parsed by llhttp as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = httptools.HttpResponseParser(self)
        self.answers: list[Answer] = []
        self.closed = False
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self._headers, self._body = [], bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.answers.append(Answer(self.parser.get_status_code(), self._headers,
                                   bytes(self._body)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _read_once(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            data = await asyncio.wait_for(self.reader.read(65536), remaining)
        except TimeoutError:
            return False
        except ConnectionError:
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        self.parser.feed_data(data)
        return True

    async def read_answers(self, count: int, timeout: float = READ_TIMEOUT) -> list[Answer]:
        """Until `count` answers have arrived, the connection closed, or the timeout."""
        deadline = time.monotonic() + timeout
        while len(self.answers) < count and not self.closed:
            if not await self._read_once(deadline):
                break
        return self.answers

    async def wait_closed(self, timeout: float = READ_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            with contextlib.suppress(httptools.HttpParserError):
                await self._read_once(deadline)
        return self.closed

    def close(self) -> None:
        self.writer.close()


async def exchange(port: int, data: bytes, answers: int = 1) -> RawClient:
    client = await RawClient.open(port)
    await client.send(data)
    await client.read_answers(answers)
    client.close()
    return client


def request(target: str, *headers: str, method: str = "GET", body: bytes = b"",
            version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def good_token(keys: KeyRing, **claims: Any) -> str:
    return mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read", **claims})


def reference_path(target: str) -> str:
    """What an RFC 3986 upstream acts on: one percent-decode, `\\` as `/`, `;params`
    dropped, empty segments merged, dot segments removed (§5.2.4)."""
    path = unquote(target.split("?", 1)[0].split("#", 1)[0], errors="replace").replace("\\", "/")
    out: list[str] = []
    for segment in path.split("/"):
        name = segment.split(";", 1)[0]
        if name == "..":
            if out:
                out.pop()
        elif name not in ("", "."):
            out.append(name)
    return "/" + "/".join(out)


@pytest.fixture
async def hostile(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream
) -> tuple[Proxy, RawUpstream]:
    """Routes: /public (no auth), /orders (scope orders:read), / (any valid token)."""
    return await make_proxy(base_config(jwks[1], raw_upstream.url)), raw_upstream


async def still_serving(port: int, upstream: RawUpstream) -> None:
    before = len(upstream.requests)
    client = await exchange(port, request("/public/alive", "Host: a"))
    assert [a.status for a in client.answers] == [200]
    assert len(upstream.requests) == before + 1


# -- oversized and too many headers -------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(["X-Big: " + "a" * 70_000], id="one-value-over-max-field-size"),
        pytest.param(["X-" + "n" * 70_000 + ": 1"], id="one-name-over-max-field-size"),
        pytest.param([f"X-H{i}: v" for i in range(200)], id="200-headers"),
        pytest.param(["Authorization: Bearer " + "e" * 70_000], id="huge-authorization"),
    ],
)
async def test_oversized_or_too_many_headers_are_4xx_and_the_proxy_keeps_serving(
    hostile: tuple[Proxy, RawUpstream], headers: list[str]
) -> None:
    proxy, upstream = hostile
    client = await RawClient.open(proxy.client.port)
    await client.send(request("/public/x", "Host: a", *headers))
    answers = await client.read_answers(1)
    assert answers and 400 <= answers[0].status < 500
    assert await client.wait_closed()
    assert upstream.requests == [] and upstream.bytes_received == 0
    await still_serving(proxy.client.port, upstream)


async def test_the_whole_header_section_is_bounded(hostile: tuple[Proxy, RawUpstream]) -> None:
    """Each field under the 64 KiB field limit and under the 128-field limit, ~1 MB in
    all: refused (Envoy's default cap is 60 KiB, nginx's 4 x 8 KiB), not forwarded."""
    proxy, upstream = hostile
    fields = [f"X-Pad-{i}: " + "v" * 8000 for i in range(120)]
    client = await exchange(proxy.client.port, request("/public/x", "Host: a", *fields))
    assert client.answers and client.answers[0].status in (400, 431)
    assert upstream.requests == []


# -- slowloris and slow bodies ------------------------------------------------------------


async def _trickle(port: int, data: bytes, interval: float, stop: asyncio.Event) -> float | None:
    """Send `data` one byte per `interval`; the time the proxy closed on us, if it did."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        for byte in data:
            if stop.is_set():
                return None
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), interval) == b"":
                    return time.monotonic() - started
        return None
    except ConnectionError:
        return time.monotonic() - started
    finally:
        writer.close()


async def test_slowloris_does_not_pin_the_proxy(hostile: tuple[Proxy, RawUpstream]) -> None:
    proxy, upstream = hostile
    stop = asyncio.Event()
    slow = b"GET /public/slow HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"z" * 1000
    tricklers = [asyncio.create_task(_trickle(proxy.client.port, slow, 0.1, stop))
                 for _ in range(16)]
    try:
        for _ in range(20):
            started = time.monotonic()
            resp = await proxy.client.get("/public/fast")
            assert resp.status == 200
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.1)  # pacing the well-behaved client while the others trickle
    finally:
        stop.set()
        await asyncio.gather(*tricklers)
    assert upstream.paths() == ["/public/fast"] * 20


async def test_header_read_deadline_is_bounded(hostile: tuple[Proxy, RawUpstream]) -> None:
    """aiohttp arms its keep-alive timer when a connection opens and after each response,
    and trickled bytes do not re-arm it: `keepalive_timeout` is the only deadline on
    reading a request head. Its default is 3630 s; a slowloris may hold a connection
    (and a file descriptor) that long with one byte every few seconds."""
    proxy, _ = hostile
    assert proxy.app.state is not None
    options = server_options(proxy.app.state.config)
    deadline = options.get("keepalive_timeout", AIOHTTP_KEEPALIVE_DEFAULT)  # when unset
    assert deadline <= HEADER_DEADLINE_MAX, (
        f"a client may take {deadline}s to send its request head")


async def test_server_keepalive_timeout_cuts_a_slowloris_and_idle_connections(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream
) -> None:
    """With `server.keepalive_timeout: 1s` a client still trickling its head after 1 s is
    cut, and so is one idle after a response; well-behaved clients are left alone."""
    proxy = await make_proxy(base_config(jwks[1], raw_upstream.url,
                                         server={"keepalive_timeout": "1s"}))
    port = proxy.client.port
    stop = asyncio.Event()
    slow = b"GET /public/slow HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"z" * 100
    trickler = asyncio.create_task(_trickle(port, slow, 0.1, stop))
    idle = await RawClient.open(port)
    await idle.send(request("/public/fast", "Host: a"))
    assert [a.status for a in await idle.read_answers(1)] == [200]
    started = time.monotonic()
    assert await idle.wait_closed(timeout=4.0)
    assert 0.5 <= time.monotonic() - started <= 3.0
    idle.close()
    cut = await asyncio.wait_for(trickler, 6.0)
    assert cut is not None and 0.9 <= cut <= 3.0, cut
    assert raw_upstream.paths() == ["/public/fast"]


async def test_a_slow_body_within_the_read_timeout_is_relayed_whole(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream
) -> None:
    config = base_config(jwks[1], raw_upstream.url)
    config["routes"][0]["timeouts"] = {"read": "500ms"}
    proxy = await make_proxy(config)
    client = await RawClient.open(proxy.client.port)
    body = b"0123456789"
    await client.send(request("/public/slow", "Host: a", f"Content-Length: {len(body)}",
                              method="POST"))
    for byte in body:
        await asyncio.sleep(0.1)  # fault injection: a slow client, gaps under the timeout
        await client.send(bytes([byte]))
    answers = await client.read_answers(1)
    client.close()
    assert [a.status for a in answers] == [200]
    assert [seen.body for seen in raw_upstream.requests] == [body]


async def test_a_stalled_body_is_given_up_on_within_the_read_timeout(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream
) -> None:
    """A client that stops sending mid-body must not hold a handler and a pooled upstream
    connection forever: like nginx's client_body_timeout (408), the proxy gives up after
    an idle gap of the route's read timeout, and the upstream never sees a whole request."""
    config = base_config(jwks[1], raw_upstream.url)
    config["routes"][0]["timeouts"] = {"read": "500ms"}
    proxy = await make_proxy(config)
    client = await RawClient.open(proxy.client.port)
    await client.send(request("/public/stall", "Host: a", "Content-Length: 10",
                              method="POST", body=b"abc"))
    answers = await client.read_answers(1, timeout=3.0)
    gave_up = bool(answers) or client.closed
    client.close()
    assert gave_up, "no answer and no close 3 s into a stalled body (read timeout 0.5 s)"
    assert answers == [] or answers[0].status in (408, 400, 504)
    assert raw_upstream.requests == []
    deadline = time.monotonic() + 2.0
    while any(not conn.closed for conn in raw_upstream.connections):
        assert time.monotonic() < deadline, "the half-sent upstream request is still open"
        await asyncio.sleep(0.02)  # polling for the proxy's abort to reach the upstream


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_client_vanishing_mid_body_frees_the_upstream_connection(
    hostile: tuple[Proxy, RawUpstream], how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream got the head and part of the body; the client goes away. The upstream
    connection holding half a request is closed at once (it can never be reused), and
    the disconnect is not an unhandled error."""
    import socket
    import struct

    proxy, upstream = hostile
    client = await RawClient.open(proxy.client.port)
    await client.send(request("/public/upload", "Host: a", "Content-Length: 100000",
                              method="POST", body=b"x" * 1000))
    deadline = time.monotonic() + 2.0
    while upstream.bytes_received < 1000:  # the part of the body has been relayed
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)  # polling
    if how == "rst":
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    deadline = time.monotonic() + 2.0
    while any(not conn.closed for conn in upstream.connections):
        assert time.monotonic() < deadline, "the upstream connection with half a request " \
                                            "is still open 2 s after the client left"
        await asyncio.sleep(0.02)  # polling for the proxy's abort to reach the upstream
    assert upstream.requests == []
    unhandled = [r for r in caplog.records
                 if r.name == "aiohttp.server" and r.levelno >= logging.ERROR]
    assert unhandled == [], [r.getMessage() for r in unhandled]
    await still_serving(proxy.client.port, upstream)


# -- request smuggling --------------------------------------------------------------------

HIDDEN = b"GET /admin/secret HTTP/1.1\r\nHost: a\r\n\r\n"


def _smuggle(*header_lines: bytes, body: bytes, line_end: bytes = b"\r\n") -> bytes:
    head = [b"POST /public/smuggle HTTP/1.1", b"Host: a", *header_lines]
    return line_end.join(head) + line_end + line_end + body


SMUGGLING: Sequence[Any] = [
    pytest.param(_smuggle(b"Content-Length: 4", b"Transfer-Encoding: chunked",
                          body=b"0\r\n\r\n" + HIDDEN), "reject", id="cl-then-te"),
    pytest.param(_smuggle(b"Transfer-Encoding: chunked", b"Content-Length: 4",
                          body=b"0\r\n\r\n" + HIDDEN), "reject", id="te-then-cl"),
    pytest.param(_smuggle(b"Content-Length: 4", b"Content-Length: 45",
                          body=b"abcd" + HIDDEN), "reject", id="two-content-lengths"),
    pytest.param(_smuggle(b"Content-Length: 4, 45", body=b"abcd" + HIDDEN), "reject",
                 id="content-length-list"),
    pytest.param(_smuggle(b"Content-Length: +4", body=b"abcd" + HIDDEN), "reject",
                 id="content-length-plus"),
    pytest.param(_smuggle(b"X-Pad: a", b" Transfer-Encoding: chunked", b"Content-Length: 4",
                          body=b"0\r\n\r\n" + HIDDEN), "reject", id="obs-fold-te"),
    pytest.param(_smuggle(b"X-Pad: a", b"\tcontinued", b"Content-Length: 0", body=HIDDEN),
                 "reject", id="obs-fold-tab"),
    pytest.param(_smuggle(b"Transfer-Encoding: chunked, identity",
                          body=b"0\r\n\r\n" + HIDDEN), "reject", id="te-chunked-identity"),
    pytest.param(_smuggle(b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity",
                          body=b"0\r\n\r\n" + HIDDEN), "reject", id="te-two-lines"),
    pytest.param(_smuggle(b"Transfer-Encoding: gzip", body=b"0\r\n\r\n" + HIDDEN), "reject",
                 id="te-not-ending-chunked"),
    pytest.param(_smuggle(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n" + HIDDEN),
                 "reject", id="space-before-colon"),
    pytest.param(_smuggle(b"Transfer-Encoding:\x0bchunked", b"Content-Length: 4",
                          body=b"0\r\n\r\n" + HIDDEN), "reject", id="vertical-tab-te"),
    pytest.param(_smuggle(b"Content-Length: 4", body=b"abcd" + HIDDEN, line_end=b"\n"),
                 "reject", id="bare-lf-head"),
    pytest.param(_smuggle(b"Transfer-Encoding: chunked",
                          body=b"4\nabcd\n0\n\n" + HIDDEN), "reject", id="bare-lf-chunks"),
    pytest.param(_smuggle(b"X-Pad: a\rContent-Length: 4", body=b"abcd" + HIDDEN), "reject",
                 id="bare-cr"),
    pytest.param(_smuggle(b"Transfer-Encoding: chunked",
                          body=b"1" + b"0" * 17 + b"4\r\nabcd\r\n0\r\n\r\n" + HIDDEN),
                 "reject", id="chunk-size-overflow"),
    pytest.param(_smuggle(b"Transfer-Encoding: identity, chunked",
                          body=b"4\r\nabcd\r\n0\r\n\r\n"), "normalise",
                 id="te-identity-chunked"),
    pytest.param(_smuggle(b"Transfer-Encoding: CHUNKED",
                          body=b"4;ext=1\r\nabcd\r\n0\r\n\r\n"), "normalise",
                 id="te-uppercase-chunk-extension"),
]


@pytest.mark.parametrize(("payload", "outcome"), SMUGGLING)
async def test_ambiguous_framing_is_rejected_or_normalised(
    hostile: tuple[Proxy, RawUpstream], payload: bytes, outcome: str
) -> None:
    proxy, upstream = hostile
    client = await RawClient.open(proxy.client.port)
    await client.send(payload)
    answers = await client.read_answers(1)
    closed = await client.wait_closed(timeout=0.5 if outcome == "normalise" else READ_TIMEOUT)
    client.close()
    assert "/admin/secret" not in " ".join(upstream.paths())
    assert not upstream.partial and upstream.errors == []
    if outcome == "reject":
        assert [a.status for a in answers] == [400]
        assert closed  # nothing after an unparsable message is read as a request
        assert upstream.requests == [] and upstream.bytes_received == 0
    else:
        assert [a.status for a in answers] == [200]
        assert len(upstream.requests) == 1
        seen = upstream.requests[0]
        assert seen.body == b"abcd"
        framing = seen.header_all("Content-Length") + seen.header_all("Transfer-Encoding")
        assert len(framing) == 1 and framing[0].lower() in ("4", "chunked")


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize(
    ("target", "extra", "status"),
    [("/orders/1", (), 401), ("/orders/1", ("Authorization: Bearer nope",), 401),
     ("/orders/1", ("Authorization: Bearer a", "Authorization: Bearer b"), 400)],
    ids=["no-token", "bad-token", "two-tokens"],
)
async def test_the_unread_body_of_a_refused_request_is_never_read_as_a_request(
    hostile: tuple[Proxy, RawUpstream], target: str, extra: tuple[str, ...], status: int,
    framing: str,
) -> None:
    """Refused before its body is read, the request's body (here a whole request to a
    public path) is skipped by its framing, never parsed as the next request (CL.0)."""
    proxy, upstream = hostile
    hidden = request("/public/smuggled", "Host: a")
    if framing == "length":
        head = request(target, "Host: a", f"Content-Length: {len(hidden)}", *extra,
                       method="POST", body=hidden)
    else:
        head = request(target, "Host: a", "Transfer-Encoding: chunked", *extra,
                       method="POST", body=b"%x\r\n%b\r\n0\r\n\r\n" % (len(hidden), hidden))
    client = await exchange(proxy.client.port, head + request("/public/next", "Host: a"),
                            answers=2)
    statuses = [a.status for a in client.answers]
    assert statuses in ([status], [status, 200]), statuses
    assert upstream.paths() == (["/public/next"] if len(statuses) == 2 else [])


async def test_trailers_cannot_carry_credentials_or_claim_headers(
    hostile: tuple[Proxy, RawUpstream]
) -> None:
    proxy, upstream = hostile
    trailer = b"4\r\nabcd\r\n0\r\nX-Auth-Subject: admin\r\nAuthorization: Bearer x\r\n\r\n"
    client = await exchange(proxy.client.port, request(
        "/public/upload", "Host: a", "Transfer-Encoding: chunked",
        "Trailer: X-Auth-Subject, Authorization", method="POST", body=trailer))
    assert [a.status for a in client.answers] == [200]
    seen = upstream.requests[-1]
    assert seen.body == b"abcd"
    raw = bytes(upstream.connections[-1].raw).lower()
    assert b"x-auth-subject" not in raw and b"authorization" not in raw
    client = await exchange(proxy.client.port, request(
        "/orders/1", "Host: a", "Transfer-Encoding: chunked", method="POST", body=trailer))
    assert [a.status for a in client.answers] == [401]  # a trailer is not a token source


# -- request targets and paths ------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["http://evil/admin", "http://evil/public/x", "https://a/public/../admin", "*",
     "evil:443", "//evil/admin", "admin", "/public/x#/../../admin"],
)
async def test_odd_request_targets_never_reach_a_protected_path(
    hostile: tuple[Proxy, RawUpstream], target: str
) -> None:
    proxy, upstream = hostile
    method = {"*": "OPTIONS", "evil:443": "CONNECT"}.get(target, "GET")
    client = await exchange(proxy.client.port, request(target, "Host: a", method=method))
    statuses = [a.status for a in client.answers]
    assert statuses and statuses[0] in (200, 400, 401, 404), statuses
    for path in upstream.paths():
        assert reference_path(path).startswith("/public/"), path
    if statuses[0] == 200:
        assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/public/%2E%2E/admin", "/public/.%2e/admin", "/public/%2e./admin",
        "/public/..%2fadmin", "/public/..%2Fadmin", "/public/..%5cadmin",
        "/public/%252e%252e/admin", "/public/%252e%252e%252fadmin", "/public%252f..%252fadmin",
        "/public/%c0%ae%c0%ae/admin", "/public/%u002e%u002e/admin", "/public/..;/admin",
        "/public;x=1/../admin", "/public/%2e%2e;x=1/admin", "/./public/../admin",
        "/public/../../admin", "/public/..%00/admin", "/%70ublic/../admin",
        "/public/.../admin", "/public//../admin", "/public/%2e%2e%2f%2e%2e%2fadmin",
    ],
)
async def test_path_tricks_never_reach_a_protected_path_without_a_token(
    hostile: tuple[Proxy, RawUpstream], path: str
) -> None:
    proxy, upstream = hostile
    client = await exchange(proxy.client.port, request(path, "Host: a"))
    statuses = [a.status for a in client.answers]
    assert statuses and statuses[0] in (200, 400, 401, 404), statuses
    for seen in upstream.paths():
        assert reference_path(seen).startswith("/public/"), (path, seen)


async def test_path_tricks_with_a_token_reach_the_path_that_was_authorized(
    hostile: tuple[Proxy, RawUpstream], keys: KeyRing
) -> None:
    proxy, upstream = hostile
    auth = f"Authorization: Bearer {good_token(keys)}"
    for path in ("/public/..%2forders/1", "/public/%2E%2E/orders/1", "/public/%2e%2e%2forders/1"):
        client = await exchange(proxy.client.port, request(path, "Host: a", auth))
        assert [a.status for a in client.answers] == [200], path
        assert reference_path(upstream.requests[-1].target) == "/orders/1"


# -- header-name games and forwarding headers ---------------------------------------------


async def test_underscore_and_case_variants_of_trusted_headers_are_stripped(
    hostile: tuple[Proxy, RawUpstream], keys: KeyRing
) -> None:
    proxy, upstream = hostile
    spoofs = ["X_Auth_Subject: admin", "x_auth_subject: admin", "X-Auth_Subject: admin",
              "X_AUTH-SUBJECT: admin", "x-auth-groups: admin", "X_Auth_Groups: admin",
              "X_Forwarded_Host: evil.example", "X_Forwarded_Proto: https",
              "x_forwarded_for: 203.0.113.66", "X_Request_Id: spoofed", "FORWARDED: for=evil"]
    client = await exchange(proxy.client.port, request("/public/x", "Host: a", *spoofs))
    assert [a.status for a in client.answers] == [200]
    seen = upstream.requests[-1]
    names = {name.lower().replace("_", "-") for name, _ in seen.headers}
    assert "x-auth-subject" not in names and "x-auth-groups" not in names
    assert seen.header_all("X-Forwarded-Host") == ["a"]
    assert seen.header_all("X-Forwarded-Proto") == ["http"]
    assert seen.header_all("X-Forwarded-For") == ["127.0.0.1"]
    assert [v for n, v in seen.headers if n.lower().replace("_", "-") == "x-request-id"] == [
        client.answers[0].header("X-Request-Id")]
    assert all("evil" not in value for _, value in seen.headers)

    auth = f"Authorization: Bearer {good_token(keys, sub='user-7')}"
    client = await exchange(proxy.client.port, request("/orders/1", "Host: a", auth, *spoofs))
    assert [a.status for a in client.answers] == [200]
    seen = upstream.requests[-1]
    subjects = [v for n, v in seen.headers if n.lower().replace("_", "-") == "x-auth-subject"]
    assert subjects == ["user-7"]


async def test_forwarded_for_is_appended_across_lines_and_untrusted_peers_set_nothing(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream
) -> None:
    config = base_config(jwks[1], raw_upstream.url, server={"trusted_proxies": ["10.0.0.0/8"]})
    proxy = await make_proxy(config)
    client = await exchange(proxy.client.port, request(
        "/public/x", "Host: a", "X-Forwarded-For: 203.0.113.1", "X-Forwarded-For: 10.1.1.1",
        "X-Forwarded-Proto: https", "X-Forwarded-Host: evil.example",
        "Forwarded: for=203.0.113.1;host=evil.example;proto=https"))
    assert [a.status for a in client.answers] == [200]
    seen = raw_upstream.requests[-1]
    # the peer (127.0.0.1) is not in trusted_proxies: the chain is kept but its claims
    # about scheme and host are not believed
    assert seen.header_all("X-Forwarded-For") == ["203.0.113.1, 10.1.1.1, 127.0.0.1"]
    assert seen.header_all("X-Forwarded-Proto") == ["http"]
    assert seen.header_all("X-Forwarded-Host") == ["a"]
    assert seen.header_all("Forwarded") == ['for=127.0.0.1;proto=http;host="a"']


# -- upgrades -----------------------------------------------------------------------------

WS_HEAD = ("Upgrade: websocket", "Connection: Upgrade",
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13")


async def test_websocket_upgrade_without_a_token_reaches_nothing(
    hostile: tuple[Proxy, RawUpstream]
) -> None:
    """401, no 101, and the bytes after the head are parsed as HTTP, never tunnelled."""
    proxy, upstream = hostile
    tunnel = request("/admin/secret", "Host: a")
    client = await exchange(proxy.client.port,
                            request("/socket", "Host: a", *WS_HEAD) + tunnel, answers=2)
    assert [a.status for a in client.answers] == [401, 401]
    assert upstream.requests == [] and upstream.bytes_received == 0


async def test_h2c_upgrade_through_a_public_route_is_a_plain_request(
    hostile: tuple[Proxy, RawUpstream]
) -> None:
    proxy, upstream = hostile
    client = await exchange(proxy.client.port, request(
        "/public/x", "Host: a", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        "Connection: Upgrade, HTTP2-Settings"))
    assert [a.status for a in client.answers] == [200]
    seen = upstream.requests[-1]
    for name in ("Upgrade", "HTTP2-Settings", "Connection"):
        assert seen.header_all(name) == [], name
    assert upstream.errors == []


# -- Host, versions, pipelining, Expect ---------------------------------------------------


async def test_http10_without_host_and_host_ambiguity(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream
) -> None:
    config = base_config(jwks[1], raw_upstream.url)
    config["routes"].insert(0, {"name": "hosted", "match": {"host": "api.example.com",
                                                            "path_prefix": "/hosted"},
                                "upstream": raw_upstream.url, "auth": "none"})
    proxy = await make_proxy(config)
    port = proxy.client.port
    client = await RawClient.open(port)
    await client.send(request("/public/x", version="HTTP/1.0"))
    assert [a.status for a in await client.read_answers(1)] == [200]
    assert await client.wait_closed()  # HTTP/1.0 without keep-alive: one exchange only
    seen = raw_upstream.requests[-1]
    assert seen.header_all("Host") == [raw_upstream.url.removeprefix("http://")]
    # a host-bound route does not match a request that names no host: the catch-all
    # route (token required) takes it
    client = await exchange(port, request("/hosted/x", version="HTTP/1.0"))
    assert [a.status for a in client.answers] == [401]
    # RFC 9112 §3.2: HTTP/1.1 without Host, or with two, is 400
    for head in (request("/public/x"), request("/hosted/x", "Host: api.example.com",
                                                 "Host: other.example")):
        client = await exchange(port, head)
        assert [a.status for a in client.answers] == [400]
    assert len(raw_upstream.requests) == 1
    # no Host, so nothing to forward: an empty X-Forwarded-Host is read as an empty host
    # by frameworks that trust it (Django USE_X_FORWARDED_HOST, Express trust proxy)
    assert "" not in seen.header_all("X-Forwarded-Host")


async def test_a_request_without_host_is_not_given_this_machines_name(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream
) -> None:
    """HTTP/1.0 allows no Host: the request names no host (""), not this machine's FQDN
    (aiohttp's `request.host` looks it up, a blocking DNS query per request), so a route
    bound to that name (here: token required) does not take it; the public one does."""
    config = base_config(jwks[1], raw_upstream.url)
    config["routes"].insert(0, {"name": "own-name", "match": {"host": socket.getfqdn(),
                                                              "path_prefix": "/public"},
                                "upstream": raw_upstream.url, "auth": {"issuers": ["main"]}})
    proxy = await make_proxy(config)
    client = await exchange(proxy.client.port, request("/public/x", version="HTTP/1.0"))
    assert [a.status for a in client.answers] == [200]
    client = await exchange(proxy.client.port,
                            request("/public/x", f"Host: {socket.getfqdn()}"))
    assert [a.status for a in client.answers] == [401]  # named, the bound route takes it


async def test_pipelined_requests_are_answered_in_order_each_on_its_own_merits(
    hostile: tuple[Proxy, RawUpstream], keys: KeyRing
) -> None:
    proxy, upstream = hostile
    auth = f"Authorization: Bearer {good_token(keys)}"
    pipeline = b"".join([
        request("/public/1", "Host: a", "X-Request-Id: r1"),
        request("/orders/1", "Host: a", "X-Request-Id: r2"),
        request("/public/2", "Host: a", "X-Request-Id: r3", "Content-Length: 5",
                method="POST", body=b"hello"),
        request("/orders/2", "Host: a", "X-Request-Id: r4", auth),
        request("/admin", "Host: a", "X-Request-Id: r5", "Authorization: Bearer nope"),
        request("/public/3", "Host: a", "X-Request-Id: r6"),
    ])
    client = await exchange(proxy.client.port, pipeline, answers=6)
    assert [(a.status, a.header("X-Request-Id")) for a in client.answers] == [
        (200, "r1"), (401, "r2"), (200, "r3"), (200, "r4"), (401, "r5"), (200, "r6")]
    assert [(s.method, s.target, s.body) for s in upstream.requests] == [
        ("GET", "/public/1", b""), ("POST", "/public/2", b"hello"),
        ("GET", "/orders/2", b""), ("GET", "/public/3", b"")]


async def test_expect_100_continue_gets_an_interim_response_then_relays_the_body(
    hostile: tuple[Proxy, RawUpstream]
) -> None:
    """RFC 9110 §10.1.1: a server that will read the body sends 100 (Continue); a client
    that waits for it (as it may) must not be left hanging."""
    proxy, upstream = hostile
    client = await RawClient.open(proxy.client.port)
    await client.send(request("/public/upload", "Host: a", "Content-Length: 5",
                              "Expect: 100-continue", method="POST"))
    interim = await client.read_answers(1, timeout=2.0)
    await client.send(b"hello")  # sent anyway, as curl does after waiting
    answers = await client.read_answers(2 if interim and interim[0].status == 100 else 1)
    client.close()
    assert [a.status for a in answers] == [100, 200], "no 100 Continue within 2 s"
    assert [(s.target, s.body) for s in upstream.requests] == [("/public/upload", b"hello")]
    assert upstream.requests[0].header_all("Expect") == []


async def test_expect_100_continue_is_ignored_for_http10(
    hostile: tuple[Proxy, RawUpstream]
) -> None:
    """RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request MUST be
    ignored (an HTTP/1.0 client cannot parse an interim response)."""
    proxy, upstream = hostile
    client = await RawClient.open(proxy.client.port)
    await client.send(request("/public/upload", "Host: a", "Content-Length: 5",
                              "Expect: 100-continue", method="POST", version="HTTP/1.0"))
    await client.send(b"hello")
    answers = await client.read_answers(1)
    client.close()
    assert [a.status for a in answers] == [200]
    assert [(s.target, s.body) for s in upstream.requests] == [("/public/upload", b"hello")]


async def test_expect_100_continue_without_a_token_is_refused_before_the_body(
    hostile: tuple[Proxy, RawUpstream]
) -> None:
    proxy, upstream = hostile
    client = await RawClient.open(proxy.client.port)
    await client.send(request("/orders/1", "Host: a", "Content-Length: 5",
                              "Expect: 100-continue", method="POST"))
    answers = await client.read_answers(1, timeout=2.0)
    client.close()
    assert [a.status for a in answers] == [401]
    assert upstream.requests == [] and upstream.bytes_received == 0


# -- the real CLI: what a hostile request leaves in the log -------------------------------


def test_malformed_requests_never_put_a_token_in_the_log(keys: KeyRing) -> None:
    """A request rejected by the HTTP parser must not log its header lines: the one that
    failed may be `Authorization: Bearer <token>` (STYLE.md rule 8: never a token)."""
    import socket

    token = good_token(keys)
    config = {"log": {"format": "json"},
              "routes": [{"name": "public", "match": {"path_prefix": "/"},
                          "upstream": "http://127.0.0.1:9", "auth": "none"}]}
    bad_heads = [
        f"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\x01\r\n\r\n",
        f"GET / HTTP/1.1\r\nHost: a\r\nAuthorization : Bearer {token}\r\n\r\n",
        f"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: a\r\n Authorization: Bearer {token}\r\n\r\n",
    ]
    with proxy_process(config) as proc:
        for head in bad_heads:
            with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as sock:
                sock.sendall(head.encode("latin-1"))
                reply = sock.recv(65536)
            assert reply.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), reply[:80]
        status, _ = proc.admin_get("/healthz")
        assert status == 200
    signature = token.rsplit(".", 1)[1]
    assert signature not in proc.logs(), "a token from a malformed request is in the log"
