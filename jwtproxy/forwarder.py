"""Streams the request upstream and the response back over one pooled ClientSession.

Upstream failures before the response starts become 502 (refused, reset) or 504 (timed
out); after it has started, the client connection is cut so a truncated body is never
mistaken for a whole one.
"""

from __future__ import annotations

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


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


