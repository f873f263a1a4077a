"""The revocation list with the file store: each kind of entry, until, cache hits,
report_only routes, the metric and the log line; the file changed, broken and fixed under
load; the list itself and its entry format."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from jwtproxy.revocation import Entry, RevocationList, parse_entry, parse_time, token_marks
from tests.conftest import AUDIENCE, ISSUER, Proxy, ProxyFactory, base_config
from tests.servers import EchoUpstream, JwksEndpoint
from tests.tokens import KeyRing, mint

POLL_BOUND = 15.0  # generous: the file is polled once a second


async def eventually(check: Callable[[], Awaitable[bool]], bound: float = POLL_BOUND) -> None:
    deadline = time.monotonic() + bound
    while not await check():
        assert time.monotonic() < deadline, "condition not reached within the bound"
        await asyncio.sleep(0.05)  # polling interval


def write_list(path: Path, entries: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(entries))
    tmp.replace(path)


def token(keys: KeyRing, **claims: Any) -> str:
    return mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, **claims})


async def status(proxy: Proxy, tok: str, path: str = "/api/x") -> int:
    resp = await proxy.client.get(path, headers={"Authorization": f"Bearer {tok}"})
    await resp.read()
    return resp.status


@pytest.fixture
def revoked_file(tmp_path: Path) -> Path:
    return tmp_path / "revoked.yaml"


@pytest.fixture
async def file_proxy(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str],
    upstream: tuple[EchoUpstream, str], revoked_file: Path,
) -> Proxy:
    config = base_config(jwks[1], upstream[1], revocation={"file": str(revoked_file)})
    config["routes"].insert(0, {
        "name": "shadow", "match": {"path_prefix": "/shadow"}, "upstream": upstream[1],
        "auth": {"mode": "report_only"}})
    return await make_proxy(config)


FUTURE = "2099-01-01T00:00:00Z"


@pytest.mark.parametrize("kind", ["jti", "sub", "origin_jti", "client_id"])
async def test_each_kind_of_entry_refuses_its_tokens(
    kind: str, file_proxy: Proxy, keys: KeyRing, revoked_file: Path
) -> None:
    claims = {"jti": "j-1", "sub": "alice", "origin_jti": "o-1", "client_id": "app-1"}
    bad = token(keys, **claims)
    other = token(keys, jti="j-2", sub="bob", origin_jti="o-2", client_id="app-2")
    assert await status(file_proxy, bad) == 200
    write_list(revoked_file, [{kind: claims[kind], "until": time.time() + 3600}])

    async def refused() -> bool:
        return await status(file_proxy, bad) == 401
    await eventually(refused)
    resp = await file_proxy.client.get("/api/x", headers={"Authorization": f"Bearer {bad}"})
    assert resp.headers["WWW-Authenticate"].startswith(
        'Bearer realm="jwtproxy", error="invalid_token"')
    assert await resp.json() == {"error": "invalid_token",
                                 "error_description": f"token revoked (by {kind})"}
    assert await status(file_proxy, other) == 200
    assert await file_proxy.metric("jwtproxy_auth_total", route="api", result="denied",
                                   reason="revoked") >= 2
    assert await file_proxy.metric("jwtproxy_revocations", kind=kind) == 1


async def test_cached_token_is_refused_once_listed(
    file_proxy: Proxy, keys: KeyRing, revoked_file: Path
) -> None:
    tok = token(keys, sub="alice")
    assert await status(file_proxy, tok) == 200
    assert await status(file_proxy, tok) == 200
    hits = await file_proxy.metric("jwtproxy_token_cache_total", result="hit")
    assert hits >= 1
    write_list(revoked_file, [{"sub": "alice", "until": FUTURE}])

    async def refused() -> bool:
        return await status(file_proxy, tok) == 401
    await eventually(refused)
    # refused from the verified-token cache, not by a fresh verification
    assert await file_proxy.metric("jwtproxy_token_cache_total", result="hit") > hits
    assert await file_proxy.metric("jwtproxy_token_cache_total", result="miss") == 1


async def test_until_past_is_not_applied_and_an_entry_ends_at_its_until(
    file_proxy: Proxy, keys: KeyRing, revoked_file: Path
) -> None:
    old, soon = token(keys, sub="old"), token(keys, sub="soon")
    write_list(revoked_file, [{"sub": "old", "until": "2020-01-01T00:00:00Z"},
                              {"sub": "soon", "until": time.time() + 3}])

    async def soon_refused() -> bool:
        return await status(file_proxy, soon) == 401
    await eventually(soon_refused)
    assert await status(file_proxy, old) == 200
    assert await file_proxy.metric("jwtproxy_revocations", kind="sub") == 1

    async def soon_allowed() -> bool:
        return await status(file_proxy, soon) == 200
    await eventually(soon_allowed)

    async def dropped() -> bool:  # pruned from the list within a second or so
        return await file_proxy.metric("jwtproxy_revocations", kind="sub") == 0
    await eventually(dropped)


async def test_report_only_route_counts_a_revoked_token_and_forwards_it(
    file_proxy: Proxy, keys: KeyRing, revoked_file: Path, upstream: tuple[EchoUpstream, str]
) -> None:
    write_list(revoked_file, [{"jti": "j-9", "until": FUTURE}])
    tok = token(keys, jti="j-9")

    async def refused() -> bool:
        return await status(file_proxy, tok) == 401
    await eventually(refused)
    assert await status(file_proxy, tok, "/shadow/x") == 200
    assert upstream[0].received[-1].path_qs == "/shadow/x"
    assert await file_proxy.metric("jwtproxy_auth_total", route="shadow", result="denied",
                                   reason="revoked") == 1


async def test_refusal_logs_jti_and_sub_never_the_token(
    file_proxy: Proxy, keys: KeyRing, revoked_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_list(revoked_file, [{"origin_jti": "o-7", "until": FUTURE}])
    tok = token(keys, sub="carol", jti="j-7", origin_jti="o-7")
    caplog.set_level(logging.INFO, logger="jwtproxy.revocation")

    async def refused() -> bool:
        return await status(file_proxy, tok) == 401
    await eventually(refused)
    records = [r for r in caplog.records if r.getMessage() == "token_revoked"]
    assert records
    assert (records[-1].kind, records[-1].sub, records[-1].jti) == (  # type: ignore[attr-defined]
        "origin_jti", "carol", "j-7")
    assert all(tok not in str(r.__dict__) for r in caplog.records)


async def test_file_added_changed_broken_fixed_under_load(
    file_proxy: Proxy, keys: KeyRing, revoked_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob, carol = (token(keys, sub=name) for name in ("alice", "bob", "carol"))
    results: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            for name, tok in (("alice", alice), ("bob", bob), ("carol", carol)):
                results.append((name, await status(file_proxy, tok)))

    async def wait_for(name: str, expected: int) -> None:
        async def seen() -> bool:
            return any(n == name and s == expected for n, s in results[-9:])
        await eventually(seen)

    workers = [asyncio.create_task(load()) for _ in range(4)]
    try:
        write_list(revoked_file, [{"sub": "alice", "until": FUTURE}])  # add
        await wait_for("alice", 401)
        write_list(revoked_file, [{"sub": "alice", "until": FUTURE},
                                  {"sub": "bob", "until": FUTURE}])  # change
        await wait_for("bob", 401)
        syncs = await file_proxy.metric("jwtproxy_revocation_sync_total", result="error")
        revoked_file.write_text("- {sub: carol, until: [not, a, time]}\n- sub: [\n")  # break

        async def refused_counted() -> bool:
            return await file_proxy.metric(
                "jwtproxy_revocation_sync_total", result="error") > syncs
        await eventually(refused_counted)
        mark = len(results)
        await wait_for("carol", 200)
        assert {(n, s) for n, s in results[mark:]} <= {
            ("alice", 401), ("bob", 401), ("carol", 200)}, "the last good list keeps applying"
        write_list(revoked_file, [{"sub": "carol", "until": FUTURE}])  # fix
        await wait_for("carol", 401)
        await wait_for("bob", 200)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert len(results) > 100
    assert {s for _, s in results} <= {200, 401}, "no 5xx, no request lost"
    assert any(r.getMessage() == "revocation_file_refused" for r in caplog.records)


async def test_missing_file_is_an_empty_list(file_proxy: Proxy, keys: KeyRing) -> None:
    assert await status(file_proxy, token(keys, sub="alice")) == 200
    status_code, body = await file_proxy.admin.get("/readyz"), None
    assert status_code.status == 200, body


# -- the list and its entries ---------------------------------------------------------


@pytest.mark.parametrize(("item", "problem"), [
    ("sub: alice", "expected a mapping"),
    ({"sub": "a", "jti": "b", "until": FUTURE}, "exactly one of"),
    ({"until": FUTURE}, "exactly one of"),
    ({"sub": "a"}, "until: expected RFC 3339"),
    ({"sub": "a", "until": "tomorrow"}, "until: expected RFC 3339"),
    ({"sub": "a", "until": "2026-12-31T00:00:00"}, "until: expected RFC 3339"),  # no offset
    ({"sub": "a", "until": True}, "until: expected"),
    ({"sub": 42, "until": FUTURE}, "sub: expected a non-empty string"),
    ({"sub": "", "until": FUTURE}, "sub: expected a non-empty string"),
    ({"sub": "x" * 1025, "until": FUTURE}, "sub: expected a non-empty string"),
    ({"sub": "a\x00b", "until": FUTURE}, "sub: expected a non-empty string"),
    ({"sub": "a", "until": FUTURE, "reason": "x"}, "unknown key 'reason'"),
])
def test_bad_entries_are_named(item: Any, problem: str) -> None:
    parsed = parse_entry(item)
    assert isinstance(parsed, str) and problem in parsed


def test_times_rfc3339_or_epoch() -> None:
    assert parse_time("2026-12-31T00:00:00Z") == 1798675200.0
    assert parse_time("2026-12-31T01:00:00+01:00") == 1798675200.0
    assert parse_time(1798675200) == 1798675200.0
    assert parse_time(None) is None


def test_list_merges_prunes_and_wakes_watchers() -> None:
    now = [1000.0]
    revoked = RevocationList(wall_clock=lambda: now[0])
    marks = token_marks({"sub": "alice", "jti": "j1", "exp": 5000})
    revoked.replace([Entry("sub", "bob", 1100.0), Entry("sub", "old", 900.0)])
    assert [e.value for e in revoked.entries()] == ["bob"]
    revoked.check(marks, {})
    woken: list[str] = []

    async def watch() -> None:
        unwatch = revoked.watch(marks, lambda: woken.append("alice"))
        revoked.merge([Entry("jti", "j1", 1200.0)])
        revoked.merge([Entry("jti", "j1", 1150.0)])  # an earlier until does not shorten it
        unwatch()
        revoked.merge([Entry("sub", "alice", 1300.0)])  # no longer watched

    asyncio.run(watch())
    assert woken == ["alice"]
    with pytest.raises(Exception, match="revoked"):
        revoked.check(marks, {})
    now[0] = 1250.0
    revoked.prune()
    assert [(e.kind, e.value) for e in revoked.entries()] == [("sub", "alice")]
    now[0] = 1300.0
    revoked.prune()
    assert revoked.entries() == []
    revoked.check(marks, {})
