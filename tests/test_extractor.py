"""Token extraction: where the token is, one place only, bounded in size."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from jwtproxy.config import TokenSource
from jwtproxy.errors import InvalidRequest, JwtProxyError, Malformed
from jwtproxy.extractor import TokenExtractor

HEADER = TokenSource("header", "Authorization")
COOKIE = TokenSource("cookie", "access_token")
QUERY = TokenSource("query", "access_token")
CUSTOM = TokenSource("header", "X-Token")
TOKEN = "aaa.bbb.ccc"


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def extract(pairs: list[tuple[str, str]], query: str = "",
            sources: tuple[TokenSource, ...] = (HEADER,), limit: int = 8192) -> str | None:
    return TokenExtractor(sources, limit).extract(headers(*pairs), query)


@pytest.mark.parametrize(("value", "token"), [
    (f"Bearer {TOKEN}", TOKEN),
    (f"bearer {TOKEN}", TOKEN),
    (f"BEARER {TOKEN}", TOKEN),
    (f"BeArEr {TOKEN}", TOKEN),
    (f"Bearer   {TOKEN}  ", TOKEN),
    (f"  Bearer {TOKEN}", TOKEN),
    ("Basic dXNlcjpwYXNz", None),
    (f"Digest {TOKEN}", None),
    (f"DPoP {TOKEN}", TOKEN),  # RFC 9449 §7.1; the proof is checked by dpop.py
    ("Negotiate", None),  # a scheme alone
    ("", None),
])
def test_authorization_header(value: str, token: str | None) -> None:
    assert extract([("Authorization", value)]) == token


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "bearer   ", f"Bearer {TOKEN} x",
                                   f"Bearer {TOKEN}\tx", f"Bearer {TOKEN}\u00e9",
                                   f"Bearer {TOKEN}\u2028x", f"Bearer {TOKEN}\u00a0x"])
def test_bearer_without_one_token_is_malformed(value: str) -> None:
    with pytest.raises(Malformed):
        extract([("Authorization", value)])


@pytest.mark.parametrize("value", [
    f"Bearer\t{TOKEN}", f"Bearer,{TOKEN}", f"Bearer:{TOKEN}", f"bearer\xa0{TOKEN}",
    f"Bearerx {TOKEN}", f"BEARER{TOKEN}", TOKEN, f"  {TOKEN}  ",
    f"Basic dXNlcjpwYXNz, Bearer {TOKEN}", f"Basic dXNlcjpwYXNz Bearer {TOKEN}",
    f"DPoP {TOKEN};bearer={TOKEN}",
])
def test_a_value_a_loose_parser_reads_as_bearer_is_malformed(value: str) -> None:
    """Issue 16: these used to count as "no token", so an optional route forwarded them
    unverified to an upstream that may split the header more loosely than we do."""
    for sources in ((HEADER,), (HEADER, COOKIE)):
        with pytest.raises(Malformed):
            extract([("Authorization", value)], sources=sources)


def test_header_name_is_case_insensitive() -> None:
    assert extract([("authorization", f"Bearer {TOKEN}")]) == TOKEN


def test_no_token() -> None:
    assert extract([]) is None
    assert extract([("Cookie", "other=1")], sources=(HEADER, COOKIE)) is None


def test_two_authorization_headers_are_ambiguous() -> None:
    with pytest.raises(InvalidRequest) as caught:
        extract([("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")])
    assert caught.value.status == 400
    assert caught.value.error == "invalid_request"
    # even when Authorization is not a configured source, and one is not Bearer
    with pytest.raises(InvalidRequest):
        extract([("Authorization", "Basic x"), ("Authorization", f"Bearer {TOKEN}")],
                sources=(COOKIE,))


@pytest.mark.parametrize(("pairs", "query"), [
    ([("Authorization", f"Bearer {TOKEN}"), ("Cookie", f"access_token={TOKEN}")], ""),
    ([("Authorization", f"Bearer {TOKEN}")], f"access_token={TOKEN}"),
    ([("Cookie", f"access_token={TOKEN}")], f"access_token={TOKEN}"),
    ([("Authorization", f"Bearer {TOKEN}"), ("X-Token", "other")], ""),
])
def test_token_in_two_places_is_ambiguous(pairs: list[tuple[str, str]], query: str) -> None:
    with pytest.raises(InvalidRequest, match="more than one place"):
        extract(pairs, query, sources=(HEADER, COOKIE, QUERY, CUSTOM))


def test_other_scheme_in_authorization_does_not_clash_with_cookie() -> None:
    pairs = [("Authorization", "Basic dXNlcjpwYXNz"), ("Cookie", f"access_token={TOKEN}")]
    assert extract(pairs, sources=(HEADER, COOKIE)) == TOKEN


@pytest.mark.parametrize(("cookies", "token"), [
    ([f"access_token={TOKEN}"], TOKEN),
    ([f"a=1; access_token={TOKEN}; b=2"], TOKEN),
    ([f"a=1;access_token={TOKEN}"], TOKEN),
    ([f'access_token="{TOKEN}"'], TOKEN),
    (["a=1", f"access_token={TOKEN}"], TOKEN),
    ([f"my_access_token={TOKEN}"], None),
    ([f"Access_Token={TOKEN}"], None),  # cookie names are case-sensitive
    (["access_token="], None),
    (["access_token"], None),
    ([], None),
])
def test_cookie_source(cookies: list[str], token: str | None) -> None:
    assert extract([("Cookie", c) for c in cookies], sources=(COOKIE,)) == token


@pytest.mark.parametrize("cookies", [
    [f"access_token={TOKEN}; access_token={TOKEN}"],
    [f"access_token={TOKEN}", "access_token=other"],
    ["access_token=; access_token=x"],
])
def test_duplicate_cookie_is_ambiguous(cookies: list[str]) -> None:
    with pytest.raises(InvalidRequest, match="more than one access_token cookie"):
        extract([("Cookie", c) for c in cookies], sources=(COOKIE,))


@pytest.mark.parametrize(("query", "token"), [
    (f"access_token={TOKEN}", TOKEN),
    (f"a=1&access_token={TOKEN}&b=2", TOKEN),
    ("access_token=a%2Eb.c", "a.b.c"),
    ("access_token=", None),
    (f"my_access_token={TOKEN}", None),
    ("", None),
])
def test_query_source(query: str, token: str | None) -> None:
    assert extract([], query, sources=(QUERY,)) == token


def test_duplicate_query_parameter_is_ambiguous() -> None:
    with pytest.raises(InvalidRequest, match="more than one access_token query parameter"):
        extract([], f"access_token={TOKEN}&access_token={TOKEN}", sources=(QUERY,))


@pytest.mark.parametrize("name", [
    "access%5Ftoken", "access%5ftoken", "%61ccess_token", "%61%63%63%65%73%73%5F%74%6F%6B%65%6E",
    "ACCESS_TOKEN", "Access%5FToken",
])
def test_query_names_are_compared_decoded(name: str) -> None:
    """Issue 16: `?access%5Ftoken=` escaped the one-place rule (a raw substring test)."""
    assert extract([], f"{name}={TOKEN}", sources=(QUERY,)) == TOKEN
    with pytest.raises(InvalidRequest, match="more than one place"):
        extract([("Authorization", f"Bearer {TOKEN}")], f"{name}=forged",
                sources=(HEADER, QUERY))
    with pytest.raises(InvalidRequest, match="more than one access_token query parameter"):
        extract([], f"access_token={TOKEN}&{name}=forged", sources=(QUERY,))


def test_a_semicolon_separates_query_parameters_too() -> None:
    with pytest.raises(InvalidRequest, match="more than one place"):
        extract([("Authorization", f"Bearer {TOKEN}")], "a=1;access_token=forged",
                sources=(HEADER, QUERY))
    assert extract([], f"a=1;access_token={TOKEN}", sources=(QUERY,)) == TOKEN


def test_query_ignored_unless_configured() -> None:
    assert extract([], f"access_token={TOKEN}") is None


@pytest.mark.parametrize(("value", "token"), [
    (TOKEN, TOKEN), (f"Bearer {TOKEN}", TOKEN), (f"bearer {TOKEN}", TOKEN),
    ("Basic x", None),
])
def test_custom_header_takes_a_bare_token(value: str, token: str | None) -> None:
    assert extract([("X-Token", value)], sources=(CUSTOM,)) == token


def test_duplicate_custom_header_is_ambiguous() -> None:
    with pytest.raises(InvalidRequest, match="more than one X-Token header"):
        extract([("X-Token", TOKEN), ("x-token", TOKEN)], sources=(CUSTOM,))


def test_unconfigured_places_are_ignored() -> None:
    assert extract([("Cookie", f"access_token={TOKEN}")]) is None
    assert extract([("Authorization", f"Bearer {TOKEN}")], sources=(COOKIE,)) is None


@pytest.mark.parametrize(("token", "ok"), [
    ("a" * 64, True), ("a" * 65, False),
    ("é" * 32, True), ("é" * 33, False),  # bytes, not characters
])
def test_max_token_bytes(token: str, ok: bool) -> None:
    # (a Bearer token is ASCII: a non-ASCII one is malformed in Authorization at any size)
    bearer = [([("Authorization", f"Bearer {token}")], "", (HEADER,))] if token.isascii() else []
    for pairs, query, sources in [
        *bearer,
        ([("Cookie", f"access_token={token}")], "", (COOKIE,)),
        ([], f"access_token={token}", (QUERY,)),
    ]:
        if ok:
            assert extract(pairs, query, sources, limit=64) == token
        else:
            with pytest.raises(Malformed, match="token larger than 64 bytes") as caught:
                extract(pairs, query, sources, limit=64)
            assert (caught.value.status, caught.value.reason) == (401, "malformed")


def test_errors_are_jwtproxy_errors() -> None:
    for call in (
        lambda: extract([("Authorization", "Bearer")]),
        lambda: extract([("Authorization", "a"), ("Authorization", "b")]),
    ):
        with pytest.raises(JwtProxyError):
            call()


@pytest.mark.parametrize(("pairs", "sources", "dpop"), [
    ([("Authorization", f"DPoP {TOKEN}")], (HEADER,), True),
    ([("Authorization", f"dpop {TOKEN}")], (HEADER,), True),
    ([("Authorization", f"Bearer {TOKEN}")], (HEADER,), False),
    ([("X-Token", TOKEN), ("Authorization", f"DPoP {TOKEN}")], (CUSTOM,), False),
])
def test_presented_as_dpop(
    pairs: list[tuple[str, str]], sources: tuple[TokenSource, ...], dpop: bool,
) -> None:
    extractor = TokenExtractor(sources, 8192)
    assert extractor.extract(headers(*pairs), "") == TOKEN
    assert extractor.presented_as_dpop(headers(*pairs)) is dpop
