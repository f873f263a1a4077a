"""DPoP (RFC 9449) through the real proxy: bound tokens from the test issuer, proofs made
here with the session keys, every check of §4.3 and §7 answered with a 401 `dpop`.

The interop tests (tests/interop/test_dpop_mcp.py) do the same with oidc-provider's
bound tokens and the npm `dpop` client library.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwk

from jwtproxy.dpop import (
    MemoryReplayCache,
    access_token_hash,
    normalize_uri,
    thumbprint,
)
from jwtproxy.log import ACCESS_LOGGER
from tests import test_forward_auth
from tests.conftest import AUDIENCE, ISSUER, Proxy, ProxyFactory, base_config
from tests.corpus import forge, generate
from tests.servers import EchoUpstream, JwksEndpoint
from tests.services import start_redis
from tests.test_forward_auth import DoorFactory, config_for, traefik
from tests.tokens import KeyRing, SigningKey, b64, b64json, mint

PATH = "/things/1"
make_door = test_forward_auth.make_door  # the forward-auth door's fixture, used here too


def jkt_of(key: SigningKey) -> str:
    return thumbprint(_jwk(key))


def _jwk(key: SigningKey) -> dict[str, Any]:
    return {k: v for k, v in key.public_jwk().items() if k not in ("kid", "use", "alg")}


def proof(
    key: SigningKey, htu: str, token: str | None, *, htm: str = "GET", alg: str | None = None,
    header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> str:
    """A DPoP proof as RFC 9449 §4.2 shapes it; `header`/`claims` override, `drop` removes."""
    head: dict[str, Any] = {"typ": "dpop+jwt", "alg": alg or key.alg, "jwk": _jwk(key)}
    head.update(header or {})
    body: dict[str, Any] = {"jti": uuid.uuid4().hex, "htm": htm, "htu": htu,
                            "iat": int(time.time())}
    if token is not None:
        body["ath"] = access_token_hash(token)
    body.update(claims or {})
    head = {k: v for k, v in head.items() if v is not None}
    for name in drop:
        body.pop(name, None)
    signing_input = f"{b64json(head)}.{b64json(body)}".encode()
    return f"{signing_input.decode()}.{b64(key.sign(signing_input, alg or key.alg))}"


def bound_token(keys: KeyRing, holder: SigningKey, **claims: Any) -> str:
    return mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "cnf": {"jkt": jkt_of(holder)},
                           **claims})


def plain_token(keys: KeyRing) -> str:
    return mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE})


def dpop_config(jwks_url: str, upstream_url: str, **dpop: Any) -> dict[str, Any]:
    config = base_config(jwks_url, upstream_url)
    if dpop:
        config["issuers"]["main"]["dpop"] = dpop
    return config


@pytest.fixture
async def dproxy(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], upstream: tuple[EchoUpstream, str],
) -> Proxy:
    return await make_proxy(dpop_config(jwks[1], upstream[1], mode="allowed"))


def htu_of(proxy: Proxy, path: str = PATH) -> str:
    return str(proxy.client.make_url(path))


async def send(proxy: Proxy, token: str, *proofs: str, scheme: str = "DPoP",
               method: str = "GET", path: str = PATH) -> Any:
    headers = [("Authorization", f"{scheme} {token}")] + [("DPoP", p) for p in proofs]
    return await proxy.client.request(method, path, headers=headers)


async def assert_dpop_refused(resp: Any, error: str = "invalid_dpop_proof") -> None:
    assert resp.status == 401, await resp.text()
    assert (await resp.json())["error"] == error
    challenges = resp.headers.getall("WWW-Authenticate")
    if error == "invalid_dpop_proof":
        assert challenges[0].startswith('DPoP error="invalid_dpop_proof"'), challenges
        assert 'algs="ES256 EdDSA Ed25519 RS256 PS256"' in challenges[0]
        assert challenges[1] == 'Bearer realm="jwtproxy"', challenges


@pytest.mark.parametrize("holder_name", ["ec", "ed", "rsa"])
async def test_a_good_proof_is_accepted_and_each_proof_works_once(
    dproxy: Proxy, keys: KeyRing, upstream: tuple[EchoUpstream, str], holder_name: str,
) -> None:
    holder = getattr(keys, holder_name)
    token = bound_token(keys, holder)
    good = proof(holder, htu_of(dproxy), token)
    resp = await send(dproxy, token, good)
    assert resp.status == 200, await resp.text()
    assert upstream[0].received[-1].header("DPoP") == good
    # the token is in the verified-token cache now: a replayed proof still fails,
    # and no proof at all too
    await assert_dpop_refused(await send(dproxy, token, good))
    await assert_dpop_refused(await send(dproxy, token))
    assert (await send(dproxy, token, proof(holder, htu_of(dproxy), token))).status == 200
    # the imported proof key is remembered by its header: the signature is still checked
    await assert_dpop_refused(await send(dproxy, token, _flip_last(
        proof(holder, htu_of(dproxy), token))))
    assert await dproxy.metric("jwtproxy_auth_total", reason="dpop") == 3


async def test_each_check_names_its_sub_reason_in_the_log(
    dproxy: Proxy, keys: KeyRing, caplog: pytest.LogCaptureFixture,
) -> None:
    holder = keys.ec
    token = bound_token(keys, holder)
    htu = htu_of(dproxy)
    now = int(time.time())
    cases = {
        "htm": proof(holder, htu, token, htm="POST"),
        "htu": proof(holder, htu_of(dproxy, "/things/2"), token),
        "ath": proof(holder, htu, plain_token(keys)),
        "jkt": proof(keys.ed, htu, token),
        "iat": proof(holder, htu, token, claims={"iat": now - 600}),
        "proof": proof(holder, htu, token, header={"typ": "JWT"}),
    }
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    for check, value in cases.items():
        caplog.clear()
        await assert_dpop_refused(await send(dproxy, token, value))
        (record,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
        assert (record.auth, record.dpop) == ("dpop", check)  # type: ignore[attr-defined]
        assert token not in record.getMessage() and value not in str(record.__dict__)


@pytest.mark.parametrize(("name", "make"), [
    ("future iat", lambda k, htu, t: proof(k, htu, t, claims={"iat": int(time.time()) + 120})),
    ("old iat", lambda k, htu, t: proof(k, htu, t, claims={"iat": int(time.time()) - 361})),
    ("iat as string", lambda k, htu, t: proof(k, htu, t, claims={"iat": str(int(time.time()))})),
    ("no jti", lambda k, htu, t: proof(k, htu, t, drop=("jti",))),
    ("no ath", lambda k, htu, t: proof(k, htu, t, drop=("ath",))),
    ("no htu", lambda k, htu, t: proof(k, htu, t, drop=("htu",))),
    ("htu with another port", lambda k, htu, t: proof(k, htu.replace(":", ":1", 2), t)),
    ("htu https", lambda k, htu, t: proof(k, htu.replace("http:", "https:"), t)),
    ("lower-case htm", lambda k, htu, t: proof(k, htu, t, htm="get")),
    ("typ missing", lambda k, htu, t: proof(k, htu, t, header={"typ": None})),
    ("jwk missing", lambda k, htu, t: proof(k, htu, t, header={"jwk": None})),
    ("alg none", lambda k, htu, t: _unsigned(k, htu, t, "none")),
    ("alg HS256 keyed with the jwk", lambda k, htu, t: _hs256(k, htu, t)),
    ("private jwk", lambda k, htu, t: proof(k, htu, t, header={"jwk": forge.private_jwk(
        k.private)})),
    ("symmetric jwk", lambda k, htu, t: proof(k, htu, t, header={"jwk": {
        "kty": "oct", "k": b64(b"0" * 32)}})),
    ("jwk of another curve", lambda k, htu, t: proof(k, htu, t, header={"jwk": _jwk(
        SigningKey("x", "ES384", ec.generate_private_key(ec.SECP384R1())))})),
    ("weak RSA jwk", lambda k, htu, t: _weak_rsa(htu, t)),
    ("kid instead of jwk", lambda k, htu, t: proof(k, htu, t, header={"jwk": None,
                                                                       "kid": "ec-1"})),
    ("jku", lambda k, htu, t: proof(k, htu, t, header={"jku": "https://attacker.invalid/"})),
    ("x5c", lambda k, htu, t: proof(k, htu, t, header={"x5c": ["AAAA"]})),
    ("crit", lambda k, htu, t: proof(k, htu, t, header={"crit": ["exp"], "exp": 1})),
    ("extra segments", lambda k, htu, t: proof(k, htu, t) + ".AAAA"),
    ("five segments", lambda k, htu, t: proof(k, htu, t) + ".AAAA.AAAA"),
    ("empty signature", lambda k, htu, t: proof(k, htu, t).rsplit(".", 1)[0] + "."),
    ("bad signature", lambda k, htu, t: _flip_last(proof(k, htu, t))),
    ("duplicate member", lambda k, htu, t: _raw_payload(
        k, htu, t, '{"jti":"a","jti":"b","htm":"GET","htu":"%s","iat":%d,"ath":"%s"}')),
    ("NaN iat", lambda k, htu, t: _raw_payload(
        k, htu, t, '{"jti":"a","htm":"GET","htu":"%s","iat":NaN,"ath":"%s"}', iat=False)),
    ("not base64url", lambda k, htu, t: "eyJ!." + proof(k, htu, t).split(".", 1)[1]),
    ("oversized", lambda k, htu, t: proof(k, htu, t, claims={"pad": "x" * 9000})),
])
async def test_a_proof_with_one_defect_is_refused(
    dproxy: Proxy, keys: KeyRing, upstream: tuple[EchoUpstream, str], name: str, make: Any,
) -> None:
    token = bound_token(keys, keys.ec)
    await assert_dpop_refused(await send(dproxy, token, make(keys.ec, htu_of(dproxy), token)))
    assert upstream[0].received == []
    # and the proxy keeps serving the same client with a good proof
    assert (await send(dproxy, token, proof(keys.ec, htu_of(dproxy), token))).status == 200


def _flip_last(value: str) -> str:
    return value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]


def _unsigned(key: SigningKey, htu: str, token: str, alg: str) -> str:
    head = b64json({"typ": "dpop+jwt", "alg": alg, "jwk": _jwk(key)})
    body = b64json({"jti": uuid.uuid4().hex, "htm": "GET", "htu": htu,
                    "iat": int(time.time()), "ath": access_token_hash(token)})
    return f"{head}.{body}."


def _hs256(key: SigningKey, htu: str, token: str) -> str:
    """Algorithm confusion: HS256 with the public jwk's JSON as the shared secret."""
    head = b64json({"typ": "dpop+jwt", "alg": "HS256", "jwk": _jwk(key)})
    body = b64json({"jti": uuid.uuid4().hex, "htm": "GET", "htu": htu,
                    "iat": int(time.time()), "ath": access_token_hash(token)})
    import hmac as _hmac
    mac = _hmac.new(json.dumps(_jwk(key)).encode(), f"{head}.{body}".encode(), hashlib.sha256)
    return f"{head}.{body}.{b64(mac.digest())}"


