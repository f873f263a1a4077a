"""Signature algorithms, key selection and the verified-token cache, end to end."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from jwtproxy.config import Issuer
from jwtproxy.errors import BadSignature, Expired, NotYetValid, UnknownKid, WrongTyp
from jwtproxy.jwks import KeySet, KeyStore, parse_jwks
from jwtproxy.verifier import Verifier
from tests.conftest import AUDIENCE, ISSUER, ProxyFactory, base_config
from tests.servers import EchoUpstream, JwksEndpoint
from tests.tokens import KeyRing, SigningKey, mint

SECRET = "s3cret-s3cret-s3cret-s3cret-0123456789"
ALL_ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                  "ES512", "EdDSA", "Ed25519"]


def claims(**extra: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "aud": AUDIENCE, **extra}


@pytest.fixture(scope="module")
def algorithm_keys() -> dict[str, SigningKey]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out = {alg: SigningKey(f"k-{alg}", alg, rsa_key) for alg in ALL_ASYMMETRIC[:6]}
    for alg, curve in (("ES256", ec.SECP256R1()), ("ES384", ec.SECP384R1()),
                       ("ES512", ec.SECP521R1())):
        out[alg] = SigningKey(f"k-{alg}", alg, ec.generate_private_key(curve))
    ed = ed25519.Ed25519PrivateKey.generate()
    out["EdDSA"] = SigningKey("k-EdDSA", "EdDSA", ed)
    out["Ed25519"] = SigningKey("k-Ed25519", "Ed25519", ed)
    return out


@pytest.fixture
async def multi(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str],
    upstream: tuple[EchoUpstream, str], algorithm_keys: dict[str, SigningKey],
) -> Any:
    jwks[0].document = {"keys": [k.public_jwk() for k in algorithm_keys.values()]}
    config = base_config(jwks[1], upstream[1])
    config["issuers"]["main"]["algorithms"] = ALL_ASYMMETRIC
    config["issuers"]["hs"] = {"issuer": "hs-issuer", "secret": SECRET,
                               "algorithms": ["HS256", "HS384", "HS512"]}
    return await make_proxy(config)


@pytest.mark.parametrize("alg", ALL_ASYMMETRIC)
async def test_each_asymmetric_algorithm_verifies(
    multi: Any, algorithm_keys: dict[str, SigningKey], alg: str
) -> None:
    token = mint(algorithm_keys[alg], claims())
    resp = await multi.client.get("/x", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    tampered = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    resp = await multi.client.get("/x", headers={"Authorization": f"Bearer {tampered}"})
    assert resp.status == 401


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_only_for_the_secret_issuer(multi: Any, alg: str) -> None:
    token = mint(None, {"iss": "hs-issuer"}, alg=alg, secret=SECRET.encode())
    resp = await multi.client.get("/x", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    forged = mint(None, claims(), alg=alg, secret=SECRET.encode())  # main issuer: no HS
    resp = await multi.client.get("/x", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_hs256_keyed_with_the_public_key_is_rejected(
    multi: Any, algorithm_keys: dict[str, SigningKey]
) -> None:
    public = algorithm_keys["RS256"].private.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    token = mint(None, claims(), alg="HS256", header={"kid": "k-RS256"}, secret=pem)
    resp = await multi.client.get("/x", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    assert await multi.metric("jwtproxy_auth_total", reason="alg") == 1


async def test_kid_must_point_at_a_key_that_fits_the_alg(
    multi: Any, algorithm_keys: dict[str, SigningKey]
) -> None:
    # ES256 signature, but the kid names the RSA key
    token = mint(algorithm_keys["ES256"], claims(), header={"kid": "k-RS256"})
    resp = await multi.client.get("/x", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    assert await multi.metric("jwtproxy_auth_total", reason="alg") == 1


async def test_token_without_kid_needs_exactly_one_fitting_key(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str],
    upstream: tuple[EchoUpstream, str], keys: KeyRing,
) -> None:
    proxy = await make_proxy(base_config(jwks[1], upstream[1]))
    one_fit = mint(keys.ec, claims(), header={"kid": None})  # only one EC key
    resp = await proxy.client.get("/x", headers={"Authorization": f"Bearer {one_fit}"})
    assert resp.status == 200
    second = SigningKey("ec-2", "ES256", ec.generate_private_key(ec.SECP256R1()))
    jwks[0].document = {"keys": [*keys.jwks()["keys"], second.public_jwk()]}
    await proxy.app.state.stores["main"].refresh()  # type: ignore[union-attr]
    ambiguous = mint(keys.ec, claims(jti="2"), header={"kid": None})
    resp = await proxy.client.get("/x", headers={"Authorization": f"Bearer {ambiguous}"})
    assert resp.status == 401
    assert await proxy.metric("jwtproxy_auth_total", reason="unknown_kid") == 1


async def test_leeway_applies_to_exp_nbf_and_iat(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str],
    upstream: tuple[EchoUpstream, str], keys: KeyRing,
) -> None:
    config = base_config(jwks[1], upstream[1])
    config["issuers"]["main"]["leeway"] = "30s"
    proxy = await make_proxy(config)
    now = int(time.time())
    cases = [
        (claims(exp=now - 10), 200), (claims(exp=now - 60), 401),
        (claims(nbf=now + 10), 200), (claims(nbf=now + 60), 401),
        (claims(iat=now + 10), 200), (claims(iat=now + 60), 401),
        (claims(exp=now + 100.5), 200),
    ]
    for body, status in cases:
        resp = await proxy.client.get(
            "/x", headers={"Authorization": f"Bearer {mint(keys.rsa, body)}"})
        assert resp.status == status, body


async def test_cache_hits_are_counted_and_recheck_time(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str],
    upstream: tuple[EchoUpstream, str], keys: KeyRing,
) -> None:
    proxy = await make_proxy(base_config(jwks[1], upstream[1]))
    token = mint(keys.rsa, claims())
    for _ in range(3):
        resp = await proxy.client.get("/x", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200
    assert await proxy.metric("jwtproxy_token_cache_total", result="miss") == 1
    assert await proxy.metric("jwtproxy_token_cache_total", result="hit") == 2


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def static_store(key_set: KeySet) -> KeyStore:
    store = KeyStore(Issuer(name="main", issuer=ISSUER, jwks_file="/dev/null"), None)
    store.key_set, store.fresh_until = key_set, float("inf")
    return store


async def test_cache_never_outlives_exp_and_drops_removed_keys(keys: KeyRing) -> None:
    clock = Clock()
    key_set, _ = parse_jwks(json.dumps(keys.jwks()).encode())
    store = static_store(key_set)
    issuer = Issuer(name="main", issuer=ISSUER, audiences=(AUDIENCE,), leeway=0,
                    algorithms=("RS256",))
    verifier = Verifier({"main": issuer}, {"main": store}, wall_clock=clock)
    token = mint(keys.rsa, claims(exp=int(clock.now) + 10, iat=int(clock.now) - 1))
    assert not (await verifier.verify(token, ("main",))).cache_hit
    assert (await verifier.verify(token, ("main",))).cache_hit
    clock.now += 11
    with pytest.raises(Expired):
        await verifier.verify(token, ("main",))
    assert len(verifier.cache) == 0  # evicted at exp, not just refused
    # a key that leaves the JWKS takes its cached tokens with it
    fresh = mint(keys.rsa, claims(exp=int(clock.now) + 100, iat=int(clock.now) - 1))
    await verifier.verify(fresh, ("main",))
    assert (await verifier.verify(fresh, ("main",))).cache_hit
    store.key_set = KeySet(tuple(k for k in key_set.keys if k.kid != "rsa-1"))
    with pytest.raises(UnknownKid):
        await verifier.verify(fresh, ("main",))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_a_cache_hit_is_not_valid_yet_after_the_clock_steps_back(
    keys: KeyRing, claim: str
) -> None:
    """The cache drops a token at exp + leeway; its nbf/iat bound is compared on each hit,
    so a wall clock stepped back (NTP) makes a cached token not valid yet, as uncached."""
    clock = Clock()
    key_set, _ = parse_jwks(json.dumps(keys.jwks()).encode())
    issuer = Issuer(name="main", issuer=ISSUER, audiences=(AUDIENCE,), leeway=5,
                    algorithms=("RS256",))
    verifier = Verifier({"main": issuer}, {"main": static_store(key_set)}, wall_clock=clock)
    start = int(clock.now)
    token = mint(keys.rsa, claims(**{"exp": start + 100, "iat": start - 1, claim: start}))
    await verifier.verify(token, ("main",))
    clock.now = start - 5  # within the leeway: still a hit
    assert (await verifier.verify(token, ("main",))).cache_hit
    clock.now = start - 6
    with pytest.raises(NotYetValid, match=claim) as refused:
        await verifier.verify(token, ("main",))
    assert refused.value.cache_hit is True
    clock.now = start + 1
    assert (await verifier.verify(token, ("main",))).cache_hit


async def test_same_iss_configured_twice_tries_each_issuer_of_the_route(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str],
    upstream: tuple[EchoUpstream, str], keys: KeyRing,
) -> None:
    config = base_config(jwks[1], upstream[1])
    main = config["issuers"].pop("main")
    config["issuers"]["access"] = {**main, "token_use": "access"}
    config["issuers"]["id"] = {**main, "token_use": "id"}
    config["routes"][2]["auth"] = {"issuers": ["access", "id"]}
    proxy = await make_proxy(config)
    for use in ("access", "id"):
        token = mint(keys.rsa, claims(token_use=use))
        resp = await proxy.client.get("/x", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, use
    refresh = mint(keys.rsa, claims(token_use="refresh"))
    resp = await proxy.client.get("/x", headers={"Authorization": f"Bearer {refresh}"})
    assert resp.status == 401
    assert await proxy.metric("jwtproxy_auth_total", issuer="access", reason="token_use") == 1
    assert await proxy.metric("jwtproxy_auth_total", issuer="id", result="allowed") == 1


async def test_report_only_never_denies_even_ambiguous_credentials(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str],
    upstream: tuple[EchoUpstream, str], keys: KeyRing,
) -> None:
    config = base_config(jwks[1], upstream[1])
    config["routes"][2]["auth"] = {"mode": "report_only"}
    proxy = await make_proxy(config)
    token = mint(keys.rsa, claims())
    twice = [("Authorization", f"Bearer {token}")] * 2
    assert (await proxy.client.get("/x", headers=twice)).status == 200
    huge = {"Authorization": "Bearer " + "a" * 9000}
    assert (await proxy.client.get("/x", headers=huge)).status == 200
    assert (await proxy.client.get("/x", headers={"Authorization": "Bearer x.y.z"})).status == 200
    assert upstream[0].received[-1].header("X-Auth-Subject") is None  # nothing verified
    assert (await proxy.client.get("/x")).status == 200  # no token at all
    assert await proxy.metric("jwtproxy_auth_total", route="api", result="denied") == 4
    assert await proxy.metric("jwtproxy_auth_total", route="api", result="denied",
                              reason="missing") == 1


async def test_lasting_refusals_are_remembered_until_the_keys_change(keys: KeyRing) -> None:
    key_set, _ = parse_jwks(json.dumps(keys.jwks()).encode())
    store = static_store(key_set)
    issuer = Issuer(name="main", issuer=ISSUER, audiences=(AUDIENCE,), algorithms=("RS256",))
    verifier = Verifier({"main": issuer}, {"main": store})
    forged = mint(keys.other_rsa, claims())  # right kid, wrong key
    calls = 0
    check = Verifier.check_signature

    def counting(parsed: Any, key: Any) -> None:
        nonlocal calls
        calls += 1
        check(parsed, key)

    verifier.check_signature = counting  # type: ignore[method-assign]
    for _ in range(3):
        with pytest.raises(BadSignature) as refused:
            await verifier.verify(forged, ("main",))
    assert calls == 1  # the replays cost no signature check
    assert refused.value.cache_hit is True and refused.value.issuer == "main"
    # the same keys fetched again: the refusal still holds
    store.key_set, _ = parse_jwks(json.dumps(keys.jwks()).encode())
    with pytest.raises(BadSignature):
        await verifier.verify(forged, ("main",))
    assert calls == 1
    # the issuer rotates to the key that did sign it: the refusal is not trusted any more
    store.key_set, _ = parse_jwks(json.dumps({"keys": [keys.other_rsa.public_jwk()]}).encode())
    assert (await verifier.verify(forged, ("main",))).issuer == "main"
    assert calls == 2
    # a token that is merely not valid yet is never remembered as refused
    early = mint(keys.other_rsa, claims(nbf=int(time.time()) + 3600))
    for _ in range(2):
        with pytest.raises(NotYetValid):
            await verifier.verify(early, ("main",))
    assert len(verifier.rejected) == 1


async def test_a_refusal_is_remembered_only_when_every_issuer_refused_for_good(
    keys: KeyRing,
) -> None:
    """Issue 16: two issuers with one iss, `strict` (typ at+jwt) before `loose`; a `typ:
    JWT` token not valid for 4 s more was refused at t=0 and, because `strict`'s lasting
    typ error was remembered, still at t=7 although `loose` accepts it by then."""
    clock = Clock()
    key_set, _ = parse_jwks(json.dumps(keys.jwks()).encode())
    strict = Issuer(name="strict", issuer=ISSUER, audiences=(AUDIENCE,), leeway=0,
                    algorithms=("RS256",), typ="at+jwt")
    loose = Issuer(name="loose", issuer=ISSUER, audiences=(AUDIENCE,), leeway=0,
                   algorithms=("RS256",))
    verifier = Verifier({"strict": strict, "loose": loose},
                        {"strict": static_store(key_set), "loose": static_store(key_set)},
                        wall_clock=clock)
    route = ("strict", "loose")
    token = mint(keys.rsa, claims(nbf=int(clock.now) + 4, iat=int(clock.now) - 1,
                                  exp=int(clock.now) + 300))
    with pytest.raises(WrongTyp):
        await verifier.verify(token, route)
    assert len(verifier.rejected) == 0
    clock.now += 7
    assert (await verifier.verify(token, route)).issuer == "loose"
    # both refuse for good (typ, then audience): remembered
    other = mint(keys.rsa, claims(aud="api://other"))
    with pytest.raises(WrongTyp):
        await verifier.verify(other, route)
    assert len(verifier.rejected) == 1
    with pytest.raises(WrongTyp) as again:
        await verifier.verify(other, route)
    assert again.value.cache_hit is True
