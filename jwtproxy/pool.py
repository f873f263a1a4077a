"""A lean HTTP/1.1 client for upstreams: pooled keep-alive connections, the request head
written directly, responses parsed by llhttp (httptools), bodies relayed as they come.

Correct before fast: Content-Length and chunked framing are llhttp's; HEAD never reads a
body; 1xx interim responses are skipped; a connection is reused only after a complete
response on both sides and when neither side said `Connection: close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, cast

import httptools

HIGH_WATER: Final = 1024 * 1024  # buffered response bytes before reading pauses
MAX_IDLE_PER_UPSTREAM: Final = 256


PoolKey = tuple[str, int, ssl.SSLContext | None]


class UpstreamError(Exception):
    """Refused, reset or unparsable: before any response byte this becomes 502."""


class UpstreamTimedOut(UpstreamError):
    """No response within the read timeout: 504."""


class Connection(asyncio.Protocol):
    """One upstream connection; one exchange at a time."""

    def __init__(self, key: PoolKey, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: Exception | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.parser: httptools.HttpResponseParser | None = None
        self.head_only = False
        self.begin(head_only=False)

    def begin(self, head_only: bool) -> None:
        """Ready the connection for the next exchange."""
        if self.parser is None or self.head_only:
            # llhttp cannot be told that a HEAD response has no body: after a HEAD exchange
            # the parser is replaced; otherwise it simply goes on to the next message.
            self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done: asyncio.Future[None] = self.loop.create_future()
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.reading_paused = False
        self.body_waiter: asyncio.Future[None] | None = None
        self.keep_alive = False
        self.until_close = False
        self.sent_whole_request = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(UpstreamError(f"bad response from upstream: {err}"))
            if self.transport is not None:
                self.transport.close()

    def eof_received(self) -> bool:
        with contextlib.suppress(httptools.HttpParserError):
            if self.parser is not None:
                self.parser.feed_data(b"")  # completes a close-delimited body
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.until_close and exc is None and self.head_done.done():
            self.complete = True  # a close-delimited body ends here (llhttp is not told)
            self._wake()
        if not self.complete:
            self._fail(UpstreamError(f"upstream closed the connection: {exc or 'EOF'}"))
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- llhttp callbacks ------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers = []  # interim response (RFC 9110 §15.2): wait for the final one
            self.reason = b""
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        # RFC 9112 §6.3: no Content-Length and not chunked means the body ends at close.
        self.until_close = not self.head_only and status not in (204, 304) and not any(
            name.lower() in (b"content-length", b"transfer-encoding")
            for name, _ in self.headers)
        if self.until_close:
            self.keep_alive = False
        if not self.head_done.done():
            self.head_done.set_result(None)
        if self.head_only:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of a 1xx interim message
        self.complete = True
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

    @property
    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and self.sent_whole_request
                and not self.closed and self.error is None and not self.body)

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise UpstreamError("upstream connection closed while sending")
        self.transport.write(data)
        if not self._can_write.is_set():
            await self._can_write.wait()

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


class UpstreamPool:
    """Idle keep-alive connections per upstream (host, port, TLS context)."""

    def __init__(self) -> None:
        self.idle: dict[PoolKey, list[Connection]] = {}

    async def connect(
        self, host: str, port: int, tls: ssl.SSLContext | None, connect_timeout: float
    ) -> tuple[Connection, bool]:
        """A connection, and whether it was reused from the pool."""
        key = (host, port, tls)  # the TLS context too: a route's trust is its own
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(key, loop), host, port, ssl=tls,
                                       server_hostname=host if tls else None),
                connect_timeout)
        except TimeoutError:
            raise UpstreamTimedOut(f"connect to {host}:{port} timed out") from None
        except OSError as err:
            raise UpstreamError(f"connect to {host}:{port}: {err.strerror or err}") from None
        return conn, False

    def release(self, conn: Connection) -> None:
        if conn.reusable:
            idle = self.idle.setdefault(conn.key, [])
            if len(idle) < MAX_IDLE_PER_UPSTREAM:
                idle.append(conn)
                return
        if conn.transport is not None:
            conn.transport.close()

    def discard(self, conn: Connection) -> None:
        if conn.transport is not None:
            conn.transport.abort()

    def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self.idle.clear()
