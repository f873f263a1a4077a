"""Upstream response desynchronisation: bytes an upstream sends beyond the end of its
response (a second response, part of one, a body after HEAD/204/304, bytes after the last
chunk, even a stray CRLF), in the same packet or later, must never reach a client. The
client gets exactly its own response, the connection is closed and counted, and the next
request goes out on a fresh connection. A request is retried only when it provably never
reached the upstream."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest

from tests.conftest import Proxy, ProxyFactory, base_config
from tests.scripted import ScriptedFactory, ScriptedUpstream, Turn
from tests.servers import JwksEndpoint

Jwks = tuple[JwksEndpoint, str]
ANSWER = re.compile(rb"ID=([\w-]+);(\w+);")


def body(rid: str, tag: str = "REAL") -> bytes:
    return f"ID={rid};{tag};".encode()


def response(rid: str, tag: str = "REAL") -> bytes:
    data = body(rid, tag)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(data), data)


def chunked(rid: str) -> bytes:
    data = body(rid)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (
        len(data), data)


LARGE = 300_000  # relayed as a stream, not in one piece


def large(rid: str) -> bytes:
    data = body(rid).ljust(LARGE, b".")
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(data), data)


EXTRAS: dict[str, Callable[[str], bytes]] = {
    "second-response": lambda rid: response(rid, "SECOND"),
    "partial-response": lambda rid: b"HTTP/1.1 200 OK\r\nContent-Le",
    "crlf": lambda rid: b"\r\n",
    "garbage": lambda rid: b"garbage",
    "body-bytes": lambda rid: body(rid, "EXTRA"),
}


@dataclass(frozen=True)
class Case:
    """A first answer that is whole by its framing, then `extra` bytes that are not ours."""

    first: str  # length | chunked | large | head | 204 | 304
    extra: str

    @property
    def method(self) -> str:
        return "HEAD" if self.first == "head" else "GET"

    def answer(self, rid: str) -> bytes:
        if self.first == "head":
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body(rid))
        if self.first == "204":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if self.first == "304":
            return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 20\r\nETag: \"e\"\r\n\r\n"
        return {"length": response, "chunked": chunked, "large": large}[self.first](rid)

    def expected(self, rid: str) -> tuple[int, bytes]:
        if self.first in ("head", "204", "304"):
            return {"head": 200, "204": 204, "304": 304}[self.first], b""
        return 200, large(rid).partition(b"\r\n\r\n")[2] if self.first == "large" else body(rid)


CASES = [
    *(Case("length", extra) for extra in EXTRAS),
    *(Case("chunked", extra) for extra in ("second-response", "crlf", "garbage", "body-bytes")),
    Case("large", "second-response"), Case("large", "crlf"),
    *(Case(first, extra) for first in ("head", "204", "304")
      for extra in ("body-bytes", "second-response", "crlf")),
]


class Misbehaving:
    """Answers `/public/<case>/<rid>` with the case's answer and then its extra bytes, in
    the same packet or (`late`) once the client has read its response; every other target
    gets a plain response. Records which upstream connection served each request id."""

    def __init__(self, cases: dict[str, tuple[Case, bool]]) -> None:
        self.cases = cases  # case name -> (case, late)
        self.client_read: dict[str, asyncio.Event] = {}
        self.connection_of: dict[str, int] = {}

    async def __call__(self, turn: Turn) -> bool:
        _, _, name, rid = turn.request.target.split("/", 3)
        self.connection_of[rid] = turn.connection
        found = self.cases.get(name)
        if found is None:
            await turn.send(response(rid))
            return True
        case, late = found
        extra = EXTRAS[case.extra](rid)
        if not late:
            await turn.send(case.answer(rid) + extra)
            return True
        await turn.send(case.answer(rid))
        await self.client_read.setdefault(rid, asyncio.Event()).wait()
        await turn.send(extra)
        return True

    def read(self, rid: str) -> None:
        self.client_read.setdefault(rid, asyncio.Event()).set()


async def start(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory, script: Misbehaving
) -> tuple[Proxy, ScriptedUpstream]:
    upstream = await scripted(script)
    return await make_proxy(base_config(jwks[1], upstream.url)), upstream


def case_id(case: Case) -> str:
    return f"{case.first}+{case.extra}"


@pytest.mark.parametrize("late", [False, True], ids=["same-packet", "late"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
async def test_bytes_after_a_response_close_the_connection_and_reach_no_client(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory, case: Case, late: bool
) -> None:
    script = Misbehaving({"bad": (case, late)})
    proxy, upstream = await start(make_proxy, jwks, scripted, script)

    resp = await proxy.client.request(case.method, "/public/bad/userA-1111")
    assert (resp.status, await resp.read()) == case.expected("userA-1111")
    script.read("userA-1111")
    await asyncio.wait_for(upstream.ended[0].wait(), 5)  # the proxy closed it

    for rid in ("userB-2222", "userC-3333"):
        resp = await proxy.client.get(f"/public/ok/{rid}")
        assert (resp.status, await resp.read()) == (200, body(rid))
    assert script.connection_of["userB-2222"] == 1  # a fresh connection, then kept
    assert script.connection_of["userC-3333"] == 1
    reason = "idle_bytes" if late else "extra_bytes"
    assert await proxy.metric("jwtproxy_upstream_connections_closed_total", reason=reason) == 1


async def test_the_reported_sequence_gives_every_client_its_own_response(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    """The issue's reproduction: five client connections one after another; `/i2` is
    answered and 20 ms later answered again; `/s50` is answered after 50 ms. Each client
    gets its own response: no client's request shares a connection with another's."""

    async def answer(turn: Turn) -> bool:
        _, kind, rid = turn.request.target.split("/", 2)
        if kind == "i2":
            await turn.send(response(rid))
            await asyncio.sleep(0.02)  # the misbehaviour under test: a late second answer
            await turn.send(response(rid, "SECOND"))
        else:
            await asyncio.sleep(0.05)  # a slow upstream
            await turn.send(response(rid))
        return True

    upstream = await scripted(answer)
    config = base_config(jwks[1], upstream.url)
    config["routes"].insert(0, {"name": "open", "match": {"path_prefix": "/"},
                                "upstream": upstream.url, "auth": "none"})
    proxy = await make_proxy(config)
    url = proxy.client.make_url
    got = []
    for target in ("/i2/userA-1111", "/s50/userB-2222", "/s50/userC-3333", "/s50/userD-4444",
                   "/s50/userE-5555"):
        async with aiohttp.ClientSession() as client:  # one client connection each
            resp = await client.get(url(target))
            got.append(await resp.read())
    assert got == [body(rid) for rid in ("userA-1111", "userB-2222", "userC-3333",
                                         "userD-4444", "userE-5555")]


async def test_concurrent_clients_never_see_another_clients_bytes(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    """30 keep-alive clients x 30 requests, a third of them answered with extra bytes of
    every kind (same packet, or late: sent once the client has read its answer; that client
    then waits for the poisoned connection to close). 0 responses with another client's
    or another request's id, 0 merged responses, every poisoned connection closed."""
    cases = {f"c{i}": (case, late) for i, (case, late) in enumerate(
        (case, late) for case in CASES for late in (False, True))}
    script = Misbehaving(cases)
    proxy, upstream = await start(make_proxy, jwks, scripted, script)
    names = list(cases)
    rng = random.Random(17)
    plans = [[rng.choice(names) if rng.random() < 0.35 else "ok" for _ in range(30)]
             for _ in range(30)]
    wrong: list[tuple[str, int, bytes]] = []

    async def client(index: int, plan: list[str]) -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            for seq, name in enumerate(plan):
                rid = f"user{index}-{seq}"
                case = cases[name][0] if name in cases else Case("length", "crlf")
                resp = await session.request(case.method, proxy.client.make_url(
                    f"/public/{name}/{rid}"))
                got = (resp.status, await resp.read())
                if got != case.expected(rid):
                    wrong.append((rid, got[0], got[1][:80]))
                if name in cases and cases[name][1]:
                    script.read(rid)
                    await asyncio.wait_for(
                        upstream.ended[script.connection_of[rid]].wait(), 5)

    await asyncio.wait_for(asyncio.gather(*(client(i, plan) for i, plan in enumerate(plans))),
                           120)
    assert wrong == []
    misbehaved = sum(name != "ok" for plan in plans for name in plan)
    closed = sum([await proxy.metric("jwtproxy_upstream_connections_closed_total", reason=r)
                  for r in ("extra_bytes", "idle_bytes")])
    assert closed == misbehaved


