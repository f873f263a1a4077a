"""The aiohttp servers of the doors and the admin app: the proxy's server options and
limits, JSON answers to what aiohttp's parser refuses, the proxy's per-connection handler
(which holds the upstream connections bound to it), and /metrics, /healthz, /readyz.
The one home, with forwarder.py, of aiohttp's server internals (RequestHandler, 3.14)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .answers import error_response
from .app import MAX_HEADER_FIELD, Handler, ProxyApp
from .config import Config
from .connection import Parked
from .errors import HeaderSectionTooLarge, JwtProxyError
from .lean import LeanLoop
from .pool import UpstreamPool


def admin_app(proxy: ProxyApp) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        proxy.publish_key_counts()
        return web.Response(body=proxy.metrics.exposition(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid()})

    async def readyz(_: web.Request) -> web.Response:
        if proxy.draining:
            return web.json_response({"status": "draining"}, status=503)
        missing = proxy.missing_keys()
        if missing:
            return web.json_response({"status": "not_ready", "missing": missing}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def server_ssl_context(config: Config) -> ssl.SSLContext | None:
    tls = config.server.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def server_options(config: Config) -> dict[str, Any]:
    """Options of the proxy's low-level aiohttp server."""
    # auto_decompress off: bodies go upstream byte for byte, whatever their encoding.
    return {"auto_decompress": False, "access_log": None,
            # far above max_token_bytes, so an oversized token gets our 401, not a 400
            "max_field_size": max(MAX_HEADER_FIELD, config.server.max_token_bytes + 1024),
            # aiohttp's keep-alive timer is also the only deadline on reading a request
            # head (trickled bytes do not re-arm it): this bounds a slowloris
            "keepalive_timeout": config.server.keepalive_timeout}


class JsonRefusals(RequestHandler):
    """Answers what aiohttp's HTTP parser refuses with the contract's JSON error body,
    never with aiohttp's text one, which quotes the offending line (it may hold a token)."""

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.field_limit: int = kwargs["max_field_size"]

    def skip_lingering(self) -> None:
        """Close right after this response: aiohttp would first read (up to its 10 s
        `lingering_time`) the rest of a body the client has stopped sending."""
        self._lingering_time = 0.0

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; refuses if bytes went out
        limit = _header_limit_error(exc, self.field_limit)
        if limit is not None:
            return error_response(limit)  # closes the connection (431)
        error = "invalid_request" if status < 500 else "server_error"
        response = web.json_response(
            {"error": error, "error_description": HTTPStatus(status).phrase.lower()},
            status=status)
        response.force_close()
        return response


def _header_limit_error(exc: BaseException | None, field_limit: int) -> JwtProxyError | None:
    """RFC 6585 §5: a header field over `max_field_size`, or more than aiohttp's 128
    fields, is 431 like the whole-head limit (`header_section_limit`), not a 400."""
    if isinstance(exc, LineTooLong) and len(exc.args) > 1 and exc.args[1] == field_limit:
        return HeaderSectionTooLarge("a request header field is too large")
    if type(exc) is BadHttpMessage and exc.message.startswith("Too many headers"):
        return HeaderSectionTooLarge("too many request header fields")
    return None


class _ProxyRequestHandler(LeanLoop, JsonRefusals):
    """One client connection, served by the lean loop (lean.py) while its requests have no
    body. Holds the upstream connections parked for it (pool.py binds each to one client
    connection) and closes them with it."""

    __slots__ = ("parked", "pool")

    def __init__(self, manager: _ProxyServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.parked: Parked = {}
        self.pool: UpstreamPool = manager.pool

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.pool.client_closed(self.parked)


class _ProxyServer(web.Server):
    def __init__(self, proxy: ProxyApp, **kwargs: Any) -> None:
        # the handler may return a `Sent` (duck-typed: see forwarder.Sent)
        super().__init__(cast(Handler, proxy.handle), **kwargs)
        self.pool = proxy.forwarder.pool

    def __call__(self) -> RequestHandler:
        return _ProxyRequestHandler(self, loop=self._loop, **self._kwargs)


def proxy_server(proxy: ProxyApp, config: Config) -> web.Server:
    return _ProxyServer(proxy, **server_options(config))


class _DoorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonRefusals(self, loop=self._loop, **self._kwargs)


def door_server(
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], config: Config,
) -> web.Server:
    """Another door's server: the proxy's limits and its JSON answer to parser refusals."""
    return _DoorServer(handler, **server_options(config))


