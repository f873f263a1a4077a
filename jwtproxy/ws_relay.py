"""Frames both ways between the client's WebSocket and the upstream's, until either side
closes or the token that opened it ends (expiry or revocation: close code 1008)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web

from .revocation import Lifetime

log = logging.getLogger("jwtproxy.ws_relay")


async def relay_frames(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse,
    lifetime: Lifetime | None, route: str,
) -> None:
    pumps = asyncio.gather(_pump(client, upstream), _pump(upstream, client))
    if lifetime is None:
        await pumps
    else:
        await _until_token_ends(pumps, lifetime, client, upstream, route)


async def _until_token_ends(
    pumps: asyncio.Future[Any], lifetime: Lifetime, client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse, route: str,
) -> None:
    """One timer for the expiry and one watch on the revocation list: nothing per frame."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str] = loop.create_future()

    def end(why: str) -> None:
        if not ended.done():
            ended.set_result(why)

    timer = loop.call_later(max(0.0, lifetime.expires_at - lifetime.revocations.now()),
                            end, "token expired")
    unwatch = lifetime.revocations.watch(lifetime.marks, lambda: end("token revoked"))
    try:
        await asyncio.wait((pumps, ended), return_when=asyncio.FIRST_COMPLETED)
        if not pumps.done():
            log.info("websocket_closed", extra={"route": route, "reason": ended.result()})
            await client.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION,
                               message=ended.result().encode())
            await upstream.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION)
        await pumps
    finally:
        timer.cancel()
        unwatch()
        if not pumps.done():
            pumps.cancel()


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
