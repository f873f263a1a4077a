"""The proxy's own request loop on aiohttp's server. aiohttp's protocol and HTTP parser read
the requests; a request without a body is handed to the door as a `LeanRequest` in the
connection's own task: no `BaseRequest`, no Task and no `StreamWriter` per request (the door
writes a relayed answer in one piece, forwarder.Sent). The first request this loop does not
take (a body, an upgrade, `Expect`, HTTP/1.0, a parser error) hands the connection to
aiohttp's own loop for the rest of its life, so every such case keeps aiohttp's handling.

Written against aiohttp 3.14's RequestHandler: `start()`'s message queue (`_messages`,
`_waiter`, the parser's `message_consumed`, the queue's pause/resume), its keep-alive timer
(`_keepalive_handle`, `_next_keepalive_close_time`, `_process_keepalive`), graceful shutdown
(`_request_in_progress`, `_handler_waiter`) and the request factory. This module is the only
user of them; tests/test_lean.py fails when they change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeGuard

from aiohttp import HttpVersion, HttpVersion11, web
from aiohttp.client_exceptions import ClientConnectionResetError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDictProxy
from yarl import URL


class Answer(Protocol):
    """What a handler returns: an aiohttp response, or one already written (forwarder.Sent)."""

    @property
    def prepared(self) -> bool: ...
    @property
    def keep_alive(self) -> bool | None: ...
    async def prepare(self, request: web.BaseRequest) -> Any: ...
    async def write_eof(self, data: bytes = b"") -> None: ...


LeanHandler = Callable[["LeanRequest"], Awaitable[Answer]]


class LeanRequest:
    """A request without a body, as the lean loop hands it to the door: the fields of
    aiohttp's parsed message the door and the forwarder read, under BaseRequest's names.
    `aiohttp_request()` builds the BaseRequest a streamed or aiohttp-built answer needs."""

    __slots__ = ("_full", "_message", "_protocol", "headers", "keep_alive", "method", "peer",
                 "raw_headers", "raw_path", "scheme", "version")
    body_exists: Final = False

    def __init__(self, message: RawRequestMessage, protocol: LeanLoop) -> None:
        self._message = message
        self._protocol = protocol
        self._full: web.BaseRequest | None = None
        self.method: str = message.method
        self.raw_path: str = message.path
        self.headers: CIMultiDictProxy[str] = message.headers
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = message.raw_headers
        self.version: HttpVersion = message.version
        self.keep_alive: bool = not message.should_close
        self.scheme: str = protocol.scheme
        self.peer: str | None = protocol.peer  # the client's address

    @property
    def path(self) -> str:
        url: URL = self._message.url
        return url.path

    @property
    def writer(self) -> LeanRequest:
        """What the door writes a whole answer through, as through BaseRequest.writer."""
        return self

    async def write(self, data: bytes) -> None:
        """Write to the client, with aiohttp's flow control: a client that stops reading
        pauses this request, it does not grow the heap."""
        protocol = self._protocol
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        transport.write(data)
        if protocol.writing_paused:
            await protocol._drain_helper()

    @property
    def protocol(self) -> LeanLoop:
        return self._protocol

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._protocol.transport

    def aiohttp_request(self) -> web.BaseRequest:
        if self._full is None:
            protocol = self._protocol
            factory = protocol._request_factory
            if factory is None:  # the connection is gone
                raise ClientConnectionResetError("Connection lost")
            self._full = factory(self._message, EMPTY_PAYLOAD, protocol,
                                 StreamWriter(protocol, protocol._loop),
                                 asyncio.current_task())  # type: ignore[arg-type]
        return self._full

    def release(self) -> None:
        """Break the cycle a built BaseRequest makes through the task (as aiohttp does)."""
        if self._full is not None:
            self._full._task = None  # type: ignore[assignment]


def aiohttp_request(request: web.BaseRequest | LeanRequest) -> web.BaseRequest:
    return request.aiohttp_request() if isinstance(request, LeanRequest) else request


def takes(message: object, payload: object) -> TypeGuard[RawRequestMessage]:
    """Whether the lean loop serves this request: a parsed HTTP/1.1 request without a
    body, not an upgrade, no Expect (aiohttp's loop handles each of those)."""
    if payload is not EMPTY_PAYLOAD or not isinstance(message, RawRequestMessage):
        return False
    headers = message.headers
    return (message.version == HttpVersion11 and not message.upgrade
            and "Upgrade" not in headers and "Expect" not in headers)


class LeanLoop(RequestHandler):
    """One client connection, served by `start()` below while its requests are lean."""

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.scheme = "http"
        self.peer: str | None = None
        self.lean_handler: LeanHandler = manager.request_handler  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        peer = transport.get_extra_info("peername")  # once per connection, not per request
        self.peer = str(peer[0]) if peer else None
        super().connection_made(transport)  # starts start() (eagerly on 3.12+)

    async def start(self) -> None:
        loop = self._loop
        messages = self._messages
        while not self._force_close:
            if not messages:
                try:
                    self._waiter = loop.create_future()
                    await self._waiter  # cancelled by close()/force_close()
                finally:
                    self._waiter = None
            message, payload = messages[0]
            if not takes(message, payload):
                await super().start()  # takes the message still queued, and the rest
                return
            messages.popleft()
            if self._parser is not None:
                self._parser.message_consumed()
            if self._buffer_paused and len(messages) <= self._msg_queue_resume_size:
                self._resume_reading_if_drained()
            keep_alive = await self._serve(LeanRequest(message, self))
            if not keep_alive or self._close or self._force_close:
                break
            close_time = loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
        if not self._force_close:
            self._task_handler = None
            if self.transport is not None:
                self.transport.close()

    async def _serve(self, request: LeanRequest) -> bool:
        """Answer one request; whether the connection stays open for the next."""
        manager = self._manager
        if manager is not None:
            manager.requests_count += 1
        self._request_in_progress = True
        try:
            response = await self.lean_handler(request)
            if not response.prepared:
                full = request.aiohttp_request()
                await response.prepare(full)
                await response.write_eof()
            self._keepalive = bool(response.keep_alive)
            return self._keepalive
        except ConnectionError:
            return False  # the client went away: nothing left to answer
        except Exception as exc:
            self.log_exception("Unhandled exception", exc_info=exc)
            self.force_close()
            return False
        except BaseException:
            self.force_close()
            raise
        finally:
            request.release()
            self._request_in_progress = False
            waiter = self._handler_waiter  # shutdown() waits for this request
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
