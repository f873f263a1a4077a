"""jwtproxy in front of a reflecting upstream, with tokens from panva/oidc-provider.

Issuers are configured by discovery only (`issuer:` URL, no `jwks_uri`) over plain http on
loopback. Access tokens are RFC 9068 JWTs (`typ: at+jwt`) for the resource
`https://api.test`; ID tokens (no `typ`) come from a real authorization-code flow.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from interop_support import (
    API_AUDIENCE,
    CLIENT_SECRET,
    OTHER_AUDIENCE,
    EchoUpstream,
    OidcIssuer,
    ProxyProcess,
    assert_insufficient_scope,
    assert_invalid_token,
    auth_total,
    describe,
    jwt_parts,
    metric_sum,
    metrics_text,
    proxy_get,
    proxy_process,
)

pytestmark = pytest.mark.interop

BOTH_ALGS = ["RS256", "ES256"]


def _issuer(url: str, audience: str = API_AUDIENCE, **extra: Any) -> dict[str, Any]:
    return {"issuer": url, "audiences": [audience], "algorithms": BOTH_ALGS, **extra}


def _route(name: str, upstream: str, issuer: str, **auth: Any) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"path_prefix": f"/{name}"},
        "upstream": upstream,
        "auth": {"issuers": [issuer], **auth},
        "forward": {
            "claims": {
                "sub": "X-Auth-Subject",
                "client_id": "X-Auth-Client",
                "scope": "X-Auth-Scope",
            },
        },
    }


def oidc_config(issuer: OidcIssuer, upstream: EchoUpstream) -> dict[str, Any]:
    url, up = issuer.url, upstream.url
    return {
        "issuers": {
            "op": _issuer(url, typ="at+jwt"),
            "op-untyped": _issuer(url),  # no typ configured: default explicit-typing rules
            "op-typ-jwt": _issuer(url, typ="JWT"),
            "op-rs-only": _issuer(url, algorithms=["RS256"]),
            "op-web": _issuer(url, "web", algorithms=["RS256"]),  # ID tokens of client `web`
            "op-web-at": _issuer(url, "web", algorithms=["RS256"], typ="at+jwt"),
        },
        "routes": [
            _route("read", up, "op", scopes=["orders:read"]),
            _route("write", up, "op", scopes=["orders:write"]),
            _route("any", up, "op"),
            _route("untyped", up, "op-untyped"),
            _route("typ-jwt", up, "op-typ-jwt"),
            _route("rs-only", up, "op-rs-only"),
            _route("web", up, "op-web"),
            _route("web-at", up, "op-web-at"),
        ],
    }


@pytest.fixture(scope="module")
def proxy(oidc_issuer: OidcIssuer, echo_upstream: EchoUpstream) -> Iterator[ProxyProcess]:
    with proxy_process(oidc_config(oidc_issuer, echo_upstream)) as proc:
        yield proc


@pytest.fixture(scope="module")
def id_token(oidc_issuer: OidcIssuer) -> str:
    return oidc_issuer.id_token()


def denied(proxy: ProxyProcess, route: str, reason: str) -> float:
    return auth_total(metrics_text(proxy), route=route, result="denied", reason=reason)


# ----------------------------------------------------------------------------- tests


def test_discovery_only_issuer_is_ready(proxy: ProxyProcess) -> None:
    # proxy_process waited for /readyz: keys came through discovery -> jwks_uri.
    text = metrics_text(proxy)
    assert metric_sum(text, "jwtproxy_jwks_keys", issuer="op") >= 2


@pytest.mark.parametrize("alg", BOTH_ALGS)
def test_scope_granted(
    proxy: ProxyProcess, oidc_issuer: OidcIssuer, echo_upstream: EchoUpstream, alg: str
) -> None:
    token = oidc_issuer.access_token("orders:read", alg=alg)
    resp = proxy_get(proxy, "/read/orders/1", token)
    assert resp.status == 200, describe(resp)
    seen = echo_upstream.headers_of(resp)
    assert seen["x-auth-subject"] == [f"svc-{alg.lower()}"]
    assert seen["x-auth-client"] == [f"svc-{alg.lower()}"]
    assert seen["x-auth-scope"] == ["orders:read"]


@pytest.mark.parametrize("alg", BOTH_ALGS)
def test_scope_missing(proxy: ProxyProcess, oidc_issuer: OidcIssuer, alg: str) -> None:
    token = oidc_issuer.access_token("orders:read", alg=alg)
    before = denied(proxy, "write", "scope")
    assert_insufficient_scope(proxy_get(proxy, "/write/orders", token), "orders:write")
    assert denied(proxy, "write", "scope") == before + 1


def test_both_scopes(proxy: ProxyProcess, oidc_issuer: OidcIssuer) -> None:
    token = oidc_issuer.access_token("orders:read orders:write", alg="ES256")
    assert proxy_get(proxy, "/write/orders", token).status == 200
    assert proxy_get(proxy, "/read/orders", token).status == 200


def test_token_without_scope_forbidden(proxy: ProxyProcess, oidc_issuer: OidcIssuer) -> None:
    token = oidc_issuer.access_token("")
    assert "scope" not in jwt_parts(token)[1]
    assert proxy_get(proxy, "/any/x", token).status == 200
    assert_insufficient_scope(proxy_get(proxy, "/read/x", token), "orders:read")


def test_wrong_audience(proxy: ProxyProcess, oidc_issuer: OidcIssuer) -> None:
    token = oidc_issuer.access_token("other:read", resource=OTHER_AUDIENCE)
    before = denied(proxy, "any", "audience")
    assert_invalid_token(proxy_get(proxy, "/any/x", token))
    assert denied(proxy, "any", "audience") == before + 1


def test_alg_not_allowed(proxy: ProxyProcess, oidc_issuer: OidcIssuer) -> None:
    assert proxy_get(proxy, "/rs-only/x", oidc_issuer.access_token(alg="RS256")).status == 200
    before = denied(proxy, "rs-only", "alg")
    assert_invalid_token(proxy_get(proxy, "/rs-only/x", oidc_issuer.access_token(alg="ES256")))
    assert denied(proxy, "rs-only", "alg") == before + 1


def test_at_jwt_accepted_without_typ_configured(
    proxy: ProxyProcess, oidc_issuer: OidcIssuer
) -> None:
    # DESIGN: with no typ configured, `at+jwt` is one of the accepted values.
    assert proxy_get(proxy, "/untyped/x", oidc_issuer.access_token()).status == 200


def test_at_jwt_refused_where_typ_jwt_required(
    proxy: ProxyProcess, oidc_issuer: OidcIssuer
) -> None:
    before = denied(proxy, "typ-jwt", "typ")
    assert_invalid_token(proxy_get(proxy, "/typ-jwt/x", oidc_issuer.access_token()))
    assert denied(proxy, "typ-jwt", "typ") == before + 1


def test_id_token_accepted_where_untyped_tokens_allowed(
    proxy: ProxyProcess, id_token: str, echo_upstream: EchoUpstream
) -> None:
    # Control for the next test: the same ID token passes every other check.
    resp = proxy_get(proxy, "/web/x", id_token)
    assert resp.status == 200, describe(resp)
    assert echo_upstream.headers_of(resp)["x-auth-subject"] == ["alice"]


def test_id_token_refused_where_at_jwt_required(proxy: ProxyProcess, id_token: str) -> None:
    # RFC 9068 §4 / RFC 8725 §3.11: an ID token (no typ) must not pass as an access token.
    before = denied(proxy, "web-at", "typ")
    assert_invalid_token(proxy_get(proxy, "/web-at/x", id_token))
    assert denied(proxy, "web-at", "typ") == before + 1


def test_id_token_refused_for_the_api(proxy: ProxyProcess, id_token: str) -> None:
    assert_invalid_token(proxy_get(proxy, "/any/x", id_token))


# ----------------------------------------------------------------------------- rotation

LOAD_REQUESTS = 300
LOAD_SECONDS = 3.0  # the fixed count is paced over this long
# the rotation (the issuer generates keys) can finish late on a busy machine: the load goes
# on, at the same pace, until this many requests went out after it (bounded by MAX_REQUESTS)
MIN_AFTER_ROTATION = 100
MAX_REQUESTS = 900
LOAD_CONCURRENCY = 8
ROTATE_AFTER = LOAD_REQUESTS // 2  # completed requests before the issuer rotates its keys
REMINT_EVERY = 4  # each worker fetches a fresh token every few requests
REFRESH_MIN_INTERVAL = 1.0


@dataclass
class Outcome:
    status: int
    kid: str
    after_rotation: bool
    body: bytes


@dataclass
class RotationProxy:
    proc: ProxyProcess
    ready_at: float  # time.monotonic() when /readyz answered: the first JWKS fetch was before


@pytest.fixture
def rotation_proxy(oidc_issuer: OidcIssuer, echo_upstream: EchoUpstream) -> Iterator[RotationProxy]:
    config = {
        "issuers": {
            "op": _issuer(
                oidc_issuer.url,
                typ="at+jwt",
                jwks={"refresh_min_interval": f"{REFRESH_MIN_INTERVAL:g}s", "cache_ttl": "10m"},
            ),
        },
        "routes": [_route("read", echo_upstream.url, "op", scopes=["orders:read"])],
    }
    with proxy_process(config) as proc:
        yield RotationProxy(proc, time.monotonic())


async def test_key_rotation_under_load(
    rotation_proxy: RotationProxy, oidc_issuer: OidcIssuer
) -> None:
    """The issuer rotates mid-load; fresh tokens with the new kid must all get through.

    300 requests (more if the rotation ends late: until 100 went out after it) paced over
    ~3 s by 8 concurrent clients, each fetching a fresh token from
    the issuer every few requests and replaying its first (pre-rotation) token now and then.
    Half-way, and at least refresh_min_interval after the proxy's first JWKS fetch (so the
    rate limit cannot legitimately refuse the refresh), the issuer swaps in new signing keys
    while still publishing the old ones. The proxy meets the new kid as unknown, refreshes
    once (single-flight across the concurrent requests carrying it), and keeps the old keys.
    """
    proxy = rotation_proxy.proc
    refreshes_before = metric_sum(metrics_text(proxy), "jwtproxy_jwks_refresh_total", issuer="op")
    old_kids = set(oidc_issuer.keys_state()["signing"].values())
    new_kids: set[str] = set()
    outcomes: list[Outcome] = []
    rotated = asyncio.Event()
    rotation: list[asyncio.Task[None]] = []
    counter = itertools.count()
    token_url = f"{oidc_issuer.url}/token"
    form = oidc_issuer.token_form("orders:read")
    rotate_not_before = rotation_proxy.ready_at + REFRESH_MIN_INTERVAL + 0.2
    pace = LOAD_SECONDS / LOAD_REQUESTS
    loop = asyncio.get_running_loop()

    async def mint(session: aiohttp.ClientSession, alg: str) -> str:
        basic = base64.b64encode(f"svc-{alg.lower()}:{CLIENT_SECRET}".encode()).decode()
        headers = {"Authorization": f"Basic {basic}"}
        async with session.post(token_url, data=form, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["access_token"]
            assert isinstance(token, str)
            return token

    async def rotate(session: aiohttp.ClientSession) -> None:
        async with session.post(f"{oidc_issuer.url}/__test/rotate") as resp:
            assert resp.status == 200, await resp.text()
            new_kids.update((await resp.json())["signing"].values())
        rotated.set()

    async def worker(session: aiohttp.ClientSession, n: int, start: float) -> None:
        alg = BOTH_ALGS[n % 2]
        token = first_token = await mint(session, alg)
        sent = 0
        while (i := next(counter)) < LOAD_REQUESTS or (
                i < MAX_REQUESTS and sum(o.after_rotation for o in outcomes) < MIN_AFTER_ROTATION):
            delay = start + i * pace - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing of a fixed-count load, not a readiness wait
            if sent and sent % REMINT_EVERY == 0:
                token = await mint(session, alg)
            use = first_token if sent % 5 == 4 else token
            after = rotated.is_set()
            async with session.get(
                f"{proxy.url}/read/orders", headers={"Authorization": f"Bearer {use}"}
            ) as resp:
                body = await resp.read()
            outcomes.append(Outcome(resp.status, jwt_parts(use)[0]["kid"], after, body))
            sent += 1
            if (
                not rotation
                and len(outcomes) >= ROTATE_AFTER
                and time.monotonic() >= rotate_not_before
            ):
                rotation.append(asyncio.create_task(rotate(session)))

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = loop.time()
        await asyncio.gather(*(worker(session, n, start) for n in range(LOAD_CONCURRENCY)))
        for task in rotation:
            await task

    assert rotated.is_set(), "the load ended before the rotation could start"
    assert LOAD_REQUESTS <= len(outcomes) <= MAX_REQUESTS
    refused = [o for o in outcomes if o.status != 200]
    assert not refused, (
        f"{len(refused)} of {len(outcomes)} valid-token requests refused; first: "
        f"{refused[0]!r}; old kids {sorted(old_kids)}, new kids {sorted(new_kids)}\n"
        f"{proxy.logs()[-3000:]}"
    )
    with_new_kid = [o for o in outcomes if o.kid in new_kids]
    old_kid_late = [o for o in outcomes if o.kid in old_kids and o.after_rotation]
    assert len(with_new_kid) >= 50, f"only {len(with_new_kid)} requests carried a new kid"
    assert old_kid_late, "no pre-rotation token was sent after the rotation"
    text = metrics_text(proxy)
    refreshes = metric_sum(text, "jwtproxy_jwks_refresh_total", issuer="op") - refreshes_before
    # One new generation of kids, many concurrent requests carrying it: one fetch.
    assert refreshes == 1, text
    assert auth_total(text, route="read", reason="unknown_kid") == 0, text
