"""The proxy door: the State built from each config version, and one request through it
(RequestView, the gate's Decision, the upstream or the error answer, metrics, access log)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import HttpVersion11, web
from multidict import CIMultiDictProxy

from .answers import CLOSE_AFTER, error_bytes, error_response
from .config import NO_UPSTREAM, Config
from .dpop import MemoryReplayCache, ProofChecker, ReplayCache
from .errors import (
    DpopError,
    HeaderSectionTooLarge,
    JwtProxyError,
    NotFound,
)
from .extractor import token_protocol_prefixes
from .forwarder import Forwarder, Sent, UpstreamTiming
from .gate import Challenge, Decision, Gate, RequestView
from .headers import CredentialStrip, HeaderPlan, header_plans
from .jwks import KeyStore
from .lean import LeanRequest, aiohttp_request
from .log import AccessLog
from .metrics import NO_ISSUER, NO_ROUTE, Metrics
from .revocation import Lifetime, token_marks
from .revocation_sync import Revocations
from .verifier import Verifier

if TYPE_CHECKING:
    from .dpop_replay import RedisReplayCache

log = logging.getLogger("jwtproxy.app")
access_log = AccessLog()

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
MAX_HEADER_FIELD: Final = 64 * 1024
METRICS_FLUSH_INTERVAL: Final = 1.0  # seconds: how stale another worker's scrape may be
MAX_HEADER_SECTION: Final = 96 * 1024
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
REQUEST_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# W3C Trace Context §3.2: version-traceid-parentid-flags, lowercase hex; a later version
# may append fields after a "-" (§4.3), version ff is invalid.
TRACEPARENT: Final = re.compile(
    r"(?!ff)([0-9a-f]{2})-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-.*)?")


@dataclass(frozen=True, slots=True)
class State:
    """Everything built from one config version; requests keep the one they started with."""

    config: Config
    gate: Gate
    stores: Mapping[str, KeyStore]
    head_limit: int
    credentials: CredentialStrip  # for routes with `forward.authorization: strip`
    plans: Mapping[str, HeaderPlan]  # the proxy door's header rewrite, per route


class ProxyApp:
    """Holds the current State and the shared pools; swaps State on reload."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.metrics = metrics
        self.forwarder = Forwarder(metrics.upstream_connection_closed)
        self.key_session: aiohttp.ClientSession | None = None
        self.state: State | None = None
        self.initial_config = config
        self.request_ids = RequestIds()
        self.draining = False  # set on SIGTERM: /readyz answers 503 so traffic moves away
        # one per process, kept across reloads: a proof seen before a reload stays seen
        self.replay = MemoryReplayCache()
        self.shared_replay: RedisReplayCache | None = None  # with revocation.redis
        self.revocations = Revocations(metrics)
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.key_session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), cookie_jar=aiohttp.DummyCookieJar())
        await self.forwarder.start()
        await self.revocations.configure(self.initial_config.revocation)
        self.state = await self.build_state(self.initial_config, {})
        self._use_upstreams(self.initial_config)
        self._flusher = asyncio.create_task(self._flush_metrics())

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH_INTERVAL)
            self.publish_key_counts()
            self.metrics.flush()

    def publish_key_counts(self) -> None:
        """The keys gauge follows usability (it drops to 0 past `stale_if_error`), which
        changes with time alone, not only on a fetch."""
        if self.state is not None:
            for name, store in self.state.stores.items():
                self.metrics.jwks_keys.labels(name).set(store.usable_key_count)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        self.metrics.flush()
        await self.revocations.close()
        if self.shared_replay is not None:
            await self.shared_replay.close()
        if self.state is not None:
            await asyncio.gather(*(store.close() for store in self.state.stores.values()))
        await self.forwarder.close()
        if self.key_session is not None:
            await self.key_session.close()

    async def build_state(self, config: Config, reuse: Mapping[str, KeyStore]) -> State:
        """Key stores of unchanged issuers are reused; new ones load before the swap."""
        stores: dict[str, KeyStore] = {}
        fresh: list[KeyStore] = []
        for name, issuer in config.issuers.items():
            old = reuse.get(name)
            if old is not None and old.issuer == issuer:
                stores[name] = old
            else:
                stores[name] = KeyStore(issuer, self.key_session, self.metrics)
                fresh.append(stores[name])
        await asyncio.gather(*(store.start() for store in fresh))
        verifier = Verifier(config.issuers, stores, proofs=ProofChecker(
            await self._replay_cache(config), max_proof_bytes=config.server.max_token_bytes),
            revocations=self.revocations.list)
        for issuer in config.issuers.values():
            if not issuer.audiences:
                log.warning("issuer_without_audiences", extra={"issuer": issuer.name})
        return State(config, Gate(config, verifier), stores, header_section_limit(config),
                     CredentialStrip(config.tokens), header_plans(config))

    async def _replay_cache(self, config: Config) -> ReplayCache:
        """Where proof jtis are remembered: the revocation list's Redis when there is one
        (every replica sees every proof), else this process's memory."""
        settings = config.revocation.redis if config.revocation is not None else None
        if settings is None:
            return self.replay
        if self.shared_replay is None or self.shared_replay.settings != settings:
            from .dpop_replay import RedisReplayCache  # only with Redis: the client is ~4 MB

            old, self.shared_replay = self.shared_replay, RedisReplayCache(settings, self.replay)
            if old is not None:
                await old.close()
        return self.shared_replay

    async def reload(self, config: Config) -> None:
        assert self.state is not None
        old = self.state
        await self.revocations.configure(config.revocation)  # SIGHUP re-reads the file
        self.state = await self.build_state(config, old.stores)
        self._use_upstreams(config)
        kept = set(map(id, self.state.stores.values()))
        await asyncio.gather(*(store.close() for store in old.stores.values()
                               if id(store) not in kept))

    def _use_upstreams(self, config: Config) -> None:
        self.forwarder.pool.configure(
            config.server.upstream_idle_timeout, config.server.upstream_max_idle)
        self.forwarder.retain(r for r in config.routes if r.upstream != NO_UPSTREAM)

    def missing_keys(self) -> list[dict[str, str]]:
        """Issuers used by a route that have no usable keys (for /readyz)."""
        assert self.state is not None
        used = {name for route in self.state.config.routes if route.auth
                for name in route.auth.issuers}
        return [
            {"issuer": name, "error": store.last_error or "keys not loaded yet"}
            for name, store in self.state.stores.items()
            if name in used and not store.ready
        ]

    async def handle(self, request: web.BaseRequest | LeanRequest) -> web.StreamResponse | Sent:
        started = time.perf_counter()
        state = self.state
        assert state is not None
        raw_path, sep, raw_query = request.raw_path.partition("?")
        request_id = request.headers.get("X-Request-Id", "")
        if not request_id or not REQUEST_ID_PATTERN.fullmatch(request_id):
            request_id = self.request_ids()
        if isinstance(request, LeanRequest):  # no body, Expect or Upgrade (lean.takes)
            lean, peer = True, request.peer  # read once per connection
        else:
            lean, peer = False, peer_address(request)
        # the Host header as sent; no Host is "" (aiohttp's `request.host` would resolve
        # this machine's FQDN instead: a blocking DNS lookup per request, and a host-bound
        # route matched for a request that names no host)
        view = RequestView(request.method, request.headers.get("Host", ""), raw_path,
                           raw_query, request.headers, request.scheme, peer)
        timing = UpstreamTiming()
        decision: Decision | None = None
        refusal: JwtProxyError | None = None
        response: web.StreamResponse | Sent | None = None
        try:
            if head_size(request) > state.head_limit:
                raise HeaderSectionTooLarge("request header section too large")
            decision = await state.gate.decide(view)
            if decision.route is not None and decision.route.route.upstream == NO_UPSTREAM:
                # a route for the other doors only: this door has no such route
                decision = Decision(None, NotFound("no route matches"))
            record_auth(self.metrics, decision)
            if decision.error is not None:
                refusal = decision.error
            elif decision.document is not None:
                response = web.json_response(  # RFC 9728 §3.2; public, so any origin
                    decision.document, headers={"Access-Control-Allow-Origin": "*"})
            else:
                assert decision.route is not None
                plan = state.plans[decision.route.route.name]
                strip = (state.credentials
                         if decision.route.route.forward.authorization == "strip" else None)
                if strip is not None:
                    raw_query = strip.strip_query(raw_query)
                    sep = sep if raw_query else ""
                path_qs = decision.upstream_path + sep + raw_query
                if (not lean and request.version >= HttpVersion11
                        and request.headers.get("Expect", "").lower() == "100-continue"):
                    # RFC 9110 §10.1.1: the body is wanted now that the request passed
                    # (an HTTP/1.0 client gets no interim response)
                    await request.writer.write(CONTINUE)
                if not lean and _is_websocket(request):
                    headers = plan.request_headers(
                        request.headers, decision.claims, peer, request.scheme, request_id)
                    if strip is not None:
                        strip.strip_headers(headers)
                    response = await self.forwarder.websocket(
                        aiohttp_request(request), decision.route.route, path_qs, headers,
                        self._lifetime(state, decision), token_protocol_prefixes(
                            state.config.tokens))
                else:
                    claims, scheme = decision.claims, request.scheme
                    response = await self.forwarder.forward(
                        request, decision.route.route,
                        lambda authority, chunked: plan.request_head(
                            request.method, path_qs, request.raw_headers, claims, peer, scheme,
                            request_id, authority, chunked, strip),
                        request_id, timing)
        except JwtProxyError as err:
            refusal = err
            skip_lingering = getattr(request.protocol, "skip_lingering", None)
            if err.status in CLOSE_AFTER and skip_lingering is not None:
                skip_lingering()  # server.JsonRefusals: close right after the answer
        if refusal is not None:
            status = refusal.status
        else:
            assert response is not None
            status = response.status
        route_name = decision.route.route.name if decision and decision.route else NO_ROUTE
        elapsed = time.perf_counter() - started
        self.metrics.observe_request(route_name, status, elapsed, timing.seconds)
        if access_log.enabled():
            access_log.write(_access_fields(
                request, route_name, status, elapsed, timing, decision, request_id))
        if refusal is not None:
            offer = (decision.challenge
                     if decision is not None and refusal is decision.error else None)
            return await _refuse(request, refusal, offer, request_id)
        assert response is not None
        if not response.prepared:  # an aiohttp response (Sent is written already)
            assert isinstance(response, web.StreamResponse)
            response.headers["X-Request-Id"] = request_id
        return response

    def _lifetime(self, state: State, decision: Decision) -> Lifetime | None:
        """What ends a WebSocket opened with this token (None without one)."""
        if decision.claims is None or decision.issuer is None:
            return None
        leeway = state.config.issuers[decision.issuer].leeway
        return Lifetime(float(decision.claims["exp"]) + leeway, token_marks(decision.claims),
                        self.revocations.list)


