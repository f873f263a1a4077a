"""WebSocket upgrades are proxied only after auth, frames relayed both ways."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import AUDIENCE, ISSUER, ProxyFactory, base_config
from tests.servers import JwksEndpoint
from tests.tokens import KeyRing, mint


@pytest.fixture
async def ws_upstream(aiohttp_server: Any) -> Any:
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


async def test_websocket_requires_a_token_then_relays(
    make_proxy: ProxyFactory, keys: KeyRing, jwks: tuple[JwksEndpoint, str], ws_upstream: Any
) -> None:
    url, seen = ws_upstream
    proxy = await make_proxy(base_config(jwks[1], url))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await proxy.client.ws_connect("/socket")
    assert refused.value.status == 401
    assert seen == []
    token = mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE})
    async with proxy.client.ws_connect(
        "/socket", headers={"Authorization": f"Bearer {token}", "X-Auth-Subject": "spoof"},
        protocols=["chat"],
    ) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert (await ws.receive()).data == "echo:hi"
        await ws.send_bytes(b"\x00\x01\x02")
        assert (await ws.receive()).data == b"\x02\x01\x00"
    assert seen[0]["X-Auth-Subject"] == "user-1"
