"""A lean HTTP/1.1 client for upstreams: pooled keep-alive connections, the request head
written directly, responses parsed by llhttp (httptools), bodies relayed as they come.

Correct before fast. Upstream bytes are untrusted: a connection goes back to the pool only
when its response ended exactly at a message boundary with nothing left over. Any byte after
the end of a response (in the same packet or later), any byte on an idle connection, a second
response, a parser error or an unexpected 101 poisons it: it is closed and never reused, so
one exchange's bytes can never reach another client. Every exchange gets a fresh parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import ssl
import struct
import termios
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Final, cast

import httptools

log = logging.getLogger("jwtproxy.pool")

HIGH_WATER: Final = 1024 * 1024  # buffered response bytes before reading pauses
# Reasons (metrics.UPSTREAM_CLOSE_REASONS) for which the upstream is to blame.
POISONED: Final = ("extra_bytes", "idle_bytes", "bad_response")


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
        self._can_write = asyncio.Event()
        self._can_write.set()
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
        try:
            waiting: int = struct.unpack(
                "i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return True  # cannot tell: do not reuse
        return waiting > 0

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
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

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
        self._wake()

    def on_message_complete(self) -> None:
        if not self.final or self.complete:
            return  # the end of a 1xx interim message; or HEAD, completed at its head
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

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise UpstreamError("upstream connection closed while sending")
        self.transport.write(data)
        self.wrote = True
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
    """Upstream keep-alive connections, each bound to the client connection whose request
    opened it (`Parked`: one per client connection, held by the server's protocol).

    Binding is what makes a late byte harmless. HTTP/1.1 cannot tell bytes an upstream sends
    after its response from the answer to the next request on that connection; were idle
    connections shared, bytes arriving once another client's request was on the wire would
    become that client's response. Bound, the next request on a connection is always the same
    client's, and bytes that arrive while it is parked close it (`idle_bytes`). The cost is
    one upstream connect per client connection (the sharing HAProxy's `http-reuse never`
    also gives up).

    Parked connections are closed when their client connection closes, after
    `idle_timeout`, beyond `max_idle` per upstream, and when no config uses their upstream
    any more (`retain`)."""

    def __init__(
        self, on_close: CloseCounter | None = None, idle_timeout: float = 4.0,
        max_idle: int = 128,
    ) -> None:
        self.on_close = on_close
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.in_use: frozenset[PoolKey] | None = None  # None: every key is in use
        self.parked: set[Connection] = set()
        self._parked_per_key: dict[PoolKey, int] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def configure(self, idle_timeout: float, max_idle: int) -> None:
        self.idle_timeout, self.max_idle = idle_timeout, max_idle

    async def connect(
        self, parked: Parked | None, host: str, port: int, tls: ssl.SSLContext | None,
        connect_timeout: float,
    ) -> tuple[Connection, bool]:
        """A connection, and whether it is the client's parked one, reused."""
        key = (host, port, tls)  # the TLS context too: a route's trust is its own
        if parked:
            idle = parked.pop(key, None)
            if idle is not None:
                self._unpark(idle)
                if idle.closed or idle.transport is None or idle.transport.is_closing():
                    pass
                elif idle.has_unread_bytes():
                    idle.poison("idle_bytes")
                else:
                    return idle, True
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(key, loop, self.on_close), host, port,
                                       ssl=tls, server_hostname=host if tls else None),
                connect_timeout)
        except TimeoutError:
            raise UpstreamTimedOut(f"connect to {host}:{port} timed out") from None
        except OSError as err:
            raise UpstreamError(f"connect to {host}:{port}: {err.strerror or err}") from None
        return conn, False

    def release(self, conn: Connection, parked: Parked | None) -> None:
        """After an exchange: parked for the same client only when provably clean."""
        conn.in_exchange = False
        if not conn.reusable:
            # a response that asked to close (or was cut by the upstream) is not counted
            clean_end = conn.complete and not conn.keep_alive
            self._close(conn, None if clean_end else "aborted")
            return
        if parked is None:
            self._close(conn, None)  # a client that cannot hold connections
            return
        if self.in_use is not None and conn.key not in self.in_use:
            self._close(conn, "unused")
            return
        if self._parked_per_key.get(conn.key, 0) >= self.max_idle:
            self._close(conn, "pool_full")
            return
        old = parked.get(conn.key)
        if old is not None:
            self._unpark(old)
            self._close(old, "pool_full")
        parked[conn.key] = conn
        conn.parked_in = parked
        conn.idle_since = conn.loop.time()
        self.parked.add(conn)
        self._parked_per_key[conn.key] = self._parked_per_key.get(conn.key, 0) + 1
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self.idle_timeout, self._sweep)

    def discard(self, conn: Connection) -> None:
        """The exchange failed or was abandoned: the connection is never reused."""
        conn.in_exchange = False
        self._close(conn, "aborted", abort=True)

    def client_closed(self, parked: Parked) -> None:
        """The client connection is gone: so are the connections parked for it."""
        for conn in list(parked.values()):
            self._unpark(conn)
            self._close(conn, None)
        parked.clear()

    def retain(self, keys: frozenset[PoolKey]) -> None:
        """Only these upstreams are in use now: close the others' parked connections; busy
        ones are closed when their exchange ends."""
        self.in_use = keys
        for conn in [conn for conn in self.parked if conn.key not in keys]:
            self._unpark(conn)
            self._close(conn, "unused")

    def _unpark(self, conn: Connection) -> None:
        if conn in self.parked:
            self.parked.discard(conn)
            self._parked_per_key[conn.key] -= 1
        if conn.parked_in is not None:
            if conn.parked_in.get(conn.key) is conn:
                del conn.parked_in[conn.key]
            conn.parked_in = None

    def _sweep(self) -> None:
        """Close what has been parked for `idle_timeout`, and forget what the upstream
        closed meanwhile."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.idle_timeout
        for conn in [conn for conn in self.parked if conn.closed or conn.idle_since <= deadline]:
            self._unpark(conn)
            self._close(conn, "idle_timeout")
        if self.parked:
            self._sweeper = loop.call_later(max(self.idle_timeout / 4, 0.05), self._sweep)

    def _close(self, conn: Connection, reason: str | None, abort: bool = False) -> None:
        """Close a connection once; count why when the proxy chose to (not when the
        upstream closed it, nor twice for one that was poisoned)."""
        if conn.closed or conn.poisoned is not None:
            reason = None
        conn.poisoned = conn.poisoned or reason or "closed"
        if reason is not None and self.on_close is not None:
            self.on_close(reason)
        if conn.transport is not None:
            if abort:
                conn.transport.abort()
            else:
                conn.transport.close()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.parked):
            self._unpark(conn)
            self._close(conn, None)
