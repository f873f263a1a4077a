"""Streams the request upstream and the response back: HTTP over the lean keep-alive
pool (pool.py, connection.py), WebSocket upgrades over one aiohttp ClientSession.

Upstream failures before the response starts become 502 (refused, reset) or 504 (timed
out); after it has started, the client connection is cut so a truncated body is never
mistaken for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import HttpVersion11, web
from multidict import CIMultiDict
from yarl import URL

from .config import Route
from .connection import Connection, Parked, PoolKey, UpstreamError, UpstreamTimedOut
from .errors import ClientBodyTimeout, ClientGone, UpstreamTimeout, UpstreamUnavailable
from .headers import REQUEST_ID, response_bytes, response_headers
from .lean import LeanRequest, aiohttp_request
from .pool import UpstreamPool
from .revocation import Lifetime
from .ws_relay import relay_frames

log = logging.getLogger("jwtproxy.forwarder")

WEBSOCKET_POOL_LIMIT: Final = 1024


@dataclass(slots=True)
class UpstreamTiming:
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class _Target:
    pool_key: PoolKey  # (host, port, TLS context)
    authority: str

    @property
    def tls(self) -> ssl.SSLContext | None:
        return self.pool_key[2]


HeadBuilder = Callable[[str, bool], bytes]  # (upstream authority, chunked) -> request head
TargetKey = tuple[str, str | None]  # (upstream URL, CA file): equal settings, one target
TlsKey = tuple[str | None, int, int]  # (CA file, its mtime and size): re-read when changed


class Forwarder:
    """Upstream connections for the process lifetime, shared by every config version:
    the lean pool for HTTP, one aiohttp session for WebSocket upgrades. Routes with equal
    upstream settings share one target, one TLS context and so one set of connections."""

    def __init__(self, on_close: Callable[[str], None] | None = None) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.pool = UpstreamPool(on_close)
        self._targets: dict[TargetKey, _Target] = {}
        self._tls: dict[TlsKey, ssl.SSLContext] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=WEBSOCKET_POOL_LIMIT, limit_per_host=WEBSOCKET_POOL_LIMIT, ttl_dns_cache=60,
            enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        self.pool.close()
        if self.session is not None:
            await self.session.close()

    def _target(self, route: Route) -> _Target:
        found = self._targets.get((route.upstream, route.ca_file))
        if found is None:  # a request of an older config, begun before a reload
            found = self._build_target(route, self._tls)
        return found

    def _build_target(self, route: Route, contexts: dict[TlsKey, ssl.SSLContext]) -> _Target:
        url = URL(route.upstream)
        tls: ssl.SSLContext | None = None
        if url.scheme == "https":
            key = _tls_key(route.ca_file)
            tls = contexts.get(key) or self._tls.get(key)
            if tls is None:
                tls = ssl.create_default_context(cafile=route.ca_file)
            contexts[key] = tls
        return _Target((url.raw_host or "", url.port or 80, tls), url.raw_authority)

    def retain(self, routes: Iterable[Route]) -> None:
        """The upstreams a new config uses: targets and TLS contexts of equal settings are
        kept (with their pooled connections); those of upstreams no longer used are
        dropped and their connections closed (idle ones now, busy ones when done)."""
        targets: dict[TargetKey, _Target] = {}
        contexts: dict[TlsKey, ssl.SSLContext] = {}
        for route in routes:
            key = (route.upstream, route.ca_file)
            if key not in targets:
                targets[key] = self._build_target(route, contexts)
        self._targets, self._tls = targets, contexts
        self.pool.retain(frozenset(target.pool_key for target in targets.values()))

    async def forward(
        self,
        request: web.BaseRequest | LeanRequest,
        route: Route,
        head_for: HeadBuilder,
        request_id: str,
        timing: UpstreamTiming,
    ) -> web.StreamResponse | Sent:
        """`head_for(authority, chunked)` is the request head to send (the door's
        HeaderPlan.request_head), for the upstream's authority and the body's framing."""
        target = self._target(route)
        has_body = request.body_exists
        chunked = has_body and "Content-Length" not in request.headers
        head = head_for(target.authority, chunked)
        started = time.perf_counter()
        parked = _parked(request)
        conn = await self._send(request, route, target, head, has_body, chunked, parked)
        timing.seconds = time.perf_counter() - started
        try:
            return await self._relay(request, route, conn, request_id)
        finally:
            self.pool.release(conn, parked)

    async def _send(
        self, request: web.BaseRequest | LeanRequest, route: Route, target: _Target, head: bytes,
        has_body: bool, chunked: bool, parked: Parked | None,
    ) -> Connection:
        """Send the request and wait for the response head. A reused connection is
        retried once on a fresh one only when the request provably never reached the
        upstream: nothing was written, or (for a request without a body) the upstream
        closed the connection before a single response byte (its keep-alive timeout)."""
        for attempt in (1, 2):
            conn = self.pool.take_parked(parked, target.pool_key)  # no await when reused
            reused = conn is not None
            try:
                if conn is None:
                    conn = await self.pool.open(target.pool_key, route.connect_timeout)
            except UpstreamTimedOut:
                raise UpstreamTimeout("upstream connect timed out") from None
            except UpstreamError as err:
                log.warning("upstream_error", extra={"route": route.name, "error": str(err)})
                raise UpstreamUnavailable("upstream unavailable") from None
            conn.begin(head_only=request.method == "HEAD")
            try:
                if conn.send(head):  # no coroutine for the head
                    await conn.drained()
                if has_body:
                    await _send_body(conn, aiohttp_request(request), chunked, route.read_timeout)
                conn.sent_whole_request = True
                await conn.wait_head(route.read_timeout)
                return conn
            except UpstreamTimedOut:
                self.pool.discard(conn)
                raise UpstreamTimeout("upstream timed out") from None
            except UpstreamError as err:
                retry = reused and attempt == 1 and (
                    not conn.wrote or (conn.unanswered and not has_body))
                self.pool.discard(conn)
                if retry:
                    continue
                log.warning("upstream_error", extra={"route": route.name, "error": str(err)})
                raise UpstreamUnavailable("upstream unavailable") from None
            except BaseException:
                # client body timeout, client gone, cancellation: the upstream must never
                # be left holding half a request
                self.pool.discard(conn)
                raise
        raise AssertionError("unreachable")

    async def _relay(
        self, request: web.BaseRequest | LeanRequest, route: Route, conn: Connection,
        request_id: str,
    ) -> web.StreamResponse | Sent:
        bodyless = request.method == "HEAD" or conn.status in (204, 304)
        if conn.complete and not bodyless and request.version == HttpVersion11:
            # the common case: the whole response is here; written in one piece
            keep_alive = request.keep_alive
            await request.writer.write(response_bytes(
                conn.status, conn.reason, conn.headers, conn.take_body(), request_id,
                keep_alive))
            return Sent(conn.status, keep_alive)
        headers = response_headers(conn.headers)
        if not any(name.lower() == "x-request-id" for name, _ in headers):
            headers.append((REQUEST_ID, request_id))
        reason = conn.reason.decode("latin-1") or None
        if conn.complete and not bodyless:
            return RelayedResponse(status=conn.status, reason=reason, headers=headers,
                                   body=conn.take_body())
        response = RelayedStream(status=conn.status, reason=reason, headers=headers)
        length = _content_length(conn.headers)
        if length is not None and conn.status not in (204, 304):
            response.content_length = length
        elif not bodyless:
            response.enable_chunked_encoding()
        await response.prepare(aiohttp_request(request))
        if bodyless:
            await response.write_eof()
            return response
        try:
            async for chunk in conn.body_chunks(route.read_timeout):
                await response.write(chunk)
        except UpstreamError as err:
            log.warning("upstream_body_error", extra={"route": route.name, "error": str(err)})
            self.pool.discard(conn)
            _abort(request)  # a truncated body must not look like a whole one
            return response
        except ConnectionError:
            self.pool.discard(conn)  # the client went away mid-body: so does the upstream
            return response
        await response.write_eof()
        return response

    async def websocket(
        self, request: web.BaseRequest, route: Route, path_qs: str, headers: CIMultiDict[str],
        lifetime: Lifetime | None = None, token_protocols: tuple[str, ...] = (),
    ) -> web.StreamResponse:
        """Relay a WebSocket after auth: connect upstream first (502/504 if it fails), then
        accept the client and pump frames both ways until either side closes, or the
        token's `lifetime` ends (close code 1008). Subprotocols starting with one of
        `token_protocols` carry the token: never sent upstream, never echoed."""
        assert self.session is not None
        protocols = [p for p in map(str.strip, ",".join(
            request.headers.getall("Sec-WebSocket-Protocol", [])).split(","))
            if p and not p.startswith(token_protocols)]
        upstream_headers = CIMultiDict(
            (k, v) for k, v in headers.items() if not k.lower().startswith("sec-websocket-"))
        tls = self._target(route).tls
        url = URL(route.upstream.replace("http", "ws", 1) + path_qs, encoded=True)
        try:
            upstream = await asyncio.wait_for(self.session.ws_connect(
                url, headers=upstream_headers, protocols=protocols,
                ssl=tls if tls is not None else True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10),
                autoping=False, max_msg_size=0), route.connect_timeout + route.read_timeout)
        except TimeoutError:
            raise UpstreamTimeout("upstream timed out") from None
        except (aiohttp.ClientError, OSError) as err:
            log.warning("upstream_error", extra={"route": route.name,
                                                 "error": f"{type(err).__name__}: {err}"})
            raise UpstreamUnavailable("upstream refused the WebSocket") from None
        client = web.WebSocketResponse(
            protocols=[upstream.protocol] if upstream.protocol else (), autoping=False,
            max_msg_size=0)
        await client.prepare(request)
        async with upstream:
            await relay_frames(client, upstream, lifetime, route.name)
        return client


class Sent:
    """A response already written whole (head and body in one write): what aiohttp's
    request loop asks of a returned response (`prepare`, `write_eof`, `keep_alive`; see
    RequestHandler.finish_response in aiohttp 3.14) has nothing left to do."""

    __slots__ = ("keep_alive", "status")
    prepared: Final = True

    def __init__(self, status: int, keep_alive: bool) -> None:
        self.status, self.keep_alive = status, keep_alive

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class _Verbatim(web.StreamResponse):
    """Sends the upstream's headers as they were: aiohttp adds a default Content-Type
    and its own Server header, which a proxy must not invent (RFC 9110 §8.3: no
    Content-Type means the recipient may not assume one). Date is kept: RFC 9110 §6.6.1
    has a forwarding recipient add it when missing."""

    def __init__(self, *, headers: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(headers=headers, **kwargs)
        self._upstream_names = {name.lower() for name, _ in headers}

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        for name in ("content-type", "server"):
            if name not in self._upstream_names:
                self.headers.popall(name, None)


class RelayedStream(_Verbatim):
    """A streamed upstream response."""


class RelayedResponse(_Verbatim, web.Response):
    """An upstream response whose body had all arrived with its head."""


async def _send_body(
    conn: Connection, request: web.BaseRequest, chunked: bool, idle_timeout: float
) -> None:
    """Relay the client's body; a client idle for `idle_timeout` is given up on (408)."""
    content = request.content
    while True:
        try:
            chunk = await asyncio.wait_for(content.readany(), idle_timeout)
        except TimeoutError:
            raise ClientBodyTimeout("the request body stopped arriving") from None
        except (aiohttp.ClientPayloadError, web.HTTPException) as err:
            raise UpstreamError(f"client body: {err}") from None
        except ConnectionError:
            raise ClientGone("the client closed the connection mid-body") from None
        if not chunk:
            break
        if chunked:
            await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            await conn.write(chunk)
    if chunked:
        await conn.write(b"0\r\n\r\n")


def _parked(request: web.BaseRequest | LeanRequest) -> Parked | None:
    """The client connection's parked upstream connections (see UpstreamPool), held by
    the proxy's own request handler; None for any other server."""
    parked: Parked | None = getattr(request.protocol, "parked", None)
    return parked


def _tls_key(ca_file: str | None) -> TlsKey:
    if ca_file is None:
        return (None, 0, 0)
    try:
        stat = os.stat(ca_file)
    except OSError:
        return (ca_file, 0, 0)  # the context build reports it
    return (ca_file, stat.st_mtime_ns, stat.st_size)


def _content_length(raw: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in raw:
        if name.lower() == b"content-length":
            return int(value)
    return None


def _abort(request: web.BaseRequest | LeanRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


