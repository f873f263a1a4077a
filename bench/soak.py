#!/usr/bin/env python3
"""Soak: the real jwtproxy CLI (one worker) in front of a recording upstream, driven by a
pool of concurrent clients sending a mix of valid tokens (several subjects), invalid and
missing tokens, and bodies from 0 B to 8 MiB (mostly small), with and without
Content-Length. Then every request is accounted for:

- every allowed request reached the upstream exactly once (matched by the X-Request-Id
  the client sets), its body byte-identical (sha256), with its own token's subject;
- every denied request never reached the upstream;
- every response is intact (the upstream sends its body's sha256 in a header) and is the
  answer to its own request (3% of upstream answers are followed by a second, stale
  response that a desynchronised pool would hand to the next request);
- the proxy's RSS is flat within 10% after warm-up, and no file descriptor leaks
  (idle upstream connections in the proxy's pool are allowed for).

    python3 bench/soak.py --duration 300 --concurrency 200

Everything listens on 127.0.0.1. The script starts the upstream (a thread), writes a
config to a temporary directory, starts `python -m jwtproxy run` and stops only that
process, by its pid. Exit status 0 when every check passes, 1 otherwise.
tests/test_soak.py runs the same driver for ~20 s.

With --revoke-every SECONDS, a fresh token joins the load each period and the previous
one is revoked (by jti or sub, alternately) through the configured store (the file store,
or --redis-url): every request with a revoked token sent after its entry reached the proxy
must be refused, and the propagation delay of each entry is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jwtproxy.config import RedisStore, Revocation  # noqa: E402
from jwtproxy.revocation import Entry, RevocationList  # noqa: E402
from jwtproxy.revocation_sync import open_store  # noqa: E402

ISSUER = "https://soak.test/"
AUDIENCE = "api://soak"
KID = "soak-1"
MIB = 1024 * 1024
CHUNK = 64 * 1024
BODY_POOL = 8 * MIB  # request bodies are slices of one random buffer
RESPONSE_POOL = MIB
RSS_GROWTH_LIMIT = 0.10
FD_SLACK = 2
PROPAGATION_BOUND = 30.0  # seconds: a revocation not applied by then is a failure


# -- keys and tokens ----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A signing key, its JWKS, and tokens: valid ones for several subjects, and bad ones."""

    key: RSAKey
    other: RSAKey  # same kid, different key: bad signatures
    subjects: tuple[str, ...]

    @classmethod
    def generate(cls, distinct: int = 8) -> Identity:
        return cls(RSAKey.generate_key(2048, parameters={"kid": KID}),
                   RSAKey.generate_key(2048, parameters={"kid": KID}),
                   tuple(f"user-{i}" for i in range(distinct)))

    def jwks(self) -> dict[str, Any]:
        public = dict(self.key.as_dict(private=False))
        public.update(kid=KID, use="sig", alg="RS256")
        return {"keys": [public]}

    def token(self, sub: str, key: RSAKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 3600,
                **claims}
        return jwt.encode({"alg": "RS256", "kid": KID, "typ": "JWT"}, body, key or self.key)

    def valid(self) -> list[tuple[str, str]]:
        return [(sub, self.token(sub)) for sub in self.subjects]

    def invalid(self) -> list[str]:
        now = int(time.time())
        return [
            self.token("late", exp=now - 600, iat=now - 4000),
            self.token("elsewhere", aud="api://other"),
            self.token("stranger", iss="https://evil.test/"),
            self.token("forger", key=self.other),
            self.token("early", nbf=now + 3600),
            "not.a.jwt",
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        ]