async def _refuse(
    request: web.BaseRequest | LeanRequest, err: JwtProxyError, offer: Challenge | None,
    request_id: str,
) -> web.StreamResponse | Sent:
    """The error answer, written in one piece to an HTTP/1.1 client (~20 µs less than an
    aiohttp Response on the lean path, which would need a BaseRequest built for it)."""
    if request.version != HttpVersion11:
        response = error_response(err, offer)
        response.headers["X-Request-Id"] = request_id
        return response
    keep_alive = request.keep_alive and err.status not in CLOSE_AFTER
    try:
        await request.writer.write(error_bytes(
            err, offer, request_id, keep_alive, request.method == "HEAD"))
    except ConnectionError:
        keep_alive = False  # the client is gone: nothing to answer
    return Sent(err.status, keep_alive)


class RequestIds:
    """Unique ids without a random draw per request: a random 16-hex-digit process
    prefix and a counter (32 hex digits in all, like a uuid4 hex)."""

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex[:16]
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


def record_auth(metrics: Metrics, decision: Decision) -> None:
    """A decision that authenticated (or tried to), in `jwtproxy_auth` and the cache tally."""
    if decision.auth_reason is not None and decision.route is not None:
        metrics.observe_auth(decision.route.route.name, decision.issuer or NO_ISSUER,
                             decision.auth_denied, decision.auth_reason, decision.cache_hit)