async def test_a_request_with_a_body_is_not_retried_once_sent(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    """A reused connection closed by the upstream after it read a POST (it may have acted
    on it): 502, and the upstream saw the POST exactly once."""

    async def close_on_post(turn: Turn) -> bool:
        if turn.request.method == "POST":
            return False  # read it, then close without a byte of answer
        await turn.send(response("warm"))
        return True

    upstream = await scripted(close_on_post)
    proxy = await make_proxy(base_config(jwks[1], upstream.url))
    assert (await proxy.client.get("/public/warm")).status == 200
    resp = await proxy.client.post("/public/order", data=b"pay 100")
    assert resp.status == 502
    assert [r.method for r in upstream.requests] == ["GET", "POST"]


async def test_bytes_that_begin_a_response_are_never_retried(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    """Garbage instead of a response on a reused connection: the upstream answered
    something, so the GET is not sent again: 502, seen once."""

    async def garbage_second(turn: Turn) -> bool:
        if turn.number == 1:
            await turn.send(b"NOT HTTP\r\n\r\n")
            return False
        await turn.send(response("warm"))
        return True

    upstream = await scripted(garbage_second)
    proxy = await make_proxy(base_config(jwks[1], upstream.url))
    assert (await proxy.client.get("/public/warm")).status == 200
    assert (await proxy.client.get("/public/again")).status == 502
    assert [r.target for r in upstream.requests] == ["/public/warm", "/public/again"]
    assert await proxy.metric("jwtproxy_upstream_connections_closed_total",
                              reason="bad_response") == 1


async def test_an_unrequested_101_is_a_bad_response(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    async def switch(turn: Turn) -> bool:
        await turn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n"
                        b"Connection: upgrade\r\n\r\n" + response("smuggled"))
        return True

    upstream = await scripted(switch)
    proxy = await make_proxy(base_config(jwks[1], upstream.url))
    resp = await proxy.client.get("/public/x")
    assert resp.status == 502 and b"smuggled" not in await resp.read()


async def test_idle_upstream_connections_close_after_the_idle_timeout(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    async def answer(turn: Turn) -> bool:
        await turn.send(response(turn.request.target.rsplit("/", 1)[1]))
        return True

    upstream = await scripted(answer)
    config = base_config(jwks[1], upstream.url)
    config["server"] = {"upstream_idle_timeout": "200ms"}
    proxy = await make_proxy(config)
    assert (await proxy.client.get("/public/a")).status == 200
    await asyncio.wait_for(upstream.ended[0].wait(), 5)
    assert await proxy.metric("jwtproxy_upstream_connections_closed_total",
                              reason="idle_timeout") == 1
    assert (await proxy.client.get("/public/b")).status == 200  # a fresh one
    assert upstream.connections == 2


async def test_connections_beyond_max_idle_are_closed_not_kept(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    async def answer(turn: Turn) -> bool:
        await turn.send(response("x"))
        return True

    upstream = await scripted(answer)
    config = base_config(jwks[1], upstream.url)
    config["server"] = {"upstream_max_idle": 1}
    proxy = await make_proxy(config)
    sessions = [aiohttp.ClientSession() for _ in range(3)]
    try:
        for session in sessions:  # three client connections, one parked upstream at most
            resp = await session.get(proxy.client.make_url("/public/x"))
            assert resp.status == 200
            await resp.read()
        await asyncio.wait_for(upstream.ended[1].wait(), 5)
        await asyncio.wait_for(upstream.ended[2].wait(), 5)
        assert not upstream.ended[0].is_set()
        assert await proxy.metric("jwtproxy_upstream_connections_closed_total",
                                  reason="pool_full") == 2
    finally:
        for session in sessions:
            await session.close()


async def test_a_closed_client_connection_closes_its_parked_upstream_connection(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    async def answer(turn: Turn) -> bool:
        await turn.send(response("x"))
        return True

    upstream = await scripted(answer)
    proxy = await make_proxy(base_config(jwks[1], upstream.url))
    async with aiohttp.ClientSession() as session:
        assert (await session.get(proxy.client.make_url("/public/x"))).status == 200
    await asyncio.wait_for(upstream.ended[0].wait(), 5)


async def test_bytes_waiting_unread_on_a_parked_connection_are_never_an_answer(
    make_proxy: ProxyFactory, jwks: Jwks, scripted: ScriptedFactory
) -> None:
    """Stale bytes that reached the proxy's socket but that the loop has not read yet (they
    arrived in the same turn as the client's next request): the parked connection is not
    reused; the next request goes out on a fresh one and gets its own answer."""
    stale_sent = asyncio.Event()
    send_stale = asyncio.Event()

    async def answer(turn: Turn) -> bool:
        rid = turn.request.target.rsplit("/", 1)[1]
        await turn.send(response(rid))
        if turn.connection == 0 and turn.number == 0:
            await send_stale.wait()
            await turn.send(response("userA", "STALE"))
            stale_sent.set()
        return True

    upstream = await scripted(answer)
    proxy = await make_proxy(base_config(jwks[1], upstream.url))
    assert await (await proxy.client.get("/public/x/userA")).read() == body("userA")
    (parked,) = proxy.app.forwarder.pool.parked
    assert parked.transport is not None
    parked.transport.pause_reading()  # the loop will not read what comes: it stays queued
    send_stale.set()
    await asyncio.wait_for(stale_sent.wait(), 5)
    for _ in range(500):  # until the kernel has it (polling, bounded)
        if parked.has_unread_bytes():
            break
        await asyncio.sleep(0.01)
    assert parked.has_unread_bytes()
    resp = await proxy.client.get("/public/x/userB")
    assert (resp.status, await resp.read()) == (200, body("userB"))
    assert upstream.connections == 2
    assert await proxy.metric("jwtproxy_upstream_connections_closed_total",
                              reason="idle_bytes") == 1
