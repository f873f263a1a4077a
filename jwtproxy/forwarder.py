"""Streams the request upstream and the response back: HTTP over the lean keep-alive
pool (pool.py), WebSocket upgrades over one aiohttp ClientSession.

Upstream failures before the response starts become 502 (refused, reset) or 504 (timed
out); after it has started, the client connection is cut so a truncated body is never
mistaken for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .config import Route
from .errors import ClientBodyTimeout, ClientGone, UpstreamTimeout, UpstreamUnavailable
from .headers import REQUEST_ID, response_headers
from .pool import Connection, UpstreamError, UpstreamPool, UpstreamTimedOut

log = logging.getLogger("jwtproxy.forwarder")

WEBSOCKET_POOL_LIMIT: Final = 1024


@dataclass(slots=True)
class UpstreamTiming:
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class _Target:
    route: Route  # held so that its id() is not reused while cached
    host: str
    port: int
    tls: ssl.SSLContext | None
    authority: str


class Forwarder:
    """Upstream connections for the process lifetime, for routes of any config version:
    the lean pool for HTTP, one aiohttp session for WebSocket upgrades."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.pool = UpstreamPool()
        self._targets: dict[int, _Target] = {}  # by id(route): hashing a Route is slow

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
        found = self._targets.get(id(route))
        if found is None:
            url = URL(route.upstream)
            tls: ssl.SSLContext | None = None
            if url.scheme == "https":
                tls = ssl.create_default_context(cafile=route.ca_file)
            found = self._targets[id(route)] = _Target(
                route, url.raw_host or "", url.port or 80, tls, url.raw_authority)
        return found

    async def forward(
        self,
        request: web.BaseRequest,
        route: Route,
        path_qs: str,
        headers: CIMultiDict[str],
        timing: UpstreamTiming,
    ) -> web.StreamResponse:
        """`path_qs` is the raw request target, forwarded as is (no re-encoding)."""
        target = self._target(route)
        has_body = request.body_exists
        chunked = has_body and "Content-Length" not in headers
        if "Host" not in headers:
            headers["Host"] = target.authority
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        head = _request_head(request.method, path_qs, headers)
        started = time.perf_counter()
        conn = await self._send(request, route, target, head, has_body, chunked)
        timing.seconds = time.perf_counter() - started
        try:
            return await self._relay(request, route, conn, headers[REQUEST_ID])
        finally:
            self.pool.release(conn)

    async def _send(
        self, request: web.BaseRequest, route: Route, target: _Target, head: bytes,
        has_body: bool, chunked: bool,
    ) -> Connection:
        """Send the request and wait for the response head. A reused connection that
        fails before answering is retried once on a fresh one when there is no body
        (it was most likely closed by the upstream's keep-alive timeout)."""
        for attempt in (1, 2):
            try:
                conn, reused = await self.pool.connect(
                    target.host, target.port, target.tls, route.connect_timeout)
            except UpstreamTimedOut:
                raise UpstreamTimeout("upstream connect timed out") from None
            except UpstreamError as err:
                log.warning("upstream_error", extra={"route": route.name, "error": str(err)})
                raise UpstreamUnavailable("upstream unavailable") from None
            conn.begin(head_only=request.method == "HEAD")
            try:
                await conn.write(head)
                if has_body:
                    await _send_body(conn, request, chunked, route.read_timeout)
                conn.sent_whole_request = True
                await conn.wait_head(route.read_timeout)
                return conn
            except UpstreamTimedOut:
                self.pool.discard(conn)
                raise UpstreamTimeout("upstream timed out") from None
            except UpstreamError as err:
                self.pool.discard(conn)
                if reused and not has_body and attempt == 1:
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
        self, request: web.BaseRequest, route: Route, conn: Connection, request_id: str
    ) -> web.StreamResponse:
        headers = response_headers(conn.headers)
        if not any(name.lower() == "x-request-id" for name, _ in headers):
            headers.append((REQUEST_ID, request_id))
        reason = conn.reason.decode("latin-1") or None
        bodyless = request.method == "HEAD" or conn.status in (204, 304)
        if conn.complete and not bodyless:
            return RelayedResponse(status=conn.status, reason=reason, headers=headers,
                                   body=conn.take_body())
        response = RelayedStream(status=conn.status, reason=reason, headers=headers)
        length = _content_length(conn.headers)
        if length is not None and conn.status not in (204, 304):
            response.content_length = length
        elif not bodyless:
            response.enable_chunked_encoding()
        await response.prepare(request)
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
        await response.write_eof()
        return response

    async def websocket(
        self, request: web.BaseRequest, route: Route, path_qs: str, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        """Relay a WebSocket after auth: connect upstream first (502/504 if it fails), then
        accept the client and pump frames both ways until either side closes."""
        assert self.session is not None
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "")
                     .split(",") if p.strip()]
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
            await asyncio.gather(_pump(client, upstream), _pump(upstream, client))
        return client


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for message in source:
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type == aiohttp.WSMsgType.PING:
            await sink.ping(message.data)
        elif message.type == aiohttp.WSMsgType.PONG:
            await sink.pong(message.data)
    if not sink.closed:
        await sink.close(code=source.close_code or aiohttp.WSCloseCode.OK)


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


def _request_head(method: str, path_qs: str, headers: CIMultiDict[str]) -> bytes:
    fields = "\r\n".join(map(": ".join, headers.items()))
    head = f"{method} {path_qs} HTTP/1.1\r\n{fields}\r\n\r\n" if fields else (
        f"{method} {path_qs} HTTP/1.1\r\n\r\n")
    return head.encode("utf-8", "surrogateescape")


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


def _content_length(raw: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in raw:
        if name.lower() == b"content-length":
            return int(value)
    return None


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


