"""Streams the request upstream and the response back over one pooled ClientSession.

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
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .config import Route
from .errors import UpstreamTimeout, UpstreamUnavailable
from .headers import REQUEST_ID, response_headers

log = logging.getLogger("jwtproxy.forwarder")

CHUNK: Final = 64 * 1024
POOL_LIMIT: Final = 1024


@dataclass(slots=True)
class UpstreamTiming:
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class _Upstream:
    route: Route  # held so that its id() is not reused while cached
    timeout: aiohttp.ClientTimeout
    ssl: ssl.SSLContext | bool


class Forwarder:
    """One pooled session for the process lifetime; routes of any config version."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self._upstreams: dict[int, _Upstream] = {}  # by id(route): hashing a Route is slow

    def _upstream(self, route: Route) -> _Upstream:
        found = self._upstreams.get(id(route))
        if found is None:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=route.connect_timeout, sock_read=route.read_timeout)
            context = ssl.create_default_context(cafile=route.ca_file) if route.ca_file else True
            found = self._upstreams[id(route)] = _Upstream(route, timeout, context)
        return found

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=POOL_LIMIT, limit_per_host=POOL_LIMIT,
                                         ttl_dns_cache=60, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def forward(
        self,
        request: web.BaseRequest,
        route: Route,
        path_qs: str,
        headers: CIMultiDict[str],
        timing: UpstreamTiming,
    ) -> web.StreamResponse:
        """`path_qs` is the raw request target, forwarded as is (no re-encoding)."""
        assert self.session is not None
        url = URL(route.upstream + path_qs, encoded=True)
        body = request.content if request.body_exists else None
        settings = self._upstream(route)
        started = time.perf_counter()
        try:
            upstream = await self.session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False,
                timeout=settings.timeout, ssl=settings.ssl,
                compress=False, chunked=None,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout("upstream timed out") from None
        except (aiohttp.ClientError, OSError) as err:
            log.warning("upstream_error", extra={"route": route.name,
                                                 "error": f"{type(err).__name__}: {err}"})
            raise UpstreamUnavailable("upstream unavailable") from None
        timing.seconds = time.perf_counter() - started
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                          headers=response_headers(upstream.headers))
            response.headers.setdefault(REQUEST_ID, headers[REQUEST_ID])
            if upstream.content_length is not None and "Content-Length" in upstream.headers:
                response.content_length = upstream.content_length
            elif request.method == "HEAD" or upstream.status in (204, 304):
                pass
            else:
                response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                log.warning("upstream_body_error", extra={
                    "route": route.name, "error": f"{type(err).__name__}: {err}"})
                _abort(request)
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
        settings = self._upstream(route)
        url = URL(route.upstream.replace("http", "ws", 1) + path_qs, encoded=True)
        try:
            upstream = await self.session.ws_connect(
                url, headers=upstream_headers, protocols=protocols, ssl=settings.ssl,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10),
                autoping=False, max_msg_size=0)
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


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


