"""Header rewriting: hop-by-hop, strip-before-inject, claim values, X-Forwarded-*."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from jwtproxy.config import Forward, Match, Route, TokenSource
from jwtproxy.headers import (
    CredentialStrip,
    HeaderPlan,
    TrustedProxies,
    claim_header_value,
    normalized_name,
    response_headers,
)

CLAIMS: dict[str, Any] = {
    "sub": "user-1",
    "email": "u@example.com",
    "cognito:groups": ["admin", "dev"],
    "address": {"city": "Zürich", "zip": 8000},
    "email_verified": True,
    "age": 42,
}
FORWARD = Forward(claims=(("sub", "X-Auth-Subject"), ("email", "X-Auth-Email"),
                          ("cognito:groups", "X-Auth-Groups"), ("address", "X-Auth-Address"),
                          ("email_verified", "X-Auth-Verified"), ("age", "X-Auth-Age"),
                          ("missing", "X-Auth-Missing")),
                  payload_header="X-Auth-Claims")
STRIPPED = frozenset({"X-Auth-Subject", "X-Auth-Email", "X-Auth-Groups", "X-Auth-Address",
                      "X-Auth-Verified", "X-Auth-Age", "X-Auth-Missing", "X-Auth-Claims",
                      "X-Other-Route"})


def plan(forward: Forward = FORWARD, trusted: tuple[str, ...] = ()) -> HeaderPlan:
    route = Route("r", "http://127.0.0.1:1", Match(), forward=forward)
    return HeaderPlan(route, STRIPPED, TrustedProxies(trusted))


def rewrite(pairs: list[tuple[str, str]], claims: dict[str, Any] | None = None,
            peer: str | None = "203.0.113.7", scheme: str = "http",
            forward: Forward = FORWARD, trusted: tuple[str, ...] = ()) -> CIMultiDict[str]:
    incoming = CIMultiDictProxy(CIMultiDict(pairs))
    return plan(forward, trusted).request_headers(incoming, claims, peer, scheme, "req-1")


@pytest.mark.parametrize("name", [
    "Connection", "Keep-Alive", "Proxy-Authorization", "Proxy-Authenticate",
    "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade", "keep_alive",
    "Expect",
])
def test_hop_by_hop_dropped(name: str) -> None:
    out = rewrite([(name, "x"), ("Accept", "*/*")])
    assert name not in out
    assert out["Accept"] == "*/*"


def test_headers_named_by_connection_dropped() -> None:
    out = rewrite([("Connection", "close, X-Secret"), ("Connection", "x_other"),
                   ("X-Secret", "1"), ("X-Other", "2"), ("X-Kept", "3")])
    assert "X-Secret" not in out and "X-Other" not in out
    assert out["X-Kept"] == "3"


@pytest.mark.parametrize("name", [
    "X-Auth-Subject", "x-auth-subject", "X-AUTH-SUBJECT", "x_auth_subject", "X_Auth-Subject",
    "X-Auth-Claims", "x_auth_claims", "X-Other-Route", "X-Auth-Missing",
])
def test_client_copies_of_claim_headers_stripped(name: str) -> None:
    for claims in (CLAIMS, None):  # also on routes that inject nothing (public)
        out = rewrite([(name, "forged")], claims)
        assert "forged" not in out.values()


def test_claims_injected() -> None:
    out = rewrite([("X-Auth-Subject", "forged"), ("x_auth_subject", "forged")], CLAIMS)
    assert out.getall("X-Auth-Subject") == ["user-1"]
    assert out["X-Auth-Email"] == "u@example.com"
    assert out["X-Auth-Groups"] == "admin,dev"
    assert out["X-Auth-Address"] == '{"city":"Zürich","zip":8000}'
    assert out["X-Auth-Verified"] == "true"
    assert out["X-Auth-Age"] == "42"
    assert "X-Auth-Missing" not in out


def test_payload_header_is_base64url_json() -> None:
    claims = {**CLAIMS, "note": "??>>"}  # bytes that differ between base64 alphabets
    value = rewrite([], claims)["X-Auth-Claims"]
    assert "=" not in value and "+" not in value and "/" not in value
    decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    assert json.loads(decoded) == claims
    assert b" " not in decoded  # compact


def test_no_claims_no_injection() -> None:
    out = rewrite([("Accept", "x")], None)
    assert not any(name.startswith("X-Auth") for name in out)


@pytest.mark.parametrize(("value", "text"), [
    ("plain", "plain"),
    ("", ""),
    (7, "7"),
    (-1, "-1"),
    (1.5, "1.5"),
    (True, "true"),
    (False, "false"),
    (["a", "b", "c"], "a,b,c"),
    ([], ""),
    (["a", 1, True], "a,1,true"),
    ({"b": 1, "a": [1, 2]}, '{"b":1,"a":[1,2]}'),
    ({"k": "line\nbreak"}, '{"k":"line\\nbreak"}'),  # JSON escapes it: safe
    ("café ☕", "café ☕"),
    (None, None),
    ("a\r\nX-Injected: 1", None),
    ("a\nb", None),
    ("a\x00b", None),
    ("a\x7fb", None),
    ("tab\there", None),
    (["ok", "bad\nvalue"], None),  # not silently shortened to "ok"
    (["ok", None], None),
    ("\ud800", None),
    ("Doe, John", "Doe, John"),  # a string is one value, commas and all
    # a list member must read back as itself after a split on "," (issue 16)
    (["viewer,admin"], None),
    (["viewer", "a,b"], None),
    (['"viewer', 'admin"'], None),
    ([" admin"], None),
    (["admin "], None),
    ([""], None),
    (["a", ["b", "c"]], None),
    ([{"a": 1}], None),
])
def test_claim_header_value(value: Any, text: str | None) -> None:
    assert claim_header_value(value) == text


def test_refused_value_is_not_sent_and_forgery_still_stripped() -> None:
    out = rewrite([("X-Auth-Subject", "forged")], {**CLAIMS, "sub": "evil\r\nX-Admin: 1"})
    assert "X-Auth-Subject" not in out
    assert "X-Admin" not in out


def test_x_forwarded_for_appended() -> None:
    assert rewrite([])["X-Forwarded-For"] == "203.0.113.7"
    assert rewrite([("X-Forwarded-For", "198.51.100.1")])["X-Forwarded-For"] == (
        "198.51.100.1, 203.0.113.7")
    out = rewrite([("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "10.0.0.1")])
    assert out.getall("X-Forwarded-For") == ["198.51.100.1, 10.0.0.1, 203.0.113.7"]
    assert rewrite([], peer=None)["X-Forwarded-For"] == "unknown"


def test_x_forwarded_proto_and_host_overwritten_for_untrusted_peer() -> None:
    out = rewrite([("Host", "api.example.com"), ("X-Forwarded-Proto", "https"),
                   ("X-Forwarded-Host", "evil.test")], scheme="http")
    assert out.getall("X-Forwarded-Proto") == ["http"]
    assert out.getall("X-Forwarded-Host") == ["api.example.com"]


def test_x_forwarded_proto_and_host_kept_from_trusted_proxy() -> None:
    pairs = [("Host", "internal:8080"), ("X-Forwarded-Proto", "https"),
             ("X-Forwarded-Host", "api.example.com")]
    out = rewrite(pairs, peer="10.1.2.3", trusted=("10.0.0.0/8",))
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Forwarded-Host") == ["api.example.com"]
    # a trusted proxy that sent none: ours
    out = rewrite([("Host", "internal:8080")], peer="10.1.2.3", scheme="https",
                  trusted=("10.0.0.0/8",))
    assert (out["X-Forwarded-Proto"], out["X-Forwarded-Host"]) == ("https", "internal:8080")
    # a peer outside the trusted networks
    out = rewrite(pairs, peer="11.1.2.3", trusted=("10.0.0.0/8",))
    assert (out["X-Forwarded-Proto"], out["X-Forwarded-Host"]) == ("http", "internal:8080")


def test_forwarded() -> None:
    out = rewrite([("Host", "api.example.com"), ("Forwarded", "for=1.2.3.4;proto=https")])
    assert out.getall("Forwarded") == ['for=203.0.113.7;proto=http;host="api.example.com"']
    out = rewrite([("Host", "h"), ("Forwarded", "for=1.2.3.4")], peer="10.0.0.9",
                  trusted=("10.0.0.0/8",))
    assert out.getall("Forwarded") == ['for=1.2.3.4, for=10.0.0.9;proto=http;host="h"']
    assert rewrite([], peer="2001:db8::1", scheme="https")["Forwarded"] == (
        'for="[2001:db8::1]";proto=https')
    assert rewrite([], peer=None)["Forwarded"] == "for=unknown;proto=http"


def test_forwarded_host_is_quoted_safely() -> None:
    value = rewrite([("Host", 'a"b\\c')])["Forwarded"]
    assert value == 'for=203.0.113.7;proto=http;host="a\\"b\\\\c"'


def test_authorization_kept_or_stripped() -> None:
    pairs = [("Authorization", "Bearer t"), ("Cookie", "a=1")]
    assert rewrite(pairs, CLAIMS)["Authorization"] == "Bearer t"
    out = rewrite(pairs, CLAIMS, forward=Forward(authorization="strip"))
    assert "Authorization" not in out
    assert out["Cookie"] == "a=1"


SOURCES = CredentialStrip((TokenSource("header", "X-Access-Token"),
                           TokenSource("cookie", "access_token"),
                           TokenSource("query", "access_token")))


@pytest.mark.parametrize(("cookies", "kept"), [
    (["access_token=t"], []),
    (["a=1; access_token=t;b=2"], ["a=1;b=2"]),
    (["access_token=t; a=1", "b=\"x y\"; access_token=\"t\""], ["a=1", 'b="x y"']),
    (["a=1;  c = 3 ", "xaccess_token=keep"], ["a=1;  c = 3 ", "xaccess_token=keep"]),
])
def test_strip_removes_the_named_cookie_and_keeps_the_others_byte_for_byte(
    cookies: list[str], kept: list[str]
) -> None:
    out = CIMultiDict([("Cookie", value) for value in cookies] + [("Accept", "*/*")])
    SOURCES.strip_headers(out)
    assert out.getall("Cookie", []) == kept
    assert out["Accept"] == "*/*"
    fields = [(b"Cookie", value.encode()) for value in cookies] + [(b"Accept", b"*/*")]
    assert SOURCES.strip_fields(fields) == [
        *((b"Cookie", value.encode()) for value in kept), (b"Accept", b"*/*")]


def test_strip_removes_header_sources_under_any_spelling() -> None:
    out = CIMultiDict([("x-access-token", "t"), ("X_Access_Token", "t"), ("X-Other", "1")])
    SOURCES.strip_headers(out)
    assert list(out.items()) == [("X-Other", "1")]
    fields = [(b"x-access-token", b"t"), (b"X_Access_Token", b"t"), (b"X-Other", b"\xff1")]
    assert SOURCES.strip_fields(fields) == [(b"X-Other", b"\xff1")]


@pytest.mark.parametrize(("query", "kept"), [
    ("access_token=t", ""),
    ("b=2&access_token=t&a=1", "b=2&a=1"),
    ("a=%20x+y&access%5Ftoken=t&&z", "a=%20x+y&&z"),  # decoded names, as the extractor
    ("access_token", ""),
    ("access_tokens=1&x_access_token=2", "access_tokens=1&x_access_token=2"),
    ("", ""),
    # issue 16: every spelling the extractor takes as the token
    ("ACCESS_TOKEN=t&a=1", "a=1"),
    ("a=1;access_token=t;b=2&c=3", "a=1;b=2&c=3"),
    ("access_token=t;a=b", "a=b"),
    ("x=a;b&y=1", "x=a;b&y=1"),  # kept byte for byte when nothing goes
])
def test_strip_removes_the_named_query_parameter_and_keeps_the_rest_in_order(
    query: str, kept: str
) -> None:
    assert SOURCES.strip_query(query) == kept


def test_request_id_replaced() -> None:
    out = rewrite([("X-Request-Id", "client-chosen")])
    assert out.getall("X-Request-Id") == ["req-1"]


def test_end_to_end_headers_kept_with_order_and_repeats() -> None:
    out = rewrite([("Accept", "a"), ("X-Custom", "1"), ("X-Custom", "2"), ("Cookie", "c=1")])
    assert out.getall("X-Custom") == ["1", "2"]
    assert out["Accept"] == "a" and out["Cookie"] == "c=1"


def test_response_headers() -> None:
    upstream = [
        (b"Content-Type", b"text/plain"), (b"Content-Length", b"5"), (b"Connection", b"X-Hop"),
        (b"X-Hop", b"1"), (b"Keep-Alive", b"timeout=5"), (b"Transfer-Encoding", b"chunked"),
        (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Upgrade", b"h2c"),
        (b"X-Name", "caf\u00e9".encode()),
    ]
    assert response_headers(upstream) == [
        ("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
        ("X-Name", "caf\u00e9"),
    ]


@pytest.mark.parametrize("upstream", [
    [(b"X-Hop", b"1"), (b"Content-Type", b"text/plain"), (b"Connection", b"X-Hop, close"),
     (b"Content-Length", b"5"), (b"x-hop", b"2"), (b"Set-Cookie", b"a=1")],
    [(b"Connection", b"keep-alive"), (b"Content-Type", b"text/plain"), (b"X-Hop", b"1"),
     (b"Set-Cookie", b"a=1")],
])
def test_response_bytes_is_response_headers_in_one_piece(
    upstream: list[tuple[bytes, bytes]]
) -> None:
    """The whole-response path and the streamed path send the same headers (here: what
    `Connection` lists is dropped wherever it stands), then X-Request-Id, Date, our length."""
    from jwtproxy.headers import response_bytes

    data = response_bytes(200, b"OK", upstream, b"hello", "req-1", keep_alive=False)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK" and body == b"hello"
    sent = [tuple(line.decode().split(": ", 1)) for line in lines[1:]]
    names = [name for name, _ in sent]
    assert sent[:len(names) - 4] == response_headers(upstream)
    assert names[-4:] == ["X-Request-Id", "Date", "Connection", "Content-Length"]
    assert sent[-2:] == [("Connection", "close"), ("Content-Length", "5")]
    # an upstream's own X-Request-Id and Date are kept, not doubled
    data = response_bytes(204, b"", [(b"Date", b"d"), (b"X-Request-Id", b"up")], b"", "req-1",
                          keep_alive=True)
    assert data == (b"HTTP/1.1 204 No Content\r\nDate: d\r\nX-Request-Id: up\r\n"
                    b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize(("networks", "peer", "inside"), [
    (("10.0.0.0/8",), "10.1.2.3", True),
    (("10.0.0.0/8",), "11.0.0.1", False),
    (("10.0.0.0/8", "::1/128"), "::1", True),
    (("192.168.1.7",), "192.168.1.7", True),
    (("10.0.0.0/8",), "not-an-ip", False),
    (("10.0.0.0/8",), None, False),
    ((), "10.1.2.3", False),
])
def test_trusted_proxies(networks: tuple[str, ...], peer: str | None, inside: bool) -> None:
    assert (peer in TrustedProxies(networks)) is inside


def test_normalized_name() -> None:
    assert normalized_name("X_Auth-SUBJECT") == "x-auth-subject"


def test_no_host_no_x_forwarded_host() -> None:
    out = rewrite([])
    assert "X-Forwarded-Host" not in out
    assert out["Forwarded"] == "for=203.0.113.7;proto=http"
    out = rewrite([("Host", ""), ("X-Forwarded-Host", "evil.test")])
    assert "X-Forwarded-Host" not in out


def _head_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")
    assert lines[-2:] == [b"", b""]
    return [tuple(line.split(b": ", 1)) for line in lines[1:-2]]  # type: ignore[misc]


def test_request_head_is_the_request_fields_as_one_head() -> None:
    the_plan = plan()
    raw = [(b"Host", b"api.example.com"), (b"Accept", b"*/*"), (b"X-Auth-Subject", b"forged")]
    head = the_plan.request_head("GET", "/a%2Fb?q=1", raw, CLAIMS, "203.0.113.7", "http",
                                 "req-1", "127.0.0.1:8080", chunked=False)
    assert head.startswith(b"GET /a%2Fb?q=1 HTTP/1.1\r\n")
    assert _head_fields(head) == the_plan.request_fields(raw, CLAIMS, "203.0.113.7", "http",
                                                          "req-1")
    # no Host from the client: the upstream's authority; a chunked body says so
    head = the_plan.request_head("POST", "/", [(b"Accept", b"*/*")], None, None, "https",
                                 "req-2", "127.0.0.1:8080", chunked=True)
    fields = _head_fields(head)
    assert fields[-2:] == [(b"Host", b"127.0.0.1:8080"), (b"Transfer-Encoding", b"chunked")]
    assert (b"X-Forwarded-For", b"unknown") in fields


def test_remembered_claim_and_forwarding_fields_never_cross_requests() -> None:
    """The memos (claims by identity, X-Forwarded-* by peer and Host) give each request
    its own values, also once a memo is full and starts over."""
    from jwtproxy.headers import MEMO_MAX

    the_plan = plan()
    for i in range(MEMO_MAX + 50):
        claims = {"sub": f"user-{i}"}  # a new object each time: ids get reused
        peer, host = f"10.0.{i // 256}.{i % 256}", f"h{i % 7}".encode()
        fields = the_plan.request_fields([(b"Host", host)], claims, peer, "http", f"r{i}")
        assert (b"X-Auth-Subject", f"user-{i}".encode()) in fields
        assert (b"X-Forwarded-For", peer.encode()) in fields
        assert (b"Forwarded", b'for=%b;proto=http;host="%b"' % (peer.encode(), host)) in fields
        assert (b"X-Request-Id", f"r{i}".encode()) in fields
    assert len(the_plan._claims_memo) <= MEMO_MAX
    assert len(the_plan._forwarded_memo) <= MEMO_MAX
    # a client's own X-Forwarded-For is never taken from (nor put into) the memo
    claims = {"sub": "same"}
    plain = the_plan.request_fields([(b"Host", b"h")], claims, "203.0.113.7", "http", "a")
    prior = the_plan.request_fields([(b"Host", b"h"), (b"X-Forwarded-For", b"1.2.3.4")],
                                    claims, "203.0.113.7", "http", "b")
    assert (b"X-Forwarded-For", b"203.0.113.7") in plain
    assert (b"X-Forwarded-For", b"1.2.3.4, 203.0.113.7") in prior
    again = the_plan.request_fields([(b"Host", b"h")], claims, "203.0.113.7", "http", "c")
    assert (b"X-Forwarded-For", b"203.0.113.7") in again


def test_large_values_are_worked_out_each_time_not_remembered() -> None:
    """A client's huge Host, or claims copied whole into payload_header: never kept in a
    memo (1024 entries of those would be tens of MB a route), still sent right."""
    from jwtproxy.headers import MEMO_ENTRY_MAX

    the_plan = plan()
    host = b"h" * 60_000
    for _ in range(3):
        fields = the_plan.request_fields([(b"Host", host)], None, "203.0.113.7", "http", "r")
        assert (b"X-Forwarded-Host", host) in fields
    assert the_plan._forwarded_memo == {}
    big = {**CLAIMS, "blob": "x" * MEMO_ENTRY_MAX}
    fields = the_plan.request_fields([], big, "203.0.113.7", "http", "r")
    (payload,) = [value for name, value in fields if name == b"X-Auth-Claims"]
    assert json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4))) == big
    assert the_plan._claims_memo == {}
    the_plan.request_fields([], CLAIMS, "203.0.113.7", "http", "r")
    assert len(the_plan._claims_memo) == 1  # a small one is remembered
