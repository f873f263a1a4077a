"""The proxy's lean request loop (jwtproxy/lean.py): a request without a body is served in
the connection's own task without aiohttp's BaseRequest; the first request it does not take
hands the connection to aiohttp's loop. These fail when the aiohttp internals it uses
change, or when the lean path silently stops being taken."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from jwtproxy.lean import LeanLoop
from tests.conftest import AUDIENCE, ISSUER, Proxy, ProxyFactory, base_config
from tests.servers import EchoUpstream, JwksEndpoint
from tests.tokens import KeyRing, mint

Upstream = tuple[EchoUpstream, str]
ROOT = Path(__file__).resolve().parent.parent
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def counted_requests(proxy: Proxy) -> list[int]:
    """Counts the BaseRequests aiohttp builds for the proxy's server from now on."""
    server: Any = proxy.client.server.runner.server  # type: ignore[union-attr]
    built = [0]
    factory: Callable[..., web.BaseRequest] = server.request_factory

    def counting(*args: Any) -> web.BaseRequest:
        built[0] += 1
        return factory(*args)

    server.request_factory = counting
    return built


async def open_raw(proxy: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    server = proxy.client.server
    return await asyncio.open_connection(server.host, server.port)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = STATUS.match(head)
    assert status is not None, head
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return int(status[1]), headers, body


def token_for(keys: KeyRing) -> str:
    return mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read"})


def test_aiohttp_is_pinned_to_the_minor_version_lean_py_was_written_against() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "aiohttp>=3.14,<3.15" in pins
    assert aiohttp.__version__.startswith("3.14.")


async def test_the_request_handler_internals_lean_py_uses_are_there() -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    protocol = web.Server(handler)()
    for name in ("_messages", "_waiter", "_parser", "_buffer_paused", "_msg_queue_resume_size",
                 "_keepalive_timeout", "_next_keepalive_close_time", "_keepalive_handle",
                 "_request_in_progress", "_handler_waiter", "_request_factory",
                 "_task_handler", "_force_close", "_close", "_keepalive", "_manager", "_loop",
                 "_paused"):
        assert hasattr(protocol, name), name
    for method in ("_resume_reading_if_drained", "_process_keepalive", "_drain_helper",
                   "log_exception", "start", "shutdown"):
        assert callable(getattr(protocol, method, None)), method
    assert "start" in LeanLoop.__dict__ and issubclass(LeanLoop, RequestHandler)


async def test_requests_without_a_body_build_no_aiohttp_request(
    proxy: Proxy, keys: KeyRing, upstream: Upstream
) -> None:
    built = counted_requests(proxy)
    auth = {"Authorization": f"Bearer {token_for(keys)}"}
    for path in ("/orders/1", "/public/a", "/orders/2"):
        resp = await proxy.client.get(path, headers=auth)
        assert resp.status == 200
        assert (await resp.json())["path"] == path
    resp = await proxy.client.get("/orders/3")  # a refusal is written in one piece too
    assert resp.status == 401
    resp = await proxy.client.head("/orders/3")
    assert (resp.status, await resp.read()) == (401, b"")
    assert built[0] == 0
    assert [r.path_qs for r in upstream[0].received] == ["/orders/1", "/public/a", "/orders/2"]


async def test_a_request_with_a_body_hands_the_connection_to_aiohttp(
    proxy: Proxy, keys: KeyRing, upstream: Upstream
) -> None:
    built = counted_requests(proxy)
    token = token_for(keys)
    reader, writer = await open_raw(proxy)
    get = (f"GET /orders/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
    post = (f"POST /orders/b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Length: 5\r\n\r\nhello")
    writer.write(get.encode())
    assert (await read_response(reader))[0] == 200
    assert built[0] == 0
    writer.write(post.encode())
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)) == (200, {"path": "/orders/b", "bytes": 5})
    writer.write(get.encode())  # aiohttp's loop serves the rest of the connection
    assert (await read_response(reader))[0] == 200
    assert built[0] == 2  # the POST and the GET after it
    assert upstream[0].received[1].body == b"hello"
    writer.close()


