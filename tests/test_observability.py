"""After a scripted mix of requests: every metric series and its count, and one access
log line per request with the documented fields and never a token."""

from __future__ import annotations

import logging
import time

import pytest

from jwtproxy import __version__
from tests.conftest import AUDIENCE, ISSUER, Proxy
from tests.servers import EchoUpstream
from tests.tokens import KeyRing, mint


async def test_metrics_and_access_log_after_a_scripted_mix(
    proxy: Proxy, keys: KeyRing, upstream: tuple[EchoUpstream, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="jwtproxy.access")
    now = int(time.time())
    good = mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read",
                           "jti": "j-1"})
    expired = mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "exp": now - 999,
                              "iat": now - 2000})
    no_scope = mint(keys.ec, {"iss": ISSUER, "aud": AUDIENCE})
    script = [
        ("/orders/1", good, 200), ("/orders/2", good, 200), ("/orders/3", good, 200),
        ("/orders/4", None, 401), ("/orders/5", None, 401),
        ("/orders/6", expired, 401), ("/orders/7", no_scope, 403),
        ("/public/x?secret=1", None, 200), ("/anything", good, 200),
    ]
    for path, token, status in script:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = await proxy.client.get(path, headers=headers)
        assert resp.status == status, path

    metric = proxy.metric
    assert await metric("jwtproxy_requests_total", route="orders", code="200") == 3
    assert await metric("jwtproxy_requests_total", route="orders", code="401") == 3
    assert await metric("jwtproxy_requests_total", route="orders", code="403") == 1
    assert await metric("jwtproxy_requests_total", route="public", code="200") == 1
    assert await metric("jwtproxy_requests_total", route="api", code="200") == 1
    assert await metric("jwtproxy_request_duration_seconds_count", route="orders") == 7
    assert await metric("jwtproxy_upstream_duration_seconds_count", route="orders") == 3
    assert await metric("jwtproxy_upstream_duration_seconds_count", route="public") == 1
    assert await metric("jwtproxy_auth_total", route="orders", issuer="main",
                        result="allowed", reason="ok") == 3
    assert await metric("jwtproxy_auth_total", route="orders", issuer="(none)",
                        result="denied", reason="missing") == 2
    assert await metric("jwtproxy_auth_total", route="orders", issuer="main",
                        result="denied", reason="expired") == 1
    assert await metric("jwtproxy_auth_total", route="orders", issuer="main",
                        result="denied", reason="scope") == 1
    assert await metric("jwtproxy_auth_total", route="api", result="allowed") == 1
    assert await metric("jwtproxy_auth_total", route="public") == 0
    # good: 1 miss then 3 hits (orders x2, api); expired and no_scope: one miss each
    assert await metric("jwtproxy_token_cache_total", result="hit") == 3
    assert await metric("jwtproxy_token_cache_total", result="miss") == 3
    assert await metric("jwtproxy_jwks_refresh_total", issuer="main", result="ok") == 1
    assert await metric("jwtproxy_jwks_keys", issuer="main") == 3
    last = await metric("jwtproxy_jwks_last_success_timestamp_seconds", issuer="main")
    assert now - 60 < last <= time.time()
    assert await metric("jwtproxy_config_reloads_total", result="ok") == 0
    assert await metric("jwtproxy_build_info", version=__version__) == 1
    text = await (await proxy.admin.get("/metrics")).text()
    assert "/orders/1" not in text and "user-1" not in text  # no paths or subjects as labels

    lines = [r for r in caplog.records if r.name == "jwtproxy.access"]
    assert len(lines) == len(script)
    first = vars(lines[0])
    for field in ("route", "method", "path", "status", "duration_ms", "upstream_ms",
                  "issuer", "auth", "sub", "jti", "request_id"):
        assert field in first, field
    assert (first["route"], first["status"], first["sub"], first["jti"]) == (
        "orders", 200, "user-1", "j-1")
    denied = vars(lines[5])
    assert (denied["auth"], denied["issuer"], denied["status"]) == ("expired", "main", 401)
    assert vars(lines[7])["path"] == "/public/x"  # never the query string
    everything = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for token in (good, expired, no_scope):
        assert token not in everything
        assert token.split(".")[2] not in everything
