"""Key cache behaviour against a real JWKS server: kid-miss refresh (single flight,
rate-limited), last good keys on errors, Cache-Control, fetch limits, discovery."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from jwtproxy.config import Issuer, JwksSettings
from jwtproxy.errors import KeysUnavailable
from jwtproxy.jwks import MAX_DOCUMENT_BYTES, KeyStore, parse_jwks
from tests.conftest import AUDIENCE, ISSUER, ProxyFactory, base_config
from tests.servers import EchoUpstream, JwksEndpoint
from tests.tokens import KeyRing, SigningKey, mint


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def issuer_for(url: str, **settings: float) -> Issuer:
    return Issuer(name="main", issuer=ISSUER, jwks_uri=url, jwks=JwksSettings(**settings))


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_unknown_kid_refresh_is_single_flight_and_rate_limited(
    jwks: tuple[JwksEndpoint, str], session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    store = KeyStore(issuer_for(jwks[1], refresh_min_interval=30), session, clock=clock)
    await store.refresh()
    assert jwks[0].hits == 1
    jwks[0].delay = 0.05
    # a storm of unknown kids right after a fetch costs nothing
    await asyncio.gather(*(store.refresh_for_unknown_kid() for _ in range(50)))
    assert jwks[0].hits == 1
    clock.now += 31
    await asyncio.gather(*(store.refresh_for_unknown_kid() for _ in range(50)))
    assert jwks[0].hits == 2  # one shared fetch for the whole storm


async def test_last_good_keys_serve_until_stale_if_error(
    jwks: tuple[JwksEndpoint, str], session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    store = KeyStore(issuer_for(jwks[1], cache_ttl=60, stale_if_error=100,
                                refresh_min_interval=1), session, clock=clock)
    await store.refresh()
    good = await store.current()
    jwks[0].status = 500
    clock.now += 120  # past the TTL, within stale_if_error
    await store.refresh()
    assert await store.current() is good
    assert "HTTP 500" in store.last_error
    clock.now += 100  # past TTL + stale_if_error
    with pytest.raises(KeysUnavailable):
        await store.current()
    assert not store.ready


async def test_cache_control_max_age_is_honoured_within_bounds(
    jwks: tuple[JwksEndpoint, str], session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    store = KeyStore(issuer_for(jwks[1], cache_ttl=600, refresh_min_interval=30),
                     session, clock=clock)
    jwks[0].headers = {"Cache-Control": "public, max-age=120"}
    await store.refresh()
    assert store.fresh_until - clock.now == 120
    jwks[0].headers = {"Cache-Control": "max-age=5"}
    await store.refresh()
    assert store.fresh_until - clock.now == 30  # never below refresh_min_interval
    jwks[0].headers = {"Cache-Control": "max-age=86400"}
    await store.refresh()
    assert store.fresh_until - clock.now == 600  # never above cache_ttl


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"body": b"<html>not json"}, "not valid JSON"),
        ({"body": b'{"keys": 3}'}, "no `keys` list"),
        ({"body": b'{"keys": []}'}, "no usable key"),
        ({"body": b"x" * (MAX_DOCUMENT_BYTES + 10)}, "body over"),
        ({"body": json.dumps({"keys": [{"kty": "RSA"}] * 101}).encode()}, "limit 100"),
        ({"status": 404}, "HTTP 404"),
        ({"delay": 1.0}, "timed out"),
    ],
)
async def test_bad_jwks_responses_keep_last_good_keys(
    jwks: tuple[JwksEndpoint, str], session: aiohttp.ClientSession,
    fault: dict[str, Any], message: str,
) -> None:
    store = KeyStore(issuer_for(jwks[1], timeout=0.3), session)
    await store.refresh()
    good = store.key_set
    for name, value in fault.items():
        setattr(jwks[0], name, value)
    await store.refresh()
    assert message in store.last_error
    assert store.key_set is good


async def test_redirects_are_not_followed(
    aiohttp_server: Any, session: aiohttp.ClientSession
) -> None:
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://127.0.0.2/elsewhere.json")

    app = web.Application()
    app.router.add_get("/jwks.json", redirect)
    server = await aiohttp_server(app)
    store = KeyStore(issuer_for(str(server.make_url("/jwks.json"))), session)
    await store.refresh()
    assert store.key_set is None
    assert "HTTP 302" in store.last_error


def test_private_symmetric_and_weak_keys_are_skipped(keys: KeyRing) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = SigningKey("weak", "RS256", rsa.generate_private_key(65537, 1024)).public_jwk()
    private = dict(keys.rsa.public_jwk(), d="AAAA", kid="priv")
    document = {"keys": [keys.rsa.public_jwk(), weak, private,
                         {"kty": "oct", "k": "c2VjcmV0", "kid": "hs"}]}
    key_set, skipped = parse_jwks(json.dumps(document).encode())
    assert [key.kid for key in key_set.keys] == ["rsa-1"]
    assert len(skipped) == 3
    assert any("1024 bits" in why for why in skipped)
    assert any("private key material" in why for why in skipped)
    assert any("not an asymmetric" in why for why in skipped)


async def test_discovery_finds_jwks_and_checks_issuer(
    aiohttp_server: Any, keys: KeyRing, session: aiohttp.ClientSession
) -> None:
    state = {"issuer": ""}

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response({"issuer": state["issuer"],
                                  "jwks_uri": str(request.url.with_path("/keys"))})

    async def keyset(request: web.Request) -> web.Response:
        return web.json_response(keys.jwks())

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/keys", keyset)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    issuer = Issuer(name="oidc", issuer=base,
                    discovery_uri=f"{base}/.well-known/openid-configuration")
    state["issuer"] = "https://someone-else.test"
    store = KeyStore(issuer, session)
    await store.refresh()
    assert store.key_set is None
    assert "discovery issuer" in store.last_error  # OIDC Discovery §4.3
    state["issuer"] = base
    await store.refresh()
    assert store.key_set is not None and len(store.key_set.keys) == 3


async def test_rotated_key_is_picked_up_on_unknown_kid(
    make_proxy: ProxyFactory, keys: KeyRing, jwks: tuple[JwksEndpoint, str],
    upstream: tuple[EchoUpstream, str],
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    proxy = await make_proxy(base_config(jwks[1], upstream[1]))
    new_key = SigningKey("ec-2", "ES256", ec.generate_private_key(ec.SECP256R1()))
    jwks[0].document = {"keys": [*keys.jwks()["keys"], new_key.public_jwk()]}
    await asyncio.sleep(1.05)  # let refresh_min_interval (1s) pass since the first fetch
    token = mint(new_key, {"iss": ISSUER, "aud": AUDIENCE})
    resp = await proxy.client.get("/x", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    assert await proxy.metric("jwtproxy_jwks_refresh_total", issuer="main", result="ok") == 2
    # a kid that still does not exist after the refresh is refused without another fetch
    hits = jwks[0].hits
    bogus = mint(new_key, {"iss": ISSUER, "aud": AUDIENCE}, header={"kid": "ghost"})
    resp = await proxy.client.get("/x", headers={"Authorization": f"Bearer {bogus}"})
    assert resp.status == 401
    assert jwks[0].hits == hits


async def test_a_jwks_file_honours_a_cache_ttl_below_refresh_min_interval(
    keys: KeyRing, tmp_path: Any
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [keys.rsa.public_jwk()]}))
    clock = Clock()
    issuer = Issuer(name="file", issuer=ISSUER, jwks_file=str(path),
                    jwks=JwksSettings(cache_ttl=5, refresh_min_interval=30))
    store = KeyStore(issuer, None, clock=clock)
    await store.start()
    path.write_text(json.dumps({"keys": [keys.rsa.public_jwk(), keys.ec.public_jwk()]}))
    clock.now += 6  # past cache_ttl, well within refresh_min_interval
    await store.current()
    assert store._inflight is not None
    await store._inflight
    assert len((await store.current()).keys) == 2
    path.unlink()  # a failing read is retried once per cache_ttl, not on every request
    clock.now += 6
    await store.current()
    assert store._inflight is not None
    await store._inflight
    await store.current()
    assert store._inflight is None
    assert "cannot read" in store.last_error


async def test_a_jwks_file_is_reread_after_its_ttl(keys: KeyRing, tmp_path: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [keys.rsa.public_jwk()]}))
    clock = Clock()
    issuer = Issuer(name="file", issuer=ISSUER, jwks_file=str(path),
                    jwks=JwksSettings(cache_ttl=60, refresh_min_interval=1))
    store = KeyStore(issuer, None, clock=clock)
    await store.start()
    assert [k.kid for k in (await store.current()).keys] == ["rsa-1"]
    path.write_text(json.dumps({"keys": [keys.rsa.public_jwk(), keys.ec.public_jwk()]}))
    assert len((await store.current()).keys) == 1  # within the TTL: no re-read
    clock.now += 61
    await store.current()  # past the TTL: served as is, re-read in the background
    assert store._inflight is not None
    await store._inflight
    assert [k.kid for k in (await store.current()).keys] == ["rsa-1", "ec-1"]
