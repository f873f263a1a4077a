"""Hostile request targets and credentials from the security review (issue 16), as raw
HTTP/1.1 over sockets against the proxy on a real port in front of a raw-socket upstream
that records every request it receives."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from jwtproxy.explain import build_report
from jwtproxy.loader import load_text
from tests.conftest import ProxyFactory, base_config
from tests.test_hostile_clients import (
    Jwks,
    RawUpstream,
    exchange,
    good_token,
    raw_upstream,
    request,
)
from tests.tokens import KeyRing

__all__ = ["raw_upstream"]  # the fixture, used by name below


def admin_then_public(jwks_url: str, upstream_url: str) -> dict[str, Any]:
    """The review's config: `/admin` needs a token, `/orders` a scope, the rest is public."""
    config = base_config(jwks_url, upstream_url)
    config["routes"] = [
        {"name": "admin", "match": {"path_prefix": "/admin"}, "upstream": upstream_url},
        {"name": "orders", "match": {"path_prefix": "/orders"}, "upstream": upstream_url,
         "auth": {"scopes": ["orders:write"]}},
        {"name": "public", "match": {"path_prefix": "/"}, "upstream": upstream_url,
         "auth": "none"},
    ]
    return config


# -- 1. a fragment in the target ----------------------------------------------------------

FRAGMENTS = ["/admin#x", "/admin#", "/admin/#/../../x", "/admin?a=1#x", "/x#/../admin",
             "/orders#x", "/orders/1#"]


@pytest.mark.parametrize("target", FRAGMENTS)
async def test_a_fragment_in_the_target_is_refused_and_never_forwarded(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream, keys: KeyRing, target: str
) -> None:
    """`GET /admin#x` used to be matched as a path outside `/admin` (public) and forwarded
    as is; every upstream parser reads it as `/admin` (RFC 9112 §3.2: no `#` in a target)."""
    proxy = await make_proxy(admin_then_public(jwks[1], raw_upstream.url))
    auth = f"Authorization: Bearer {good_token(keys)}"  # a token without orders:write
    for headers in (["Host: a"], ["Host: a", auth]):
        client = await exchange(proxy.client.port, request(target, *headers))
        assert [a.status for a in client.answers] == [400], target
        assert b"invalid_request" in client.answers[0].body
    assert raw_upstream.requests == []
    # an encoded `#` is a path character: the segment `admin#x` is not `/admin`
    client = await exchange(proxy.client.port, request("/admin%23x", "Host: a"))
    assert [a.status for a in client.answers] == [200]
    assert raw_upstream.paths() == ["/admin%23x"]


@pytest.mark.parametrize("target", [*FRAGMENTS, "/admin;x=1", "/x/..;/admin", "/admin%3Bx"])
async def test_explain_refuses_a_fragment_or_path_parameters_too(jwks: Jwks, target: str) -> None:
    """The refusals are in `Gate.decide`, so every door that decides gets them."""
    import yaml

    config = load_text(yaml.safe_dump(admin_then_public(jwks[1], "http://127.0.0.1:9")))
    report = await build_report(config, "GET", "a", target, "", offline=True)
    assert report.decision.status == 400
    assert report.decision.route is None


# -- 2. path parameters -------------------------------------------------------------------

PARAMS = ["/admin;x=1", "/admin;", "/admin;jsessionid=1/users", "/orders;jsessionid=1/1",
          "/x/..;/admin", "/admin%3Bx=1", "/admin%3bx", "/x;a=b/../admin", "/x?q=;"]


@pytest.mark.parametrize("target", PARAMS[:-1])
async def test_path_parameters_are_refused_and_never_forwarded(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream, keys: KeyRing, target: str
) -> None:
    """Tomcat, Jetty and Spring serve `/admin;x=1` as `/admin`; the proxy matched it as
    another path and forwarded it as is. Now 400, with or without a token."""
    proxy = await make_proxy(admin_then_public(jwks[1], raw_upstream.url))
    auth = f"Authorization: Bearer {good_token(keys)}"
    for headers in (["Host: a"], ["Host: a", auth]):
        client = await exchange(proxy.client.port, request(target, *headers))
        assert [a.status for a in client.answers] == [400], target
        assert b"invalid_request" in client.answers[0].body
    assert raw_upstream.requests == []


async def test_a_semicolon_in_the_query_is_not_a_path_parameter(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream
) -> None:
    proxy = await make_proxy(admin_then_public(jwks[1], raw_upstream.url))
    client = await exchange(proxy.client.port, request(PARAMS[-1], "Host: a"))
    assert [a.status for a in client.answers] == [200]
    assert raw_upstream.paths() == [PARAMS[-1]]


# -- 3. encoded query names ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["access%5Ftoken", "%61ccess_token", "ACCESS_TOKEN"])
async def test_an_encoded_query_name_counts_as_a_second_token(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream, keys: KeyRing, name: str
) -> None:
    """A valid header token plus `?access%5Ftoken=<forged>` used to reach the upstream
    with both (the plain name was 400): the upstream decodes the name and may take it."""
    config = base_config(jwks[1], raw_upstream.url,
                         tokens=[{"header": "Authorization"}, {"query": "access_token"}])
    proxy = await make_proxy(config)
    auth = f"Authorization: Bearer {good_token(keys)}"
    for query in (f"{name}=forged", f"a=1&{name}=forged", f"a=1;{name}=forged"):
        client = await exchange(proxy.client.port, request(f"/orders/1?{query}", "Host: a", auth))
        assert [a.status for a in client.answers] == [400], query
        assert b"invalid_request" in client.answers[0].body
    assert raw_upstream.requests == []
    client = await exchange(proxy.client.port, request(f"/orders/1?{name}={good_token(keys)}",
                                                       "Host: a"))
    assert [a.status for a in client.answers] == [200]  # the one place it is in