def _weak_rsa(htu: str, token: str) -> str:
    weak = SigningKey("w", "RS256", rsa.generate_private_key(public_exponent=65537,
                                                             key_size=1024))
    return proof(weak, htu, token)


def _raw_payload(key: SigningKey, htu: str, token: str, template: str, iat: bool = True) -> str:
    head = b64json({"typ": "dpop+jwt", "alg": key.alg, "jwk": _jwk(key)})
    values = (htu, int(time.time()), access_token_hash(token)) if iat else (
        htu, access_token_hash(token))
    body = b64((template % values).encode())
    signing_input = f"{head}.{body}".encode()
    return f"{head}.{body}.{b64(key.sign(signing_input))}"


async def test_a_bound_token_sent_as_bearer_is_refused(dproxy: Proxy, keys: KeyRing) -> None:
    token = bound_token(keys, keys.ec)
    resp = await send(dproxy, token, proof(keys.ec, htu_of(dproxy), token), scheme="Bearer")
    assert resp.status == 401
    challenges = resp.headers.getall("WWW-Authenticate")
    assert challenges[0].startswith('Bearer realm="jwtproxy", error="invalid_token"')
    assert challenges[1] == 'DPoP algs="ES256 EdDSA Ed25519 RS256 PS256"'
    # unbound tokens stay bearer tokens (mode allowed), but not as DPoP
    assert (await send(dproxy, plain_token(keys), scheme="Bearer")).status == 200
    unbound = plain_token(keys)
    await assert_dpop_refused(await send(dproxy, unbound, proof(keys.ec, htu_of(dproxy),
                                                                 unbound)))