def proxy_config(upstream_url: str, revocation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The proxy under soak: a public route and a token-protected one, one worker."""
    return {**({"revocation": revocation} if revocation else {}),
        "server": {"workers": 1, "graceful_timeout": "5s"},
        "log": {"level": "warning", "format": "json"},
        "issuers": {"soak": {"issuer": ISSUER, "jwks_uri": f"{upstream_url}/jwks.json",
                             "audiences": [AUDIENCE], "algorithms": ["RS256"]}},
        "routes": [
            {"name": "public", "match": {"path_prefix": "/public"}, "upstream": upstream_url,
             "auth": "none"},
            {"name": "api", "match": {"path_prefix": "/api"}, "upstream": upstream_url,
             "forward": {"claims": {"sub": "X-Auth-Subject"}}},
        ],
    }


# -- the recording upstream ---------------------------------------------------------------


@dataclass
class Record:
    path: str
    digest: str
    size: int
    subject: str | None
    count: int = 1


class _Sent:
    """What aiohttp's server loop asks of a response the handler wrote itself."""

    keep_alive = True
    status = 200

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


_ALREADY_SENT: Any = _Sent()


class RecordingUpstream:
    """An aiohttp server on its own loop in a thread. Records sha256, size and
    X-Auth-Subject of every request body by X-Request-Id, and answers with a body whose
    sha256 it sends along. Also serves the JWKS."""

    def __init__(self, identity: Identity, seed: int = 1) -> None:
        self.jwks = identity.jwks()
        self.records: dict[str, Record] = {}
        self.anonymous = 0  # requests without an X-Request-Id
        self.pool = random.Random(seed).randbytes(RESPONSE_POOL)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: web.Server | None = None
        self._runner: web.ServerRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open_connections(self) -> int:
        """Connections open to this upstream (all of them come from the proxy)."""
        return len(self._server.connections) if self._server is not None else 0

    def __enter__(self) -> RecordingUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = web.Server(self.handle, auto_decompress=False, access_log=None)
        self._runner = web.ServerRunner(self._server)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/jwks.json":
            return web.json_response(self.jwks)
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        request_id = request.headers.get("X-Request-Id")
        subject = request.headers.get("X-Auth-Subject")
        if request_id is None:
            self.anonymous += 1
        elif request_id in self.records:
            self.records[request_id].count += 1
        else:
            self.records[request_id] = Record(request.path, digest.hexdigest(), size, subject)
        body = self.response_body(request_id or "")
        response = web.Response(body=body, headers={
            "X-Body-Sha256": digest.hexdigest(), "X-Body-Bytes": str(size),
            "X-Response-Sha256": hashlib.sha256(body).hexdigest(),
            "X-Seen-Subject": subject or "-"})
        if "/misbehave/" not in request.path or request.transport is None:
            return response
        # A misbehaving upstream: a second, complete response in the same write as the
        # real one; a pool that reused this connection would hand it to the next request.
        # (In the same write: bytes that arrive only after the same client's next request
        # went out cannot be told from its answer by any HTTP/1.1 proxy; docs/security.md.)
        stale = b"stale " + (request_id or "").encode()
        head = b"".join(b"%s: %s\r\n" % (name.encode(), value.encode())
                        for name, value in response.headers.items())
        request.transport.write(
            b"HTTP/1.1 200 OK\r\n%bContent-Length: %d\r\n\r\n%b" % (head, len(body), body)
            + b"HTTP/1.1 200 OK\r\nX-Request-Id: stale-%b\r\nContent-Length: %d\r\n\r\n%b"
            % ((request_id or "").encode(), len(stale), stale))
        return _ALREADY_SENT

    def response_body(self, request_id: str) -> bytes:
        """Mostly under 4 KiB, one in 40 between 64 and 512 KiB."""
        h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest())
        size = h % 4096 if h % 40 else 65536 + h % (448 * 1024)
        offset = (h >> 20) % (RESPONSE_POOL - size)
        return self.pool[offset:offset + size]


# -- the load -----------------------------------------------------------------------------


@dataclass
class Item:
    """One request as planned: what it sends and what must happen to it."""

    request_id: str
    path: str
    token: str | None
    subject: str | None  # the subject the upstream must see; None on the public route
    allowed: bool
    offset: int
    size: int
    chunked: bool
    digest: str
    doomed: str | None = None  # the jti of a token that gets revoked during the run


@dataclass
class Outcome:
    item: Item
    status: int | None
    problem: str | None
    seconds: float
    started: float = 0.0  # time.monotonic() when it was sent