# -- 4. bearer-like values on optional routes ---------------------------------------------


@pytest.mark.parametrize("mode", ["optional", "required"])
@pytest.mark.parametrize("shape", ["Bearer\t{}", "Bearer,{}", "Bearer:{}", "Bearerx {}", "{}",
                                   "Basic dXNlcjpwYXNz, Bearer {}"])
async def test_an_unparseable_bearer_value_is_malformed_in_every_mode(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream, keys: KeyRing,
    mode: str, shape: str
) -> None:
    """`Bearer\\t<forged>` on an optional route used to count as "no token" and reach the
    upstream byte for byte: an upstream splitting on whitespace reads a token nobody
    verified. Now 401 like every other malformed token, and nothing is forwarded."""
    config = base_config(jwks[1], raw_upstream.url)
    config["routes"][2]["auth"] = {"mode": mode}
    proxy = await make_proxy(config)
    for token in ("forged.forged.forged", good_token(keys)):
        client = await exchange(proxy.client.port, request(
            "/anything", "Host: a", "Authorization: " + shape.format(token)))
        assert [a.status for a in client.answers] == [401], (mode, shape)
        assert client.answers[0].header("WWW-Authenticate") is not None
    assert raw_upstream.requests == []
    if mode == "optional":
        client = await exchange(proxy.client.port, request("/anything", "Host: a"))
        assert [a.status for a in client.answers] == [200]  # no token at all still passes
        assert raw_upstream.requests[-1].header("Authorization") is None


# -- 5. the refusal cache and issuers that share an iss -----------------------------------


async def test_a_token_not_valid_yet_passes_once_valid_though_another_issuer_refused_it(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream, keys: KeyRing
) -> None:
    """`strict` (typ at+jwt) and `loose` share one iss; a `typ: JWT` token with nbf in
    2 s was refused for `strict`'s lasting typ error and that refusal was remembered for
    300 s, hiding that `loose` accepts the token once its nbf has passed."""
    config = base_config(jwks[1], raw_upstream.url)
    main = config["issuers"].pop("main")
    config["issuers"]["strict"] = {**main, "typ": "at+jwt", "leeway": "0s"}
    config["issuers"]["loose"] = {**main, "leeway": "0s"}
    config["routes"][2]["auth"] = {"issuers": ["strict", "loose"]}
    proxy = await make_proxy(config)
    now = int(time.time())
    head = request("/x", "Host: a", f"Authorization: Bearer {good_token(keys, nbf=now + 2)}")
    client = await exchange(proxy.client.port, head)
    assert [a.status for a in client.answers] == [401]
    deadline = time.monotonic() + 10
    statuses: list[int] = []
    while time.monotonic() < deadline and statuses[-1:] != [200]:
        await asyncio.sleep(0.25)  # polling for the nbf to pass (real clock, real proxy)
        client = await exchange(proxy.client.port, head)
        statuses.extend(a.status for a in client.answers)
    assert statuses[-1:] == [200], statuses
    assert len(raw_upstream.requests) == 1


# -- 6. list claims joined with "," -------------------------------------------------------


async def test_a_list_claim_with_a_comma_in_a_member_is_not_sent(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream, keys: KeyRing
) -> None:
    """`groups: ["viewer,admin"]` and `["viewer", "admin"]` both became `viewer,admin`."""
    proxy = await make_proxy(base_config(jwks[1], raw_upstream.url))
    sent = []
    for groups in (["viewer,admin"], ["viewer", "admin"], ['"viewer', 'admin"']):
        auth = f"Authorization: Bearer {good_token(keys, groups=groups)}"
        client = await exchange(proxy.client.port, request("/orders/1", "Host: a", auth,
                                                           "X-Auth-Groups: spoofed"))
        assert [a.status for a in client.answers] == [200]
        sent.append(raw_upstream.requests[-1].header_all("X-Auth-Groups"))
    assert sent == [[], ["viewer,admin"], []]


@pytest.mark.parametrize("query", ["ACCESS_TOKEN={}", "a=1;access_token={}", "access%5Ftoken={}&b"])
async def test_strip_removes_every_spelling_the_extractor_takes_as_the_token(
    make_proxy: ProxyFactory, jwks: Jwks, raw_upstream: RawUpstream, keys: KeyRing, query: str
) -> None:
    """What the extractor verifies as the token, `forward.authorization: strip` removes."""
    config = base_config(jwks[1], raw_upstream.url,
                         tokens=[{"header": "Authorization"}, {"query": "access_token"}])
    config["routes"][1]["forward"]["authorization"] = "strip"
    proxy = await make_proxy(config)
    token = good_token(keys)
    client = await exchange(proxy.client.port, request(f"/orders/1?{query.format(token)}",
                                                       "Host: a"))
    assert [a.status for a in client.answers] == [200]
    (seen,) = raw_upstream.requests
    assert token not in seen.target and seen.target.startswith("/orders/1")
