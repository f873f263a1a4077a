"""The Prometheus metric catalog, created once per registry with fixed label names.

Label values come only from config names (route, issuer) and fixed enums (result,
reason, code): never from paths, subjects or tokens.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from . import __version__
from .config import MULTIPROC_ENV

LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)
NO_ROUTE: Final = "(none)"
NO_ISSUER: Final = "(none)"
# Why the proxy closed an upstream connection; the first three mean the upstream sent bytes
# it must not (the connection is poisoned, never reused).
UPSTREAM_CLOSE_REASONS: Final = (
    "extra_bytes", "idle_bytes", "bad_response", "aborted", "idle_timeout", "pool_full",
    "unused")


@dataclass(slots=True)
class _Tally:
    counts: list[int]  # per bucket of LATENCY_BUCKETS, then +Inf
    total: float


def _add_to_histogram(child: Any, tally: _Tally) -> None:
    """Add many observations at once. prometheus-client has no public call for it; its
    bucket and sum values are the ones `observe` increments (tests hold this to it)."""
    child._sum.inc(tally.total)
    for bucket, count in zip(child._buckets, tally.counts, strict=True):
        if count:
            bucket.inc(count)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._requests: dict[tuple[str, int], int] = {}
        self._forward_auths: dict[tuple[str, int], int] = {}
        self._auths: dict[tuple[str, str, str, str], int] = {}
        self._cache_lookups: dict[str, int] = {}
        self._durations: dict[str, _Tally] = {}
        self._upstream_durations: dict[str, _Tally] = {}
        self._upstream_closes: dict[str, int] = {}
        # every worker holds the same keys: the merged figure is one worker's, not a sum
        live: Final = "livemax" if multiprocess_enabled() else "all"
        reg = self.registry
        self.requests = Counter("jwtproxy_requests", "Requests answered, by route and status",
                                ["route", "code"], registry=reg)
        self.forward_auth_requests = Counter(
            "jwtproxy_forward_auth_requests", "Forward-auth subrequests answered, by route and "
            "status", ["route", "code"], registry=reg)
        self.request_duration = Histogram(
            "jwtproxy_request_duration_seconds", "Whole request time, by route", ["route"],
            buckets=LATENCY_BUCKETS, registry=reg)
        self.upstream_duration = Histogram(
            "jwtproxy_upstream_duration_seconds", "Time to the upstream's response headers",
            ["route"], buckets=LATENCY_BUCKETS, registry=reg)
        self.auth = Counter("jwtproxy_auth", "Authentication decisions",
                            ["route", "issuer", "result", "reason"], registry=reg)
        self.jwks_refresh = Counter("jwtproxy_jwks_refresh", "JWKS fetches by result",
                                    ["issuer", "result"], registry=reg)
        self.jwks_keys = Gauge("jwtproxy_jwks_keys", "Keys held per issuer", ["issuer"],
                               registry=reg, multiprocess_mode=live)
        self.jwks_last_success = Gauge(
            "jwtproxy_jwks_last_success_timestamp_seconds", "Time of the last good JWKS fetch",
            ["issuer"], registry=reg, multiprocess_mode="max")
        self.upstream_closed = Counter(
            "jwtproxy_upstream_connections_closed",
            "Upstream connections the proxy closed, by why (extra_bytes, idle_bytes and "
            "bad_response: the upstream sent what it must not)", ["reason"], registry=reg)
        self.token_cache = Counter("jwtproxy_token_cache", "Verified-token cache lookups",
                                   ["result"], registry=reg)
        self.config_reloads = Counter("jwtproxy_config_reloads", "Config reloads by result",
                                      ["result"], registry=reg)
        self.revocation_sync = Counter(
            "jwtproxy_revocation_sync", "Reads of the revocation store by result", ["result"],
            registry=reg)
        self.revocations = Gauge("jwtproxy_revocations", "Revocation entries held, by kind",
                                 ["kind"], registry=reg, multiprocess_mode=live)
        self.build_info = Gauge("jwtproxy_build_info", "Build information", ["version"],
                                registry=reg, multiprocess_mode="max")
        self.build_info.labels(__version__).set(1)
        for result in ("hit", "miss"):
            self.token_cache.labels(result)
        for result in ("ok", "error"):
            self.config_reloads.labels(result)
            self.revocation_sync.labels(result)
        for reason in UPSTREAM_CLOSE_REASONS:
            self.upstream_closed.labels(reason)
        for kind in ("jti", "sub", "origin_jti", "client_id"):
            self.revocations.labels(kind)

    def observe_request(
        self, route: str, code: int, seconds: float, upstream_seconds: float | None
    ) -> None:
        """Per request: plain-Python tallies, pushed into prometheus-client by `flush`
        (its per-update locking was ~15% of a proxied request's CPU)."""
        key = (route, code)
        self._requests[key] = self._requests.get(key, 0) + 1
        tally = self._durations.get(route) or self._new_tally(self._durations, route)
        tally.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        tally.total += seconds
        if upstream_seconds is not None:
            tally = (self._upstream_durations.get(route)
                     or self._new_tally(self._upstream_durations, route))
            tally.counts[bisect_left(LATENCY_BUCKETS, upstream_seconds)] += 1
            tally.total += upstream_seconds

    def observe_forward_auth(self, route: str, code: int) -> None:
        key = (route, code)
        self._forward_auths[key] = self._forward_auths.get(key, 0) + 1

    def observe_auth(
        self, route: str, issuer: str, denied: bool, reason: str, cache_hit: bool | None
    ) -> None:
        key = (route, issuer, "denied" if denied else "allowed", reason)
        self._auths[key] = self._auths.get(key, 0) + 1
        if cache_hit is not None:
            result = "hit" if cache_hit else "miss"
            self._cache_lookups[result] = self._cache_lookups.get(result, 0) + 1

    def upstream_connection_closed(self, reason: str) -> None:
        self._upstream_closes[reason] = self._upstream_closes.get(reason, 0) + 1

    @staticmethod
    def _new_tally(tallies: dict[str, _Tally], route: str) -> _Tally:
        tally = tallies[route] = _Tally([0] * (len(LATENCY_BUCKETS) + 1), 0.0)
        return tally

    def flush(self) -> None:
        """Move the tallies into the prometheus-client metrics (before each scrape, and
        periodically so that other workers' scrapes see this one's figures)."""
        requests, self._requests = self._requests, {}
        for (route, code), count in requests.items():
            self._child(self.requests, route, str(code)).inc(count)
        forward_auths, self._forward_auths = self._forward_auths, {}
        for (route, code), count in forward_auths.items():
            self._child(self.forward_auth_requests, route, str(code)).inc(count)
        auths, self._auths = self._auths, {}
        for labels, count in auths.items():
            self._child(self.auth, *labels).inc(count)
        closes, self._upstream_closes = self._upstream_closes, {}
        for reason, count in closes.items():
            self._child(self.upstream_closed, reason).inc(count)
        lookups, self._cache_lookups = self._cache_lookups, {}
        for result, count in lookups.items():
            self._child(self.token_cache, result).inc(count)
        for metric, tallies in ((self.request_duration, self._durations),
                                (self.upstream_duration, self._upstream_durations)):
            for route, tally in tallies.items():
                _add_to_histogram(self._child(metric, route), tally)
            tallies.clear()

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised: label lookups cost more than the increment.
        Label values are config names and fixed enums, so this stays small."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def jwks_refreshed(self, issuer: str, ok: bool, key_count: int | None) -> None:
        self.jwks_refresh.labels(issuer, "ok" if ok else "error").inc()
        if ok:
            self.jwks_last_success.labels(issuer).set(time.time())
            if key_count is not None:
                self.jwks_keys.labels(issuer).set(key_count)

    def exposition(self) -> bytes:
        """The text format; merges all workers' files in multiprocess mode."""
        self.flush()
        if multiprocess_enabled():
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)
