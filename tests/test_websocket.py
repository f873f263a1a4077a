"""WebSocket upgrades are proxied only after auth, frames relayed both ways."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import AUDIENCE, ISSUER, ProxyFactory, base_config
from tests.servers import JwksEndpoint
from tests.tokens import KeyRing, mint


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
