"""Revocation shared by replicas through a real redis-server: two jwtproxy processes on one
Redis, `jwtproxy revoke` reaching both within a second, Redis killed and back; the CLI's
exit codes; SIGHUP re-reading the file store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from jwtproxy.revocation import parse_time
from tests.proc import ProxyProcess, proxy_process
from tests.services import RedisServer, start_redis
from tests.threaded import serve_in_thread
from tests.tokens import KeyRing, mint

ISSUER = "https://issuer.test/"
AUDIENCE = "api://orders"
BOUND = 30.0  # generous bound for anything that should take about a second


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    if server is None:
        pytest.fail("redis-server is not installed and apt-get could not install it")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream_port() -> Iterator[int]:
    async def ok(_: web.BaseRequest) -> web.Response:
        return web.Response(text="ok")

    with serve_in_thread(ok) as port:
        yield port


def config(tmp_path: Path, keys: KeyRing, port: int, revocation: dict[str, Any]) -> dict[str, Any]:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(keys.jwks()))
    return {
        "log": {"format": "json"},
        "issuers": {"main": {"issuer": ISSUER, "jwks_file": str(jwks_file),
                             "audiences": [AUDIENCE]}},
        "revocation": revocation,
        "routes": [{"name": "api", "match": {"path_prefix": "/"},
                    "upstream": f"http://127.0.0.1:{port}"}],
    }


def get(proxy: ProxyProcess, tok: str) -> int:
    request = urllib.request.Request(proxy.url + "/x", headers={"Authorization": f"Bearer {tok}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def metric(proxy: ProxyProcess, line_start: str) -> float:
    for line in proxy.admin_get("/metrics")[1].splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def wait_for(check: Callable[[], bool], what: str, bound: float = BOUND) -> float:
    """Poll until `check()`; the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < bound, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling interval
    return time.monotonic() - started


def revoke(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jwtproxy", "revoke", "-c", str(config_path),
                           *args], capture_output=True, text=True, timeout=60)


def tokens(keys: KeyRing) -> dict[str, str]:
    return {name: mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "sub": name,
                                  "exp": int(time.time()) + 3600})
            for name in ("alice", "bob", "carol", "dave")}


def test_two_replicas_share_one_redis(
    tmp_path: Path, keys: KeyRing, upstream_port: int, redis_server: RedisServer
) -> None:
    # sync_interval long: only pub/sub can bring the entry within the second
    cfg = config(tmp_path, keys, upstream_port, {
        "redis": {"url": redis_server.url, "key_prefix": "t1:"}, "sync_interval": "600s"})
    tok = tokens(keys)
    with ExitStack() as stack:
        replicas = [stack.enter_context(proxy_process(cfg)) for _ in range(2)]
        for proxy in replicas:
            assert get(proxy, tok["alice"]) == 200  # now in each one's verified-token cache
            wait_for(lambda p=proxy: "revocation_list_loaded" in p.logs(), "the first load")
        started = time.monotonic()
        result = revoke(replicas[0].config_path, "--sub", "alice", "--for", "1h")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("revoked sub alice until ")
        delays = [wait_for(lambda p=proxy: get(p, tok["alice"]) == 401, "alice refused")
                  for proxy in replicas]
        print(f"propagation: revoke command started -> both replicas refuse: "
              f"{time.monotonic() - started:.3f}s (CLI start-up included); "
              f"after the command returned: {max(delays):.3f}s")
        for proxy in replicas:
            assert get(proxy, tok["bob"]) == 200
            assert metric(proxy, 'jwtproxy_revocations{kind="sub"}') == 1
            assert 'jwtproxy_auth_total{issuer="main",reason="revoked",result="denied",' \
                   'route="api"}' in proxy.admin_get("/metrics")[1]
        listed = revoke(replicas[0].config_path, "--list")
        assert listed.returncode == 0
        assert listed.stdout.startswith("sub\talice\tuntil ")