class Doomed:
    """Tokens that join the load and are revoked one per period: `live` are still
    drawn by the plan, `reached[jti]` is when the proxy first refused one."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.tokens: list[tuple[str, str, str]] = []  # (sub, jti, token)
        self.reached: dict[str, float] = {}
        self.delays: list[float] = []
        self.probes: set[str] = set()  # request ids of the revoker's own probes
        self.never: list[str] = []  # revoked, yet still served after PROPAGATION_BOUND

    async def revoke_loop(self, url: str, settings: Revocation, every: float,
                          stop: asyncio.Event) -> None:
        """Each period: a new token joins the load, the previous one is revoked; then
        probe with it until the proxy refuses it (that moment is `reached`)."""
        store = open_store(settings, RevocationList(), None)
        self.mint()
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)
                sub, jti, token = self.tokens[-1]
                self.mint()
                kind = ("jti", "sub")[len(self.reached) % 2]
                added = time.monotonic()
                await store.add(Entry(kind, jti if kind == "jti" else sub, time.time() + 3600))
                while time.monotonic() - added < PROPAGATION_BOUND:
                    probe = f"probe-{jti}-{len(self.probes)}"
                    self.probes.add(probe)
                    async with session.get(url + "/api/probe", headers={
                            "Authorization": f"Bearer {token}", "X-Request-Id": probe}) as resp:
                        await resp.read()
                    if resp.status == 401:
                        break
                    await asyncio.sleep(0.01)  # probing interval
                else:
                    self.never.append(jti)
                    continue
                self.reached[jti] = time.monotonic()
                self.delays.append(self.reached[jti] - added)

    def mint(self) -> tuple[str, str, str]:
        n = len(self.tokens)
        sub, jti = f"doomed-{n}", f"doomed-jti-{n}"
        found = (sub, jti, self.identity.token(sub, jti=jti))
        self.tokens.append(found)
        return found


class Plan:
    """A seeded stream of requests: 65% valid token (several subjects), 15% invalid token,
    8% no token, 9% public, 3% public answered with an extra response after the real one;
    bodies mostly under 2 KiB, some up to 1 MiB, one request in
    `big_every` between 1 and 8 MiB; half with Content-Length, half chunked."""

    def __init__(self, identity: Identity, seed: int, big_every: int = 400,
                 doomed: Doomed | None = None) -> None:
        self.doomed = doomed
        self.rng = random.Random(seed)
        self.valid = identity.valid()
        self.invalid = identity.invalid()
        self.bodies = random.Random(seed + 1).randbytes(BODY_POOL)
        self.big_every = big_every
        self.count = 0
        self.phase = "warmup"

    def body_size(self) -> int:
        if self.count % self.big_every == 0:
            return self.rng.randint(MIB, BODY_POOL)
        roll = self.rng.random()
        if roll < 0.35:
            return 0
        if roll < 0.85:
            return self.rng.randint(1, 2048)
        if roll < 0.98:
            return self.rng.randint(2049, 64 * 1024)
        return self.rng.randint(64 * 1024, MIB)

    def next(self) -> Item:
        self.count += 1
        request_id = f"soak-{self.phase}-{self.count}-{self.rng.getrandbits(32):08x}"
        roll = self.rng.random()
        token: str | None = None
        subject: str | None = None
        doomed: str | None = None
        if self.doomed is not None and self.doomed.tokens and roll < 0.05:
            # a recent doomed token: one still good, or one revoked a moment ago
            subject, doomed, token = self.rng.choice(self.doomed.tokens[-3:])
            path, allowed = f"/api/doomed/{self.count}", True
        elif roll < 0.65:
            subject, token = self.rng.choice(self.valid)
            path, allowed = f"/api/orders/{self.count}", True
        elif roll < 0.80:
            token, path, allowed = self.rng.choice(self.invalid), f"/api/x/{self.count}", False
        elif roll < 0.88:
            path, allowed = f"/api/none/{self.count}", False
        elif roll < 0.97:
            path, allowed = f"/public/{self.count}", True
        else:  # answered with an extra response after the real one (see RecordingUpstream)
            path, allowed = f"/public/misbehave/{self.count}", True
        size = self.body_size()
        offset = self.rng.randrange(BODY_POOL - size + 1)
        digest = hashlib.sha256(memoryview(self.bodies)[offset:offset + size]).hexdigest()
        return Item(request_id, path, token, subject, allowed, offset, size,
                    self.rng.random() < 0.5, digest, doomed)

    def payload(self, item: Item) -> Any:
        view = memoryview(self.bodies)[item.offset:item.offset + item.size]
        if not item.chunked:
            return bytes(view) if item.size else None

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, item.size, CHUNK):
                yield bytes(view[start:start + CHUNK])

        return chunks()


async def send(session: aiohttp.ClientSession, url: str, plan: Plan, item: Item) -> Outcome:
    headers = {"X-Request-Id": item.request_id}
    if item.token is not None:
        headers["Authorization"] = f"Bearer {item.token}"
    method = "POST" if item.size or item.chunked else "GET"
    started, sent_at = time.perf_counter(), time.monotonic()
    try:
        async with session.request(method, url + item.path, data=plan.payload(item),
                                   headers=headers) as resp:
            body = await resp.read()
            problem = _check_response(item, resp.status, resp.headers, body)
            return Outcome(item, resp.status, problem, time.perf_counter() - started, sent_at)
    except (aiohttp.ClientError, TimeoutError) as err:
        return Outcome(item, None, f"client error {type(err).__name__}: {err}",
                       time.perf_counter() - started, sent_at)


def _check_response(item: Item, status: int, headers: Any, body: bytes) -> str | None:
    echoed = headers.get("X-Request-Id")
    if echoed is not None and echoed != item.request_id:  # another request's response
        return f"the response is for X-Request-Id {echoed!r}"
    if item.doomed is not None and status == 401:
        return None  # revoked by now (verify() checks it was not served after it reached)
    if not item.allowed:
        if status != 401:
            return f"status {status} for a request that must be denied"
        try:
            error = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return f"401 body is not the JSON error: {body[:80]!r}"
        return None if error in ("unauthorized", "invalid_token") else f"error {error!r}"
    if status != 200:
        return f"status {status}: {body[:120]!r}"
    if hashlib.sha256(body).hexdigest() != headers.get("X-Response-Sha256"):
        return f"response body damaged ({len(body)} bytes)"
    if headers.get("X-Body-Sha256") != item.digest:
        return "the upstream saw a different request body"
    if headers.get("X-Seen-Subject") != (item.subject or "-"):
        return f"the upstream saw subject {headers.get('X-Seen-Subject')!r}"
    return None


async def drive(
    url: str, plan: Plan, seconds: float, concurrency: int, phase: str
) -> list[Outcome]:
    """`concurrency` clients, each on its own keep-alive connection, until `seconds` pass."""
    plan.phase = phase
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     auto_decompress=False) as session:

        async def client() -> None:
            while time.monotonic() < deadline:
                outcomes.append(await send(session, url, plan, plan.next()))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcomes


# -- the proxy process --------------------------------------------------------------------


class ProcessStats:
    """RSS and open file descriptors of a process, from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


