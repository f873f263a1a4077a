"""Pooled keep-alive connections to upstreams, bound to the client connection that opened
them (connection.py holds one connection's exchange and its reuse rules)."""

from __future__ import annotations

import asyncio

from .connection import (
    CloseCounter,
    Connection,
    Parked,
    PoolKey,
    UpstreamError,
    UpstreamTimedOut,
)


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

    def take_parked(self, parked: Parked | None, key: PoolKey) -> Connection | None:
        """The client's parked connection to `key`, when it is fit to be reused."""
        idle = parked.pop(key, None) if parked else None
        if idle is None:
            return None
        self._unpark(idle)
        if idle.closed or idle.transport is None or idle.transport.is_closing():
            return None
        if idle.has_unread_bytes():
            idle.poison("idle_bytes")
            return None
        return idle

    async def open(self, key: PoolKey, connect_timeout: float) -> Connection:
        """A new connection to `key` = (host, port, TLS context: a route's trust is its own)."""
        host, port, tls = key
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
        return conn

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
