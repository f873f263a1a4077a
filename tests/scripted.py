"""A scripted upstream: a raw asyncio server whose every byte the test decides. Each request
(parsed with llhttp) is handed to the script as a `Turn`; the script writes what it likes."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httptools
import pytest


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class _RequestReader:
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done = False
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request (the proxy never pipelines), or None at EOF."""
    parsed = _RequestReader()
    while not parsed.done:
        data = await reader.read(65536)
        if not data:
            return None
        parsed.parser.feed_data(data)
    return Request(parsed.parser.get_method().decode(), parsed.url.decode("latin-1"),
                   parsed.headers, bytes(parsed.body))


@dataclass
class Turn:
    """One request on one upstream connection, for the script to answer."""

    request: Request
    writer: asyncio.StreamWriter
    connection: int  # index of the connection, in accept order
    number: int  # index of the request on its connection
    release: asyncio.Event  # set when the test ends: hanging scripts wake up

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0), not FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Script = Callable[[Turn], Awaitable[bool]]  # True: keep the connection for another request


def ok(body: bytes = b"ok", *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class ScriptedUpstream:
    def __init__(self, script: Script, port: int = 0) -> None:
        self.script = script
        self.port = port
        self.connections = 0
        self.ended: dict[int, asyncio.Event] = {}  # by connection index: set when it closed
        self.requests: list[Request] = []
        self.release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        ended = self.ended[index] = asyncio.Event()
        self._writers.add(writer)
        try:
            number = 0
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                self.requests.append(request)
                if not await self.script(Turn(request, writer, index, number, self.release)):
                    break
                number += 1
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            ended.set()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[ScriptedUpstream]]]:
    started: list[ScriptedUpstream] = []

    async def start(script: Script) -> ScriptedUpstream:
        upstream = ScriptedUpstream(script)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.stop()


ScriptedFactory = Callable[[Script], Awaitable[ScriptedUpstream]]