async def test_exactly_one_proof(dproxy: Proxy, keys: KeyRing) -> None:
    token = bound_token(keys, keys.ec)
    htu = htu_of(dproxy)
    await assert_dpop_refused(await send(dproxy, token))
    await assert_dpop_refused(await send(dproxy, token, proof(keys.ec, htu, token),
                                         proof(keys.ec, htu, token)))


async def test_the_method_and_query_of_the_request(dproxy: Proxy, keys: KeyRing) -> None:
    token = bound_token(keys, keys.ec)
    htu = htu_of(dproxy)
    resp = await send(dproxy, token, proof(keys.ec, htu, token, htm="POST"), method="POST",
                      path=PATH + "?q=1")
    assert resp.status == 200, await resp.text()
    # htu ignores query and fragment (RFC 9449 §4.3 step 9), also in the proof
    resp = await send(dproxy, token, proof(keys.ec, htu + "?other#frag", token))
    assert resp.status == 200, await resp.text()


async def test_required_refuses_bearer_and_off_refuses_dpop(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], upstream: tuple[EchoUpstream, str],
    keys: KeyRing,
) -> None:
    required = await make_proxy(dpop_config(jwks[1], upstream[1], mode="required",
                                            algorithms=["ES256"]))
    resp = await send(required, plain_token(keys), scheme="Bearer")
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_token"
    (challenge,) = resp.headers.getall("WWW-Authenticate")  # no Bearer: it is never accepted
    assert challenge.startswith('DPoP error="invalid_token"') and 'algs="ES256"' in challenge
    token = bound_token(keys, keys.ed)  # EdDSA is not in this issuer's algorithms
    resp = await send(required, token, proof(keys.ed, htu_of(required), token))
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_dpop_proof"
    (challenge,) = resp.headers.getall("WWW-Authenticate")
    assert challenge.startswith('DPoP error="invalid_dpop_proof"')
    assert challenge.endswith('algs="ES256"')
    missing = await required.client.get(PATH)
    assert missing.headers.getall("WWW-Authenticate") == ['DPoP algs="ES256"']
    token = bound_token(keys, keys.ec)
    assert (await send(required, token, proof(keys.ec, htu_of(required), token))).status == 200

    off = await make_proxy(dpop_config(jwks[1], upstream[1], mode="off"))
    assert (await off.client.get(PATH)).headers.getall("WWW-Authenticate") == [
        'Bearer realm="jwtproxy"']
    resp = await send(off, token, proof(keys.ec, htu_of(off), token))
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_dpop_proof"


