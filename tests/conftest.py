"""Shared fixtures: session keys, a real JWKS server, a real echo upstream, and the
proxy app itself on a real port (in-process) with its admin app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from jwtproxy.app import ProxyApp
from jwtproxy.config import Config
from jwtproxy.loader import load_text
from jwtproxy.metrics import Metrics
from jwtproxy.server import admin_app, proxy_server
from tests.scripted import scripted  # noqa: F401 (a fixture for every test module)
from tests.servers import EchoUpstream, JwksEndpoint
from tests.tokens import KeyRing, make_keyring

ISSUER = "https://issuer.test/"
AUDIENCE = "api://orders"


@pytest.fixture(scope="session")
def keys() -> KeyRing:
    return make_keyring()


@pytest.fixture
async def jwks(keys: KeyRing, aiohttp_server: Any) -> AsyncIterator[tuple[JwksEndpoint, str]]:
    endpoint = JwksEndpoint(keys.jwks())
    server = await aiohttp_server(endpoint.app())
    yield endpoint, str(server.make_url("/jwks.json"))


@pytest.fixture
async def upstream(aiohttp_raw_server: Any) -> tuple[EchoUpstream, str]:
    echo = EchoUpstream()
    server = await aiohttp_raw_server(echo.handle, auto_decompress=False, max_field_size=65536)
    return echo, f"http://127.0.0.1:{server.port}"


@dataclass
class Proxy:
    app: ProxyApp
    client: TestClient[web.Request, web.Application]
    admin: TestClient[web.Request, web.Application]

    async def metric(self, name: str, **labels: str) -> float:
        text = await (await self.admin.get("/metrics")).text()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


def base_config(jwks_url: str, upstream_url: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "issuers": {
            "main": {
                "issuer": ISSUER, "jwks_uri": jwks_url, "audiences": [AUDIENCE],
                "algorithms": ["RS256", "ES256", "EdDSA"],
                "jwks": {"refresh_min_interval": "1s"},
            },
        },
        "routes": [
            {"name": "public", "match": {"path_prefix": "/public"}, "upstream": upstream_url,
             "auth": "none"},
            {"name": "orders", "match": {"path_prefix": "/orders"}, "upstream": upstream_url,
             "auth": {"scopes": ["orders:read"]},
             "forward": {"claims": {"sub": "X-Auth-Subject", "groups": "X-Auth-Groups"}}},
            {"name": "api", "match": {"path_prefix": "/"}, "upstream": upstream_url,
             "forward": {"claims": {"sub": "X-Auth-Subject"}}},
        ],
    }
    config.update(overrides)
    return config


class ProxyTestServer(BaseTestServer):  # type: ignore[type-arg]
    """The proxy's own server (its request handler, parser-error answers and connection
    binding) on a test port."""

    def __init__(self, app: ProxyApp, config: Config) -> None:
        super().__init__()
        self.app, self.config = app, config

    async def _make_runner(self, **kwargs: Any) -> web.ServerRunner:
        return web.ServerRunner(proxy_server(self.app, self.config), **kwargs)


ProxyFactory = Callable[[dict[str, Any]], Awaitable[Proxy]]


@pytest.fixture
async def make_proxy(aiohttp_client: Any) -> AsyncIterator[ProxyFactory]:
    started: list[ProxyApp] = []

    async def factory(config_data: dict[str, Any]) -> Proxy:
        config = load_text(yaml.safe_dump(config_data))
        app = ProxyApp(config, Metrics(CollectorRegistry()))
        await app.start()
        started.append(app)
        server = ProxyTestServer(app, config)
        await server.start_server()
        client = await aiohttp_client(server)
        admin = await aiohttp_client(admin_app(app))
        return Proxy(app, client, admin)

    yield factory
    for app in started:
        await app.close()


@pytest.fixture
async def proxy(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], upstream: tuple[EchoUpstream, str]
) -> Proxy:
    return await make_proxy(base_config(jwks[1], upstream[1]))


@pytest.fixture
async def ws_upstream(aiohttp_server: Any) -> tuple[str, list[dict[str, str]]]:
    """A WebSocket upstream (subprotocol `chat`): text echoed as `echo:<text>`, binary
    reversed; the headers of each upgrade request it saw."""
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.WebSocketResponse:
        seen.append(dict(request.headers))
        ws = web.WebSocketResponse(protocols=["chat"])
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo:{msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}", seen