async def test_pipelined_requests_are_answered_in_order(
    proxy: Proxy, keys: KeyRing, upstream: Upstream
) -> None:
    """More than aiohttp's message queue holds, in one write: the queue's pause and resume."""
    reader, writer = await open_raw(proxy)
    token = token_for(keys)
    writer.write(b"".join(
        f"GET /orders/{i} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        for i in range(120)))
    for i in range(120):
        status, _, body = await read_response(reader)
        assert (status, json.loads(body)["path"]) == (200, f"/orders/{i}")
    writer.close()


async def test_an_idle_connection_after_a_lean_request_is_closed_by_the_keepalive_timer(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], upstream: Upstream
) -> None:
    proxy = await make_proxy(base_config(jwks[1], upstream[1],
                                         server={"keepalive_timeout": "200ms"}))
    reader, writer = await open_raw(proxy)
    writer.write(b"GET /public/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, with nothing more
    writer.close()


async def test_connection_close_is_honoured(proxy: Proxy, upstream: Upstream) -> None:
    reader, writer = await open_raw(proxy)
    writer.write(b"GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert (status, headers.get("connection")) == (200, "close")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert [r.path_qs for r in upstream[0].received] == ["/public/x"]
    writer.close()


@pytest.mark.parametrize("head", [
    "HEAD /public/h HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /public/h HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
])
async def test_head_and_http_1_0_requests_are_answered_and_the_connection_serves_on(
    proxy: Proxy, upstream: Upstream, head: str
) -> None:
    reader, writer = await open_raw(proxy)
    writer.write(head.encode())
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert raw.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
    if head.startswith("GET"):
        length = int(re.search(rb"(?i)content-length: (\d+)", raw)[1])  # type: ignore[index]
        await reader.readexactly(length)
    writer.write(b"GET /public/next HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["path"]) == (200, "/public/next")
    writer.close()


async def test_a_client_gone_before_its_answer_leaves_the_proxy_serving(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], aiohttp_raw_server: Any
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/public/slow":
            arrived.set()
            await release.wait()
        return web.Response(text="ok")

    server = await aiohttp_raw_server(slow)
    proxy = await make_proxy(base_config(jwks[1], str(server.make_url(""))))
    _, writer = await open_raw(proxy)
    writer.write(b"GET /public/slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(arrived.wait(), 10)
    writer.close()
    await writer.wait_closed()
    release.set()
    resp = await proxy.client.get("/public/after")
    assert (resp.status, await resp.text()) == (200, "ok")


async def test_a_client_that_reads_late_gets_every_answer_whole_and_in_order(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], aiohttp_raw_server: Any
) -> None:
    """Answers written in one piece wait for the client (flow control) when it does not
    read: 1,000 pipelined requests for 16 KB each, more than the kernel buffers hold, read
    only once the proxy has had to wait."""
    async def sized(request: web.BaseRequest) -> web.StreamResponse:
        tag = request.path.rsplit("/", 1)[-1].encode()
        return web.Response(body=tag.ljust(16384, b"."))

    server = await aiohttp_raw_server(sized)
    proxy = await make_proxy(base_config(jwks[1], str(server.make_url(""))))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(
        sock, (proxy.client.server.host, proxy.client.server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"".join(b"GET /public/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(1000)))
    await writer.drain()
    handlers: Any = proxy.client.server.runner.server  # type: ignore[union-attr]
    for _ in range(1000):  # until the proxy holds answers the client has not read
        if any(handler.writing_paused for handler in handlers.connections):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the proxy never had to wait for the client")
    for i in range(1000):
        status, _, body = await read_response(reader)
        assert (status, body) == (200, str(i).encode().ljust(16384, b"."))
    writer.close()