@dataclass
class Quiet:
    """The proxy at rest: RSS, fds, and how many of those fds are upstream connections."""

    rss: int
    fds: int
    pooled: int

    @property
    def own_fds(self) -> int:
        return self.fds - self.pooled


async def at_rest(stats: ProcessStats, upstream: RecordingUpstream) -> Quiet:
    """Once the clients have gone, wait (bounded) for the fd count to settle."""
    last = None
    for _ in range(60):
        now = (stats.fds(), upstream.open_connections())
        if now == last:
            break
        last = now
        await asyncio.sleep(0.05)  # polling interval while closed connections are reaped
    fds, pooled = last or (stats.fds(), upstream.open_connections())
    return Quiet(stats.rss(), fds, pooled)


@dataclass
class Report:
    outcomes: list[Outcome]
    warm: Quiet
    end: Quiet
    rss_samples: list[int]
    seconds: float
    concurrency: int
    problems: list[str] = field(default_factory=list)
    doomed: Doomed | None = None

    @property
    def rss_growth(self) -> float:
        return (self.end.rss - self.warm.rss) / self.warm.rss


async def soak(
    url: str, pid: int, upstream: RecordingUpstream, identity: Identity, *,
    seconds: float, warmup: float, concurrency: int, seed: int = 7, big_every: int = 400,
    revocation: Revocation | None = None, revoke_every: float = 1.0,
) -> Report:
    """Warm up, measure the proxy at rest, run the main phase while sampling RSS (and,
    with `revocation`, revoking a token each `revoke_every`), measure at rest again, then
    account for every request of both phases."""
    doomed = Doomed(identity) if revocation is not None else None
    plan = Plan(identity, seed, big_every, doomed)
    stats = ProcessStats(pid)
    outcomes = await drive(url, plan, warmup, concurrency, "warmup")
    warm = await at_rest(stats, upstream)
    samples: list[int] = []

    async def sample() -> None:
        while True:
            samples.append(stats.rss())
            await asyncio.sleep(0.5)  # sampling interval

    sampler = asyncio.create_task(sample())
    stop = asyncio.Event()
    revoker = (asyncio.create_task(doomed.revoke_loop(url, revocation, revoke_every, stop))
               if doomed is not None and revocation is not None else None)
    started = time.monotonic()
    try:
        outcomes += await drive(url, plan, seconds, concurrency, "main")
    finally:
        stop.set()
        if revoker is not None:
            await revoker
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    elapsed = time.monotonic() - started
    end = await at_rest(stats, upstream)
    report = Report(outcomes, warm, end, samples, elapsed, concurrency, doomed=doomed)
    report.problems = verify(report, upstream)
    return report