def test_redis_down_the_last_list_applies_and_back_it_catches_up(
    tmp_path: Path, keys: KeyRing, upstream_port: int, redis_server: RedisServer
) -> None:
    cfg = config(tmp_path, keys, upstream_port, {
        "redis": {"url": redis_server.url, "key_prefix": "t2:"}, "sync_interval": "2s"})
    tok = tokens(keys)
    with ExitStack() as stack:
        replicas = [stack.enter_context(proxy_process(cfg)) for _ in range(2)]
        assert revoke(replicas[0].config_path, "--sub", "alice").returncode == 0
        for proxy in replicas:
            wait_for(lambda p=proxy: get(p, tok["alice"]) == 401, "alice refused")
        errors = [metric(p, 'jwtproxy_revocation_sync_total{result="error"}') for p in replicas]

        redis_server.stop()  # killed mid-run
        for proxy, before in zip(replicas, errors, strict=True):
            wait_for(lambda p=proxy, b=before: metric(
                p, 'jwtproxy_revocation_sync_total{result="error"}') > b, "the error count")
            assert "revocation_sync_failed" in proxy.logs()
            assert get(proxy, tok["alice"]) == 401, "the last list keeps applying"
            assert get(proxy, tok["bob"]) == 200, "others are still served"
            assert proxy.admin_get("/readyz")[0] == 200
        result = revoke(replicas[0].config_path, "--sub", "carol")
        assert result.returncode == 1 and "redis" in result.stderr

        redis_server.start()  # back, with its data (appendonly)
        # an entry the replicas' subscriptions never saw: no message, only the set
        cli = subprocess.run(["redis-cli", "-p", str(redis_server.port), "ZADD",
                              "t2:revocations", str(time.time() + 3600), "sub:dave"],
                             capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0, cli.stderr
        for proxy in replicas:
            wait_for(lambda p=proxy: get(p, tok["dave"]) == 401, "dave refused after a re-read")
            assert get(proxy, tok["alice"]) == 401
            assert get(proxy, tok["bob"]) == 200
        for proxy in replicas:
            assert "Bearer" not in proxy.logs() and tok["alice"] not in proxy.logs()


def test_revoke_cli_with_the_file_store(tmp_path: Path, keys: KeyRing) -> None:
    listed = tmp_path / "revoked.yaml"
    cfg = config(tmp_path, keys, 9, {"file": str(listed), "max_token_lifetime": "2h"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = revoke(path, "--jti", "j-1", "--for", "30m")
    assert done.returncode == 0, done.stderr
    done = revoke(path, "--origin-jti", "o-1", "--until", "2099-01-01T00:00:00Z")
    assert done.returncode == 0, done.stderr
    assert revoke(path, "--client-id", "app-1", "--until", str(int(time.time()) + 60)
                  ).returncode == 0
    entries = yaml.safe_load(listed.read_text())
    assert [sorted(e) for e in entries] == [["client_id", "until"], ["jti", "until"],
                                           ["origin_jti", "until"]]
    capped = next(e for e in entries if "origin_jti" in e)["until"]
    capped_at = parse_time(capped)
    assert capped_at is not None and capped_at <= time.time() + 7200, "capped at the max"
    out = revoke(path, "--list")
    assert out.returncode == 0 and "jti\tj-1\tuntil" in out.stdout
    for bad in (["--sub", "x", "--for", "soon"], ["--sub", "x", "--until", "2020-01-01T00:00:00Z"],
                ["--sub", "x", "--until", "yesterday"], ["--sub", ""], []):
        result = revoke(path, *bad)
        assert result.returncode == 2, (bad, result.stderr)
    before = listed.read_text()
    listed.write_text(before + "- sub: [\n")
    broken = revoke(path, "--sub", "x")
    assert broken.returncode == 1 and "not valid YAML" in broken.stderr
    assert listed.read_text().endswith("- sub: [\n"), "a broken file is never overwritten"
    del cfg["revocation"]
    path.write_text(yaml.safe_dump(cfg))
    none = revoke(path, "--sub", "x")
    assert none.returncode == 2 and "no revocation store" in none.stderr


@pytest.mark.parametrize(("revocation", "problem"), [
    ({}, "revocation: expected exactly one store: file or redis"),
    ({"file": "a.yaml", "redis": {"url": "redis://127.0.0.1"}}, "exactly one store"),
    ({"redis": {"url": "http://127.0.0.1"}}, "revocation.redis.url: expected redis://"),
    ({"redis": {"key_prefix": "x"}}, "revocation.redis.url: expected a non-empty string"),
    ({"file": "a.yaml", "sync_interval": "0s"}, "revocation.sync_interval: must be more"),
    ({"file": "a.yaml", "max_token_lifetime": "forever"}, "revocation.max_token_lifetime: bad"),
    ({"file": "a.yaml", "ttl": 1}, "revocation.ttl: unknown key"),
])
def test_bad_revocation_config_is_named(
    tmp_path: Path, keys: KeyRing, revocation: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, keys, 9, revocation)))
    result = subprocess.run([sys.executable, "-m", "jwtproxy", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert problem in result.stderr


def test_sighup_rereads_the_file(tmp_path: Path, keys: KeyRing, upstream_port: int) -> None:
    listed = tmp_path / "revoked.yaml"
    listed.write_text("- {sub: alice, until: 2099-01-01T00:00:00Z}\n")
    tok = tokens(keys)
    with proxy_process(config(tmp_path, keys, upstream_port, {"file": str(listed)})) as proxy:
        wait_for(lambda: get(proxy, tok["alice"]) == 401, "alice refused")
        # same size and mtime: the poll cannot tell, only SIGHUP re-reads it
        stamp = listed.stat()
        with listed.open("r+") as handle:
            handle.write("- {sub: carol")
        os.utime(listed, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        assert get(proxy, tok["carol"]) == 200
        proxy.process.send_signal(signal.SIGHUP)
        wait_for(lambda: get(proxy, tok["carol"]) == 401, "carol refused after SIGHUP")
        assert get(proxy, tok["alice"]) == 200


def test_redis_down_at_start_up_serves_then_loads_once_it_answers(
    tmp_path: Path, keys: KeyRing, upstream_port: int, redis_server: RedisServer
) -> None:
    redis_server.stop()
    cfg = config(tmp_path, keys, upstream_port, {
        "redis": {"url": redis_server.url, "key_prefix": "t3:"}, "sync_interval": "1s"})
    tok = tokens(keys)
    with proxy_process(cfg) as proxy:  # waits for /readyz: ready without Redis
        assert "revocation_list_not_loaded" in proxy.logs()
        assert metric(proxy, 'jwtproxy_revocation_sync_total{result="error"}') >= 1
        assert get(proxy, tok["alice"]) == 200
        redis_server.start()
        assert revoke(proxy.config_path, "--sub", "alice").returncode == 0
        wait_for(lambda: get(proxy, tok["alice"]) == 401, "alice refused once Redis answers")
        assert get(proxy, tok["bob"]) == 200
