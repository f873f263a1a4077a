"""W3C Trace Context: `traceparent`/`tracestate` reach the upstream untouched, and the access
log line carries `trace_id` when the request's `traceparent` is valid, so logs join traces."""

from __future__ import annotations

import logging
from typing import Final

import pytest

from tests.conftest import AUDIENCE, ISSUER, Proxy
from tests.servers import EchoUpstream
from tests.tokens import KeyRing, mint

TRACE: Final = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT: Final = "00f067aa0ba902b7"
VALID: Final = f"00-{TRACE}-{PARENT}-01"


async def _get(proxy: Proxy, path: str, headers: list[tuple[str, str]]) -> None:
    resp = await proxy.client.get(path, headers=headers)
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("path", ["/public/x", "/orders/1"])
async def test_trace_headers_reach_the_upstream_untouched(
    proxy: Proxy, keys: KeyRing, upstream: tuple[EchoUpstream, str], path: str
) -> None:
    token = mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read"})
    sent = [
        ("traceparent", VALID),
        ("tracestate", "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"),
        ("tracestate", "vendor=x"),  # a second field line: order and split kept
    ]
    await _get(proxy, path, [("Authorization", f"Bearer {token}"), *sent])
    got = upstream[0].received[-1]
    assert got.header_all("traceparent") == [VALID]
    assert got.header_all("tracestate") == ["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE",
                                            "vendor=x"]


async def test_an_invalid_traceparent_is_passed_on_as_sent(
    proxy: Proxy, upstream: tuple[EchoUpstream, str]
) -> None:
    # Not ours to repair or drop: the upstream's tracer decides (W3C Trace Context §4.3).
    await _get(proxy, "/public/x", [("traceparent", "not-a-trace")])
    assert upstream[0].received[-1].header_all("traceparent") == ["not-a-trace"]


@pytest.mark.parametrize(
    ("traceparents", "trace_id"),
    [
        ([VALID], TRACE),
        ([f"00-{TRACE}-{PARENT}-00"], TRACE),                  # not sampled: still joins
        ([f"cc-{TRACE}-{PARENT}-01-what-the-future-holds"], TRACE),  # a later version
        ([f"00-{TRACE}-{PARENT}-01-extra"], None),             # version 00 has no more fields
        ([f"ff-{TRACE}-{PARENT}-01"], None),                   # version ff is invalid
        ([f"00-{'0' * 32}-{PARENT}-01"], None),                # all-zero trace id
        ([f"00-{TRACE}-{'0' * 16}-01"], None),                 # all-zero parent id
        ([f"00-{TRACE.upper()}-{PARENT}-01"], None),           # uppercase hex
        ([f"00-{TRACE[:-1]}-{PARENT}-01"], None),              # short trace id
        ([VALID, VALID], None),                                # two headers: ambiguous
        ([], None),
    ],
)
async def test_access_log_carries_the_trace_id_of_a_valid_traceparent(
    proxy: Proxy, caplog: pytest.LogCaptureFixture, traceparents: list[str],
    trace_id: str | None,
) -> None:
    caplog.set_level(logging.INFO, logger="jwtproxy.access")
    await _get(proxy, "/public/x", [("traceparent", value) for value in traceparents])
    [line] = [vars(r) for r in caplog.records if r.name == "jwtproxy.access"]
    assert line.get("trace_id") == trace_id
