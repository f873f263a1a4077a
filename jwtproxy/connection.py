"""One upstream HTTP/1.1 connection, one exchange at a time: the request head and body
written directly, the response parsed by llhttp (httptools), its body relayed as it comes.

Correct before fast. Upstream bytes are untrusted: a connection is fit for reuse only when
its response ended exactly at a message boundary with nothing left over. Any byte after the
end of a response (in the same packet or later), any byte on an idle connection, a second
response, a parser error or an unexpected 101 poisons it: it is closed and never reused, so
one exchange's bytes can never reach another client. Every exchange gets a fresh parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import ssl
import termios
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Final, cast

import httptools

log = logging.getLogger("jwtproxy.connection")

HIGH_WATER: Final = 1024 * 1024  # buffered response bytes before reading pauses
# Reasons (metrics.UPSTREAM_CLOSE_REASONS) for which the upstream is to blame.
POISONED: Final = ("extra_bytes", "idle_bytes", "bad_response")
NOTHING_WAITING: Final = bytes(4)  # FIONREAD's count of 0, in any byte order


PoolKey = tuple[str, int, ssl.SSLContext | None]
CloseCounter = Callable[[str], None]
Parked = dict[PoolKey, "Connection"]  # one client connection's idle upstream connections


class UpstreamError(Exception):
    """Refused, reset or unparsable: before any response byte this becomes 502."""


class UpstreamTimedOut(UpstreamError):
    """No response within the read timeout: 504."""


class _SecondMessage(Exception):
    """Raised inside llhttp's callback to stop parsing at a message that is not ours."""


