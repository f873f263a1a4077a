"""The metric catalog of the product contract (shared/DESIGN.md, docs/operations.md) and the
Grafana dashboard's queries: what tests/test_deploy.py checks by parsing and
tests/test_prometheus.py checks against a real Prometheus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
DASHBOARD: Final = ROOT / "deploy" / "grafana" / "jwtproxy.json"

# name -> label names: DESIGN's catalog and what docs/operations.md adds to it
CATALOG: Final[dict[str, frozenset[str]]] = {
    "jwtproxy_requests_total": frozenset({"route", "code"}),
    "jwtproxy_request_duration_seconds": frozenset({"route"}),
    "jwtproxy_upstream_duration_seconds": frozenset({"route"}),
    "jwtproxy_auth_total": frozenset({"route", "issuer", "result", "reason"}),
    "jwtproxy_jwks_refresh_total": frozenset({"issuer", "result"}),
    "jwtproxy_jwks_keys": frozenset({"issuer"}),
    "jwtproxy_jwks_last_success_timestamp_seconds": frozenset({"issuer"}),
    "jwtproxy_upstream_connections_closed_total": frozenset({"reason"}),
    "jwtproxy_token_cache_total": frozenset({"result"}),
    "jwtproxy_config_reloads_total": frozenset({"result"}),
    "jwtproxy_revocation_sync_total": frozenset({"result"}),
    "jwtproxy_revocations": frozenset({"kind"}),
    "jwtproxy_build_info": frozenset({"version"}),
}
HISTOGRAMS: Final = frozenset(
    {"jwtproxy_request_duration_seconds", "jwtproxy_upstream_duration_seconds"}
)
# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS: Final = frozenset({"job", "instance", "namespace", "pod", "container"})


def _exposed_series() -> dict[str, str]:
    """Every series name /metrics exposes -> its catalog metric.

    A histogram is exposed only as `_bucket`, `_count` and `_sum`; counters are named with
    their `_total` suffix in the catalog already, so `x_total_total` or a bare histogram
    name is not a series.
    """
    series: dict[str, str] = {}
    for name in CATALOG:
        if name in HISTOGRAMS:
            series.update({f"{name}{suffix}": name for suffix in ("_bucket", "_count", "_sum")})
        else:
            series[name] = name
    return series


SERIES: Final = _exposed_series()


def series_labels(series: str) -> frozenset[str]:
    """The labels jwtproxy itself puts on one exposed series (`le` on histogram buckets)."""
    labels = CATALOG[SERIES[series]]
    return labels | {"le"} if series.endswith("_bucket") else labels


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL string: panel targets and templating variable queries."""
    queries = [
        target["expr"]
        for panel in panels(board["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        queries.append(query["query"] if isinstance(query, dict) else query)
    return queries
