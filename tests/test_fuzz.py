"""Property tests: whatever comes in, the pure stages raise only jwtproxy's own errors,
and the whole decision pipeline answers with a decision, never an exception."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from jwtproxy.config import Config, TokenSource
from jwtproxy.errors import ConfigError, JwtProxyError
from jwtproxy.extractor import TokenExtractor
from jwtproxy.gate import Decision, Gate, RequestView
from jwtproxy.jwks import build_stores
from jwtproxy.jws import parse
from jwtproxy.loader import load_text
from jwtproxy.matcher import normalize_path
from jwtproxy.verifier import Verifier
from tests.tokens import b64, b64json, mint

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SECRET = "fuzz-secret-0123456789abcdef-0123456789"
OTHER_SECRET = "other-secret-0123456789abcdef-01234567"
DEV_ISS = "https://dev.test/"
OTHER_ISS = "https://other.test/"

header_names = st.sampled_from(["Authorization", "authorization", "Cookie", "X-Token",
                                "Host", "Connection"]) | st.text(max_size=12)
some_text = st.text(max_size=60) | st.sampled_from([
    "Bearer", "Bearer ", "bearer a.b.c", "Basic eA==", "access_token=a.b.c",
    "access_token=; access_token=x", 'access_token="a.b.c"', "Bearer a b", "Bearer\ta",
])


# -- the extractor ---------------------------------------------------------------------------

@FUZZ
@given(st.lists(st.tuples(header_names, some_text), max_size=6), some_text,
       st.integers(64, 200))
def test_extractor_raises_only_its_errors(pairs: list[tuple[str, str]], query: str,
                                          limit: int) -> None:
    sources = (TokenSource("header", "Authorization"), TokenSource("header", "X-Token"),
               TokenSource("cookie", "access_token"), TokenSource("query", "access_token"))
    extractor = TokenExtractor(sources, limit)
    try:
        token = extractor.extract(CIMultiDictProxy(CIMultiDict(pairs)), query)
    except JwtProxyError as err:
        assert err.status in (400, 401)
    else:
        assert token is None or (token and len(token.encode("utf-8", "surrogatepass")) <= limit)


# -- parse() ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12,
)
header_keys = st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jku", "x5u", "jwk", "x5c",
                               "enc", "zip", "cty", "x5t"])
claim_keys = st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "scope", "scp"])
headers_json = st.dictionaries(header_keys | st.text(max_size=4), json_values, max_size=5)
claims_json = st.dictionaries(claim_keys | st.text(max_size=4), json_values, max_size=7)
segment = (st.binary(max_size=40).map(b64) | st.text(
    alphabet="ABCabc012-_+/=. \n", max_size=12))


@st.composite
def token_like(draw: st.DrawFn) -> str:
    head = draw(headers_json.map(b64json) | segment)
    body = draw(claims_json.map(b64json) | segment)
    sig = draw(segment)
    extra = draw(st.lists(segment, max_size=3))
    return ".".join([head, body, sig, *extra])


@FUZZ
@given(st.text(max_size=300) | token_like())
def test_parse_raises_only_its_errors(raw: str) -> None:
    try:
        parsed = parse(raw)
    except JwtProxyError as err:
        assert err.status == 401
        assert err.reason in ("malformed", "alg")
    else:
        assert isinstance(parsed.claims["iss"], str)
        assert isinstance(parsed.header["alg"], str)


# -- normalize_path -------------------------------------------------------------------------------

path_text = st.text(max_size=40) | st.lists(
    st.sampled_from(["/", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", "a", ";", "%", "%zz",
                     "..;", "%25", "//"]), max_size=12).map("".join)


@FUZZ
@given(path_text)
def test_normalize_path_never_raises_and_leaves_no_dot_segments(tail: str) -> None:
    result = normalize_path("/" + tail)
    assert result.path.startswith("/")
    assert "\\" not in result.path
    assert "//" not in result.path
    segments = result.path.split("/")[1:]
    assert not any(s.split(";", 1)[0] in (".", "..") for s in segments)
    normalize_path(tail)  # also without the leading slash: no exception


# -- the loader ------------------------------------------------------------------------------------

VALID: dict[str, Any] = {
    "server": {"listen": "0.0.0.0:8080", "workers": 1, "graceful_timeout": "30s",
               "trusted_proxies": ["10.0.0.0/8"]},
    "admin": {"listen": "127.0.0.1:9090"},
    "log": {"level": "info", "format": "json"},
    "issuers": {
        "dev": {"issuer": DEV_ISS, "secret": SECRET, "audiences": ["api"],
                "algorithms": ["HS256"], "leeway": "5s", "jwks": {"cache_ttl": "10m"}},
        "cog": {"cognito": {"region": "us-east-1", "user_pool_id": "us-east-1_Ab"},
                "token_use": "access"},
    },
    "tokens": [{"header": "Authorization"}, {"cookie": "access_token"}],
    "routes": [
        {"name": "public", "match": {"path": "/health"}, "upstream": "http://127.0.0.1:1",
         "auth": "none"},
        {"name": "orders", "match": {"host": "*.example.com", "path_prefix": "/orders",
                                     "methods": ["GET"]},
         "upstream": "http://127.0.0.1:1",
         "auth": {"issuers": ["dev"], "scopes": ["a"], "claims": {"cognito:groups": "x"}},
         "forward": {"claims": {"sub": "X-Sub"}, "payload_header": "X-Claims"},
         "timeouts": {"connect": "1s"}},
    ],
}


def leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from leaf_paths(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from leaf_paths(child, (*path, i))


PATHS = list(leaf_paths(VALID))[1:]
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    | st.sampled_from(["5x", "-1s", "1m30s", "${X}", "${X:-1}", "none", "http://h",
                       "https://[::1", "0.0.0.0:99999", "HS256", "none", "*.", "/"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated_config(draw: st.DrawFn) -> str:
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = data
        try:
            for step in path[:-1]:
                parent = parent[step]
            if draw(st.booleans()):
                parent[path[-1]] = draw(yaml_values)
            elif isinstance(parent, dict):
                parent.pop(path[-1], None)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed the way there
    return yaml.safe_dump(data)


@FUZZ
@given(st.text(max_size=200) | mutated_config())
def test_load_text_raises_only_config_error(text: str) -> None:
    try:
        config = load_text(text, {"X": "1"})
    except ConfigError as err:
        assert err.problems
        assert all(isinstance(p, str) and p for p in err.problems)
    else:
        assert isinstance(config, Config)


# -- the whole decision pipeline ------------------------------------------------------------

GATE_CONFIG = f"""
issuers:
  dev: {{issuer: '{DEV_ISS}', secret: {SECRET}, audiences: [api], leeway: 0s}}
  other: {{issuer: '{OTHER_ISS}', secret: {OTHER_SECRET}}}