class Connection(asyncio.Protocol):
    """One upstream connection; one exchange at a time."""

    # slots: `begin` resets ~25 of them per exchange and the parser callbacks read them
    __slots__ = ("_drain_waiter", "_tail", "body", "body_waiter", "buffered", "chunked", "closed",
                 "complete", "error", "fd", "final", "head_done", "head_only", "headers",
                 "idle_since", "in_exchange", "keep_alive", "key", "last_body", "loop",
                 "on_close", "parked_in", "parser", "poisoned", "reading_paused", "reason",
                 "received", "sent_whole_request", "status", "transport", "until_close",
                 "writing_paused", "wrote")

    def __init__(
        self, key: PoolKey, loop: asyncio.AbstractEventLoop, on_close: CloseCounter | None = None
    ) -> None:
        self.key = key
        self.loop = loop
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.closed = False
        self.poisoned: str | None = None
        self.in_exchange = False
        self.idle_since = 0.0
        self.parked_in: Parked | None = None
        self.writing_paused = False  # flow control: the transport's buffer is full
        self._drain_waiter: asyncio.Future[None] | None = None
        self.begin(head_only=False)
        self.in_exchange = False

    def begin(self, head_only: bool) -> None:
        """Ready the connection for the next exchange, with nothing carried over."""
        self.parser = httptools.HttpResponseParser(self)
        self.in_exchange = True
        self.head_only = head_only
        self.error: Exception | None = None
        self.status = 0
        self.final = False  # the final (non-1xx) response head has begun
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done: asyncio.Future[None] = self.loop.create_future()
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.last_body = b""
        self.chunked = False
        self.complete = False
        self.reading_paused = False
        self.body_waiter: asyncio.Future[None] | None = None
        self.keep_alive = False
        self.until_close = False
        self.wrote = False
        self.received = False
        self.sent_whole_request = False
        self._tail = b""

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def has_unread_bytes(self) -> bool:
        """Bytes in the kernel's receive queue that the loop has not read yet (FIONREAD).
        A parked connection must have none: bytes that arrived in the same loop turn as
        the client's next request would otherwise be read as that request's answer."""
        if self.fd < 0:
            return False
        count = bytearray(4)  # mutable: ioctl fills it (a bytes argument is first tried as
        try:                  # a writable buffer, and the failed try formats an error)
            fcntl.ioctl(self.fd, termios.FIONREAD, count)
        except OSError:
            return True  # cannot tell: do not reuse
        return count != NOTHING_WAITING

    def data_received(self, data: bytes) -> None:
        if not self.in_exchange:
            self.poison("idle_bytes")
            return
        if self.complete:
            self.poison("extra_bytes")  # late bytes after our response ended
            return
        self.received = True
        self.last_body = b""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            if isinstance(err.__context__, _SecondMessage) or self.complete:
                self.poison("extra_bytes")
            else:
                self._fail(UpstreamError(f"bad response from upstream: {err}"))
                self.poison("bad_response")
            return
        if self.complete and not self._ended_exactly(data):
            self.poison("extra_bytes")
        self._tail = data[-5:]

    def _ended_exactly(self, data: bytes) -> bool:
        """Whether the response ended at the last byte of `data`. llhttp skips CR/LF
        between messages without a callback, so those few bytes are checked here: a
        Content-Length body ends with its last chunk, every other response with the
        blank line that ends a head or a chunked trailer section (never preceded by CR
        or LF in a well-formed message)."""
        if self.last_body and not self.chunked and not self.head_only:
            return data.endswith(self.last_body)
        tail = (self._tail + data)[-5:]
        return tail.endswith(b"\r\n\r\n") and tail[:1] not in (b"\r", b"\n")

    def eof_received(self) -> bool:
        with contextlib.suppress(httptools.HttpParserError):
            if self.in_exchange and not self.complete:
                self.parser.feed_data(b"")  # completes a close-delimited body
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.until_close and exc is None and self.head_done.done() and self.error is None:
            self.complete = True  # a close-delimited body ends here (llhttp is not told)
            self._wake()
        if self.in_exchange and not self.complete:
            self._fail(UpstreamError(f"upstream closed the connection: {exc or 'EOF'}"))
        self.resume_writing()  # a writer waiting to drain learns of the close from send

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- llhttp callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.final:
            raise _SecondMessage  # a second response to one request: never ours to relay

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                # the pool never asks for an upgrade (WebSocket goes another way)
                raise httptools.HttpParserError("unrequested 101 Switching Protocols")
            self.headers = []  # interim response (RFC 9110 §15.2): wait for the final one
            self.reason = b""
            return
        self.final = True
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        framed = False
        for name, _ in self.headers:
            lower = name.lower()
            if lower == b"transfer-encoding":
                framed = self.chunked = True
            elif lower == b"content-length":
                framed = True
        # RFC 9112 §6.3: no Content-Length and not chunked means the body ends at close.
        self.until_close = not self.head_only and status not in (204, 304) and not framed
        if self.until_close:
            self.keep_alive = False
        if not self.head_done.done():
            self.head_done.set_result(None)
        if self.head_only:
            self.on_message_complete()  # llhttp cannot be told that a HEAD has no body

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            raise _SecondMessage  # bytes after a HEAD response's head
        self.body.append(body)
        self.last_body = body
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        if self.body_waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        if not self.final or self.complete:
            return  # the end of a 1xx interim message; or HEAD, completed at its head
        self.complete = True
        if self.body_waiter is not None:
            self._wake()

    # -- helpers ---------------------------------------------------------------------------

    def _wake(self) -> None:
        if self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_result(None)

    def _fail(self, err: Exception) -> None:
        if self.error is None:
            self.error = err
        if not self.head_done.done():
            self.head_done.set_exception(err)
            self.head_done.exception()  # retrieved: whoever waits re-raises it
        self._wake()

    def poison(self, reason: str) -> None:
        """Never use this connection again; a response already complete stays whole."""
        if self.poisoned is None:
            self.poisoned = reason
            if reason in POISONED:
                log.warning("upstream_connection_poisoned",
                            extra={"upstream": f"{self.key[0]}:{self.key[1]}", "reason": reason})
            if self.on_close is not None and not self.closed:
                self.on_close(reason)
        if not self.complete:
            self._fail(UpstreamError(f"upstream connection unusable: {reason}"))
        if self.transport is not None:
            self.transport.abort()

    @property
    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and self.sent_whole_request
                and self.poisoned is None and not self.closed and self.error is None
                and not self.body)

    @property
    def unanswered(self) -> bool:
        """Closed by the upstream before a single response byte: the request provably got
        no answer, so a fresh connection may be tried (the keep-alive race)."""
        return self.closed and not self.received and self.poisoned is None

    def send(self, data: bytes) -> bool:
        """Write `data`; whether the writer must now wait for `drained()` (flow control)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise UpstreamError("upstream connection closed while sending")
        self.transport.write(data)
        self.wrote = True
        return self.writing_paused

    async def drained(self) -> None:
        while self.writing_paused:
            if self._drain_waiter is None:
                self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    async def write(self, data: bytes) -> None:
        if self.send(data):
            await self.drained()

    async def wait_head(self, timeout: float) -> None:
        """Until the final response head has arrived; UpstreamTimedOut after `timeout`."""
        if not self.head_done.done():
            timer = self.loop.call_later(timeout, self._time_out, self.head_done)
            try:
                await self.head_done
            finally:
                timer.cancel()
        else:
            self.head_done.result()

    @staticmethod
    def _time_out(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamTimedOut("upstream timed out"))

    async def body_chunks(self, read_timeout: float) -> AsyncIterator[bytes]:
        """The response body as it arrives; raises UpstreamError if it ends early."""
        while True:
            while self.body:
                chunk = self.body.popleft()
                self.buffered -= len(chunk)
                if self.reading_paused and self.buffered < HIGH_WATER // 2:
                    self.reading_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                yield chunk
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            self.body_waiter = waiter = self.loop.create_future()
            timer = self.loop.call_later(read_timeout, self._time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.body_waiter = None

    def take_body(self) -> bytes:
        """The whole body, when it has all arrived already (the common small response)."""
        body = b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        return body