async def test_htu_uses_forwarded_scheme_and_host_only_from_trusted_proxies(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], upstream: tuple[EchoUpstream, str],
    keys: KeyRing,
) -> None:
    token = bound_token(keys, keys.ec)
    public = "https://api.example.com" + PATH
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
    untrusting = await make_proxy(dpop_config(jwks[1], upstream[1]))
    trusting = await make_proxy({**dpop_config(jwks[1], upstream[1]),
                                 "server": {"trusted_proxies": ["127.0.0.1/32", "::1/128"]}})
    for proxy, ok_url in ((untrusting, htu_of(untrusting)), (trusting, public)):
        for url in (public, htu_of(proxy)):
            resp = await proxy.client.get(PATH, headers={
                "Authorization": f"DPoP {token}", "DPoP": proof(keys.ec, url, token),
                **forwarded})
            assert resp.status == (200 if url == ok_url else 401), (url, await resp.text())


async def test_replay_cache_remembers_each_jti_for_its_window() -> None:
    now = [1000.0]
    cache = MemoryReplayCache(lambda: now[0], maxsize=10)
    assert await cache.first_use("k:1", 420)
    assert not await cache.first_use("k:1", 420)
    now[0] += 419
    assert not await cache.first_use("k:1", 420)
    now[0] += 2
    assert await cache.first_use("k:1", 420)


@pytest.mark.parametrize(("uri", "normal"), [
    ("HTTPS://Example.COM:443/a/b?x#y", "https://example.com/a/b"),
    ("http://example.com:80", "http://example.com/"),
    ("http://[::1]:8080/x", "http://[::1]:8080/x"),
    ("http://example.com:8080/A", "http://example.com:8080/A"),
    ("ftp://example.com/", None),
    ("http://example.com:99999/", None),
    ("/relative", None),
])
def test_htu_normalization(uri: str, normal: str | None) -> None:
    assert normalize_uri(uri) == normal


@pytest.mark.parametrize("name", ["rsa", "ec", "ed"])
def test_thumbprint_is_rfc_7638(keys: KeyRing, name: str) -> None:
    key = getattr(keys, name)
    expected = jwk.import_key(key.public_jwk()).thumbprint()
    assert thumbprint(key.public_jwk()) == thumbprint(_jwk(key)) == expected


async def test_every_corpus_token_as_a_proof_is_refused_and_the_proxy_keeps_serving(
    dproxy: Proxy, keys: KeyRing,
) -> None:
    """The hostile-token corpus (tests/corpus) sent as the DPoP proof of a good bound
    token: never accepted, always the one `dpop` answer, never a 5xx."""
    token = bound_token(keys, keys.ec)
    cases = generate.build_corpus(forge.generate_keys())
    for case in cases:
        resp = await send(dproxy, token, case.token)
        await resp.read()
        assert resp.status == 401, case.name
        assert (await resp.json())["error"] == "invalid_dpop_proof", case.name
    assert (await send(dproxy, token, proof(keys.ec, htu_of(dproxy), token))).status == 200
    assert await dproxy.metric("jwtproxy_auth_total", reason="dpop") == len(cases)