tokens: [{{header: Authorization}}, {{cookie: access_token}}, {{query: access_token}}]
routes:
  - {{name: public, match: {{path_prefix: /public}}, upstream: 'http://127.0.0.1:1',
     auth: none}}
  - {{name: admin, match: {{path_prefix: /admin}}, upstream: 'http://127.0.0.1:1',
     auth: {{issuers: [dev], claims: {{"cognito:groups": admin}}}}}}
  - {{name: orders, match: {{path_prefix: /orders, methods: [GET, POST, OPTIONS]}},
     upstream: 'http://127.0.0.1:1', auth: {{scopes: [orders:read]}}, cors_preflight: pass}}
  - {{name: optional, match: {{path_prefix: /opt}}, upstream: 'http://127.0.0.1:1',
     auth: {{mode: optional}}}}
  - {{name: report, match: {{path_prefix: /report}}, upstream: 'http://127.0.0.1:1',
     auth: {{mode: report_only, any_scopes: [x, y]}}}}
  - {{name: other, match: {{host: other.example.com}}, upstream: 'http://127.0.0.1:1',
     auth: {{issuers: [other]}}}}
"""


@cache
def valid_tokens() -> tuple[str, ...]:
    now = int(time.time())
    secret = SECRET.encode()
    good = {"iss": DEV_ISS, "aud": "api", "scope": "orders:read x",
            "cognito:groups": ["admin"], "exp": now + 3600}
    return (
        mint(None, good, secret=secret),
        mint(None, {**good, "scope": ""}, secret=secret),
        mint(None, {**good, "exp": now - 3600}, secret=secret),
        mint(None, {**good, "nbf": now + 3600}, secret=secret),
        mint(None, {**good, "aud": "elsewhere"}, secret=secret),
        mint(None, {**good, "iss": "https://nobody.test/"}, secret=secret),
        mint(None, good, secret=b"not-the-secret-but-long-enough-000000"),
        mint(None, good, alg="HS384", secret=secret),
        mint(None, good, header={"typ": "dpop+jwt"}, secret=secret),
        mint(None, {"iss": OTHER_ISS, "exp": now + 3600}, secret=OTHER_SECRET.encode()),
    )


@st.composite
def garbled_token(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(valid_tokens()))
    how = draw(st.sampled_from(["same", "flip", "cut", "insert", "segments", "header",
                                "random"]))
    if how == "flip":
        i = draw(st.integers(0, len(base) - 1))
        return base[:i] + draw(st.characters()) + base[i + 1:]
    if how == "cut":
        return base[: draw(st.integers(0, len(base)))]
    if how == "insert":
        i = draw(st.integers(0, len(base)))
        return base[:i] + draw(st.text(max_size=4)) + base[i:]
    if how == "segments":
        parts = base.split(".")
        return ".".join(draw(st.lists(st.sampled_from(parts), max_size=6)))
    if how == "header":
        header = draw(st.fixed_dictionaries(
            {"alg": st.sampled_from(["HS256", "none", "NONE", "RS256", "HS512", "ES256"])},
            optional={"kid": st.text(max_size=4), "typ": st.sampled_from(["JWT", "x"]),
                      "crit": st.just([]), "jku": st.just("https://evil.test/")}))
        return ".".join([b64json(header), *base.split(".")[1:]])
    if how == "random":
        return draw(st.text(max_size=80))
    return base


@st.composite
def request_views(draw: st.DrawFn) -> RequestView:
    token = draw(garbled_token())
    auth = draw(st.sampled_from(["Bearer {}", "bearer {}", "BEARER  {}", "Basic {}", "{}",
                                 "Bearer {} extra", "Bearer"])).format(token)
    pairs: list[tuple[str, str]] = []
    where = draw(st.sampled_from(["header", "cookie", "query", "two headers", "header+cookie",
                                  "none"]))
    query = draw(st.sampled_from(["", "a=1"]))
    if where in ("header", "two headers", "header+cookie"):
        pairs.append(("Authorization", auth))
    if where == "two headers":
        pairs.append(("Authorization", auth))
    if where in ("cookie", "header+cookie"):
        pairs.append(("Cookie", f"access_token={token}"))
    if where == "query":
        query = "access_token=" + token
    if draw(st.booleans()):
        pairs.append(("Origin", "https://app.example.com"))
        pairs.append(("Access-Control-Request-Method", "GET"))
    pairs += draw(st.lists(st.tuples(header_names, some_text), max_size=2))
    path = draw(st.sampled_from([
        "/", "/public/x", "/orders", "/orders/1", "/ordersx", "/admin", "/opt/1", "/report",
        "/public/../admin", "/public/%2e%2e/orders", "//admin", "/public\\..\\orders",
        "*", "",
    ]) | path_text.map(lambda tail: "/" + tail) | st.text(max_size=20))
    return RequestView(
        method=draw(st.sampled_from(["GET", "POST", "OPTIONS", "DELETE", "get"])),
        host=draw(st.sampled_from(["api.example.com", "other.example.com",
                                   "OTHER.example.com:443", ""]) | st.text(max_size=10)),
        raw_path=path,
        query_string=query,
        headers=CIMultiDictProxy(CIMultiDict(pairs)),
    )


@cache
def gate() -> Gate:
    config = load_text(GATE_CONFIG, {})
    return Gate(config, Verifier(config.issuers, build_stores(config.issuers.values(), None)))


def check(decision: Decision) -> None:
    if decision.error is not None:
        assert decision.error.status in (400, 401, 403, 404, 503), decision.error
        assert isinstance(decision.error, JwtProxyError)
        return
    assert decision.route is not None
    route = decision.route.route
    if decision.claims is not None:
        assert decision.claims["iss"] in (DEV_ISS, OTHER_ISS)
        assert decision.auth_reason == "ok"
    else:
        # allowed without claims only where nothing demands a token
        assert (route.auth is None or route.auth.mode != "required"
                or route.cors_preflight == "pass"), (route.name, decision)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(view=request_views())
def test_pipeline_always_decides(loop: asyncio.AbstractEventLoop, view: RequestView) -> None:
    check(loop.run_until_complete(gate().decide(view)))
    check(loop.run_until_complete(gate().decide(view, trace=True)))


def view(path: str, token: str, host: str = "api.example.com") -> RequestView:
    headers = CIMultiDictProxy(CIMultiDict([("Authorization", f"Bearer {token}")]))
    return RequestView("GET", host, path, "", headers)


def test_pipeline_fixture_is_live(loop: asyncio.AbstractEventLoop) -> None:
    """The property above means something only if valid tokens get through and each kind
    of bad one is told apart."""
    tokens = valid_tokens()
    decide = lambda v: loop.run_until_complete(gate().decide(v))  # noqa: E731
    ok = decide(view("/orders/1", tokens[0]))
    assert ok.allowed and ok.claims is not None and ok.claims["sub"] == "user-1"
    assert decide(view("/admin", tokens[0])).allowed
    assert decide(view("/x", tokens[9], "other.example.com")).allowed
    reasons = [decide(view("/orders/1", t)).auth_reason for t in tokens[1:9]]
    assert reasons == ["scope", "expired", "not_yet_valid", "audience", "issuer",
                       "bad_signature", "alg", "typ"]
    assert decide(view("/nowhere", tokens[0])).status == 404
    assert decide(view("/public/../orders", "x.y.z")).status == 401