def verify(report: Report, upstream: RecordingUpstream) -> list[str]:
    problems: list[str] = []
    sent: set[str] = set()
    for outcome in report.outcomes:
        item = outcome.item
        sent.add(item.request_id)
        where = f"{item.request_id} {item.path} ({item.size} B, " \
                f"{'chunked' if item.chunked else 'length'})"
        if outcome.problem is not None:
            problems.append(f"{where}: {outcome.problem}")
        record = upstream.records.get(item.request_id)
        if item.doomed is not None and report.doomed is not None:
            reached = report.doomed.reached.get(item.doomed)
            if reached is not None and outcome.started >= reached and outcome.status != 401:
                problems.append(f"{where}: served {outcome.status} after its revocation "
                                "reached the proxy")
        if not item.allowed or (item.doomed is not None and outcome.status == 401):
            if record is not None:
                problems.append(f"{where}: denied, yet the upstream received it")
            continue
        if record is None:
            problems.append(f"{where}: allowed, never reached the upstream")
        elif record.count != 1:
            problems.append(f"{where}: reached the upstream {record.count} times")
        elif (record.digest, record.size) != (item.digest, item.size):
            problems.append(f"{where}: the upstream got {record.size} different bytes")
        elif record.subject != item.subject:
            problems.append(f"{where}: the upstream saw subject {record.subject!r}")
    if report.doomed is not None and report.doomed.never:
        problems.append(f"revocations never applied: {report.doomed.never}")
    unknown = set(upstream.records) - sent - (report.doomed.probes if report.doomed else set())
    if unknown:
        problems.append(f"{len(unknown)} requests the clients never sent reached the upstream")
    if upstream.anonymous:
        problems.append(f"{upstream.anonymous} upstream requests had no X-Request-Id")
    if report.rss_growth > RSS_GROWTH_LIMIT:
        problems.append(f"RSS grew {report.rss_growth:.1%} after warm-up "
                        f"({report.warm.rss // MIB} -> {report.end.rss // MIB} MiB)")
    if report.end.own_fds > report.warm.own_fds + FD_SLACK:
        problems.append(f"file descriptors leak: {report.warm.own_fds} -> {report.end.own_fds}"
                        f" (not counting {report.end.pooled} pooled upstream connections)")
    return problems