def test_proof_header_is_base64url_json() -> None:
    """The helper above builds what RFC 9449 §4.2 describes (a guard for the tests)."""
    key = SigningKey("e", "ES256", ec.generate_private_key(ec.SECP256R1()))
    head, body, _ = proof(key, "https://x.test/a", "tok").split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    assert header["typ"] == "dpop+jwt" and "d" not in header["jwk"]
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    assert claims["ath"] == access_token_hash("tok") and claims["htm"] == "GET"


async def test_forward_auth_door_checks_the_proof_against_the_original_request(
    make_door: DoorFactory, jwks: tuple[JwksEndpoint, str], keys: KeyRing,
) -> None:
    """Traefik's description of the request (X-Forwarded-Method/-Proto/-Host/-Uri, from the
    trusted gateway) is what htm and htu must match, not the subrequest itself."""
    door = await make_door(config_for(jwks[1]))
    token = bound_token(keys, keys.ec, scope="orders:read")
    original = "https://api.example.com/orders/7"
    headers = {**traefik("GET", "/orders/7?x=1"), "Authorization": f"DPoP {token}"}
    resp = await door.client.get("/", headers={**headers, "DPoP": proof(keys.ec, original,
                                                                         token)})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Auth-Subject"] == "user-1"
    for wrong in (proof(keys.ec, str(door.client.make_url("/")), token),
                  proof(keys.ec, original, token, htm="POST")):
        resp = await door.client.get("/", headers={**headers, "DPoP": wrong})
        assert resp.status == 401
        assert resp.headers.getall("WWW-Authenticate")[0].startswith(
            'DPoP error="invalid_dpop_proof"')


async def test_without_a_dpop_setting_bound_tokens_still_need_proofs_but_none_is_advertised(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], upstream: tuple[EchoUpstream, str],
    keys: KeyRing,
) -> None:
    proxy = await make_proxy(dpop_config(jwks[1], upstream[1]))  # no `dpop:` at all
    assert (await proxy.client.get(PATH)).headers.getall("WWW-Authenticate") == [
        'Bearer realm="jwtproxy"']
    token = bound_token(keys, keys.ec)
    resp = await send(proxy, token, scheme="Bearer")
    assert resp.status == 401
    assert resp.headers.getall("WWW-Authenticate")[0].startswith(
        'Bearer realm="jwtproxy", error="invalid_token"')
    assert (await send(proxy, token, proof(keys.ec, htu_of(proxy), token))).status == 200
    resp = await send(proxy, token, proof(keys.ec, htu_of(proxy), token, htm="PUT"))
    challenges = resp.headers.getall("WWW-Authenticate")
    assert challenges[0].startswith('DPoP error="invalid_dpop_proof"')  # the client used it
    assert challenges[1] == 'Bearer realm="jwtproxy"'


async def test_a_proof_replayed_to_another_replica_sharing_redis_is_refused(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str],
    upstream: tuple[EchoUpstream, str], keys: KeyRing,
) -> None:
    """Two replicas behind one name (X-Forwarded-* from a trusted balancer) on one real
    Redis (the revocation list's): a proof accepted by one is a replay at the other. With
    Redis gone, each still refuses what it saw itself and keeps serving."""
    server = start_redis()
    if server is None:
        pytest.fail("redis-server is not installed and apt-get could not install it")
    try:
        config = dpop_config(jwks[1], upstream[1], mode="allowed")
        config["server"] = {"trusted_proxies": ["127.0.0.1/32"]}
        config["revocation"] = {"redis": {"url": server.url}}
        first, second = await make_proxy(config), await make_proxy(config)
        holder = keys.ec
        token = bound_token(keys, holder)
        htu = "https://api.example" + PATH
        balancer = [("X-Forwarded-Host", "api.example"), ("X-Forwarded-Proto", "https")]

        async def present(proxy: Proxy, dpop: str) -> Any:
            return await proxy.client.get(PATH, headers=[
                ("Authorization", f"DPoP {token}"), ("DPoP", dpop), *balancer])

        good = proof(holder, htu, token)
        assert (await present(first, good)).status == 200
        await assert_dpop_refused(await present(second, good))
        assert (await present(second, proof(holder, htu, token))).status == 200
        server.stop()
        alone = proof(holder, htu, token)
        assert (await present(first, alone)).status == 200
        await assert_dpop_refused(await present(first, alone))
    finally:
        server.stop()