def head_size(request: web.BaseRequest | LeanRequest) -> int:
    """The request head's size, as `header_section_limit` bounds it."""
    raw = request.raw_headers
    return sum(map(len, itertools.chain.from_iterable(raw))) + 4 * len(raw)


def _is_websocket(request: web.BaseRequest | LeanRequest) -> bool:
    return (request.method == "GET"
            and request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("Connection", "").lower())


def peer_address(request: web.BaseRequest) -> str | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else None


def trace_id(headers: CIMultiDictProxy[str]) -> str | None:
    """The trace id of a request's one valid W3C `traceparent`, for its access-log line."""
    values = headers.getall("traceparent", ())
    if len(values) != 1:
        return None
    trace = TRACEPARENT.fullmatch(values[0])
    if trace is None or (trace[1] == "00" and trace[3] is not None):
        return None
    return trace[2]


def _access_fields(
    request: web.BaseRequest | LeanRequest, route: str, status: int, elapsed: float,
    timing: UpstreamTiming, decision: Decision | None, request_id: str,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "route": route, "method": request.method, "path": request.path, "status": status,
        "duration_ms": round(elapsed * 1000, 3), "request_id": request_id,
    }
    if timing.seconds is not None:
        fields["upstream_ms"] = round(timing.seconds * 1000, 3)
    fields.update(decision_fields(request.headers, decision))
    return fields


def decision_fields(
    headers: CIMultiDictProxy[str], decision: Decision | None
) -> dict[str, Any]:
    """What every door's access line says of a decision: the trace id, the issuer, the auth
    reason (and DPoP check), `sub` and `jti` (never the token)."""
    fields: dict[str, Any] = {}
    trace = trace_id(headers)
    if trace is not None:
        fields["trace_id"] = trace
    if decision is not None and decision.auth_reason is not None:
        fields["issuer"] = decision.issuer
        fields["auth"] = decision.auth_reason
        if isinstance(decision.error, DpopError):
            fields["dpop"] = decision.error.check
        if decision.claims is not None:
            for claim in ("sub", "jti"):
                if isinstance(decision.claims.get(claim), str):
                    fields[claim] = decision.claims[claim][:128]
    return fields


def header_section_limit(config: Config) -> int:
    """The whole request head (aiohttp bounds each field and their count, not the sum)."""
    return max(MAX_HEADER_SECTION, config.server.max_token_bytes + MAX_HEADER_FIELD)