def summary(report: Report) -> str:
    main = [o for o in report.outcomes if "-main-" in o.item.request_id]
    statuses = Counter(str(o.status) for o in report.outcomes)
    kinds = Counter("allowed" if o.item.allowed else "denied" for o in report.outcomes)
    latencies = sorted(o.seconds for o in main) or [0.0]
    sent = sum(o.item.size for o in report.outcomes)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000

    lines = [
        f"requests      {len(report.outcomes)} ({kinds['allowed']} allowed, "
        f"{kinds['denied']} denied), {len(main) / report.seconds:.0f}/s in the main phase "
        f"with {report.concurrency} clients",
        f"statuses      {dict(sorted(statuses.items()))}",
        f"bodies sent   {sent / MIB:.1f} MiB, largest "
        f"{max((o.item.size for o in report.outcomes), default=0) / MIB:.1f} MiB",
        f"latency ms    p50 {pct(0.5):.1f}  p99 {pct(0.99):.1f}  max {latencies[-1] * 1000:.1f}",
        f"RSS MiB       after warm-up {report.warm.rss / MIB:.1f}, at the end "
        f"{report.end.rss / MIB:.1f} ({report.rss_growth:+.1%}), peak "
        f"{max(report.rss_samples, default=0) / MIB:.1f}",
        f"fds           after warm-up {report.warm.fds} ({report.warm.pooled} pooled), "
        f"at the end {report.end.fds} ({report.end.pooled} pooled)",
        f"problems      {len(report.problems)}",
    ]
    if report.doomed is not None and report.doomed.delays:
        delays = sorted(report.doomed.delays)
        refused = sum(1 for o in report.outcomes if o.item.doomed and o.status == 401)
        lines.insert(-1, f"revocations   {len(delays)} added while it ran, {refused} requests "
                     f"with a revoked token refused; propagation ms p50 "
                     f"{delays[len(delays) // 2] * 1000:.0f} max {delays[-1] * 1000:.0f}")
    lines.extend(f"  {problem}" for problem in report.problems[:30])
    return "\n".join(lines)


# -- the script ---------------------------------------------------------------------------


@contextlib.contextmanager
def run_proxy(config: dict[str, Any], port: int, admin_port: int) -> Iterator[tuple[int, str]]:
    """Start `python -m jwtproxy run`; yield its pid and URL once /readyz answers 200."""
    config = {**config, "server": {**config["server"], "listen": f"127.0.0.1:{port}"},
              "admin": {"listen": f"127.0.0.1:{admin_port}"}}
    with tempfile.TemporaryDirectory(prefix="jwtproxy-soak-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = (Path(tmp) / "proxy.log").open("wb")
        process = subprocess.Popen([sys.executable, "-m", "jwtproxy", "run", "-c", str(path)],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"jwtproxy exited {process.returncode}")
                with contextlib.suppress(OSError):
                    url = f"http://127.0.0.1:{admin_port}/readyz"
                    with urllib.request.urlopen(url, timeout=2) as resp:
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError("jwtproxy not ready within 20 s")
                time.sleep(0.05)  # polling interval
            yield process.pid, f"http://127.0.0.1:{port}"
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()
            errors = [line for line in (Path(tmp) / "proxy.log").read_text().splitlines()
                      if '"level":"error"' in line or "Traceback" in line]
            if errors:
                print(f"proxy log: {len(errors)} error lines, first: {errors[0][:300]}")


def revocation_data(settings: Revocation | None) -> dict[str, Any] | None:
    """The config's `revocation:` section for these settings."""
    if settings is None:
        return None
    if settings.redis is not None:
        return {"redis": {"url": settings.redis.url, "key_prefix": settings.redis.key_prefix},
                "sync_interval": f"{settings.sync_interval}s"}
    return {"file": settings.file}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of the main phase (default 60)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of warm-up (default: a fifth of --duration, 3-30 s)")
    parser.add_argument("--concurrency", type=int, default=128,
                        help="concurrent clients, each on its own connection (default 128)")
    parser.add_argument("--big-every", type=int, default=400,
                        help="one request in N carries a 1-8 MiB body (default 400)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--revoke-every", type=float, default=None, metavar="SECONDS",
                        help="revoke a token of the load each period (file store by default)")
    parser.add_argument("--redis-url", help="with --revoke-every: a Redis store instead")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else min(30.0, max(3.0, args.duration / 5))
    identity = Identity.generate()
    with tempfile.TemporaryDirectory(prefix="jwtproxy-soak-list-") as lists:
        settings = None
        if args.revoke_every is not None:
            settings = (Revocation(redis=RedisStore(args.redis_url, "soak:"), sync_interval=5.0)
                        if args.redis_url else Revocation(file=f"{lists}/revoked.yaml"))
        with RecordingUpstream(identity) as upstream, run_proxy(
                proxy_config(upstream.url, revocation_data(settings)), _free_port(),
                _free_port()) as (pid, url):
            report = asyncio.run(soak(url, pid, upstream, identity, seconds=args.duration,
                                      warmup=warmup, concurrency=args.concurrency,
                                      seed=args.seed, big_every=args.big_every,
                                      revocation=settings,
                                      revoke_every=args.revoke_every or 1.0))
    print(summary(report))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
