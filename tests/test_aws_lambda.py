"""The Lambda authorizer door: AWS's documented event shapes x the decisions, exact answers.

Every case runs `Authorizer.handle` (what `handler` calls) against a real JWKS endpoint on
loopback; the answers are the ones shared/DESIGN.md gives the door: an Allow policy (or
`isAuthorized: true`) with principalId = sub and the route's claims as context, a Deny (or
`isAuthorized: false`) for scope, claim and no route, `Unauthorized` for a missing or
invalid token, an error when keys cannot be had.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import pytest

from jwtproxy.aws_lambda import Authorizer
from jwtproxy.lambda_policy import context_value
from tests.aws_lambda_support import (
    DOMAIN,
    SHAPES,
    allow_policy,
    answer,
    authorizer,
    bearer,
    deny_policy,
    documented,
    event,
    jwks_server,
    method_arn,
)
from tests.servers import JwksEndpoint
from tests.tokens import KeyRing, mint

ISSUER: Final = "https://issuer.test/"
DOWN_ISSUER: Final = "https://down.test/"
AUDIENCE: Final = "api://orders"
CONTEXT_CLAIMS: Final = {"sub": "X-Auth-Subject", "groups": "X-Auth-Groups",
                         "email_verified": "X-Auth-Verified", "level": "X-Auth-Level"}


def lambda_config(jwks_url: str, down_url: str, **aws_lambda: str) -> dict[str, Any]:
    issuer = {"issuer": ISSUER, "jwks_uri": jwks_url, "audiences": [AUDIENCE],
              "algorithms": ["RS256", "ES256"], "jwks": {"refresh_min_interval": "1s"}}
    return {
        "log": {"level": "info"},
        "issuers": {
            "access": {**issuer, "token_use": "access"},
            "id": {**issuer, "token_use": "id"},
            "down": {**issuer, "issuer": DOWN_ISSUER, "jwks_uri": down_url,
                     "jwks": {"refresh_min_interval": "1h", "timeout": "2s"}},
        },
        "routes": [
            {"name": "public", "match": {"path_prefix": "/public"}, "auth": "none"},
            {"name": "orders", "match": {"path_prefix": "/orders", "methods": ["GET", "POST"]},
             "auth": {"issuers": ["access"], "scopes": ["orders:read"]},
             "forward": {"claims": CONTEXT_CLAIMS}},
            {"name": "admin", "match": {"path_prefix": "/admin"},
             "auth": {"issuers": ["access"], "claims": {"groups": "admin"}},
             "forward": {"claims": {"sub": "X-Auth-Subject"}}},
            {"name": "profile", "match": {"path": "/profile"},
             "auth": {"issuers": ["id"]}},
            {"name": "down", "match": {"path_prefix": "/down"},
             "auth": {"issuers": ["down"]}},
        ],
        "aws_lambda": aws_lambda,
    }


@dataclass
class World:
    keys: KeyRing
    policy: Authorizer
    simple: Authorizer
    jwks: JwksEndpoint


@pytest.fixture(scope="module")
def world(keys: KeyRing) -> Iterator[World]:
    up = JwksEndpoint(keys.jwks())
    down = JwksEndpoint({}, status=503)
    with jwks_server(up) as url, jwks_server(down) as down_url:
        config = lambda_config(url, down_url)
        with authorizer(config) as policy, authorizer(
                lambda_config(url, down_url, response="simple")) as simple:
            yield World(keys, policy, simple, up)


def access_token(keys: KeyRing, **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": AUDIENCE, "token_use": "access", "scope": "orders:read",
            "groups": ["admin", "staff"], "email_verified": True, "level": 3,
            "jti": "jti-1"}
    body.update(claims)
    return mint(keys.rsa, body)


ALLOWED_CONTEXT: Final = {"sub": "user-1", "groups": "admin,staff", "email_verified": True,
                          "level": 3}

# name -> (method, path, claims for the token or None for no token, expected answer)
CASES: Final[dict[str, tuple[str, str, dict[str, Any] | None, str]]] = {
    "allowed": ("GET", "/orders/42", {}, "allow"),
    "expired": ("GET", "/orders/42", {"exp": int(time.time()) - 3600}, "unauthorized"),
    "wrong_audience": ("GET", "/orders/42", {"aud": "api://other"}, "unauthorized"),
    "missing_scope": ("GET", "/orders/42", {"scope": "profile"}, "deny"),
    "wrong_group": ("GET", "/admin/users", {"groups": ["staff"]}, "deny"),
    "id_token_on_access_route": ("GET", "/orders/42", {"token_use": "id"}, "unauthorized"),
    "no_route": ("GET", "/elsewhere", {}, "deny"),
    "method_not_routed": ("DELETE", "/orders/42", {}, "deny"),
    "no_token": ("GET", "/orders/42", None, "unauthorized"),
    "keys_unavailable": ("GET", "/down/1", {"iss": DOWN_ISSUER}, "error"),
    "public_without_token": ("GET", "/public/doc", None, "allow"),
}


def expected_response(door: str, shape: str, method: str, path: str, outcome: str,
                      public: bool, claims_checked: bool) -> Any:
    if outcome in ("unauthorized", "error"):
        return None if outcome == "unauthorized" else "keys_unavailable"
    context = None if public else ALLOWED_CONTEXT
    if door == "simple" and shape == "http_v2":
        return ({"isAuthorized": True, "context": context} if outcome == "allow" and context
                else {"isAuthorized": outcome == "allow"})
    arn = method_arn(method, path)
    if outcome == "allow":
        return allow_policy("anonymous" if public else "user-1", arn, context)
    return deny_policy("user-1" if claims_checked else "anonymous", arn)


@pytest.mark.parametrize("door", ["policy", "simple"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_event_shape_answers(world: World, door: str, shape: str, case: str) -> None:
    method, path, claims, outcome = CASES[case]
    token = None if claims is None else access_token(world.keys, **claims)
    body = event(shape, method, path, bearer(token) if token else None)
    if shape == "rest_token" and token is None:
        body["authorizationToken"] = ""  # API Gateway sends the empty header it got
    got = answer(world.policy if door == "policy" else world.simple, body)
    expected = expected_response(door, shape, method, path, outcome, case.startswith("public"),
                                 case in ("missing_scope", "wrong_group"))
    assert got == (outcome, expected)


def test_id_token_route_takes_id_tokens(world: World) -> None:
    token = access_token(world.keys, token_use="id", scope=None)
    body = event("rest_token", "GET", "/profile", bearer(token))
    assert answer(world.policy, body) == (
        "allow", allow_policy("user-1", method_arn("GET", "/profile"), None))


def test_documented_samples_unchanged(world: World) -> None:
    """AWS's samples as published: no credentials (REQUEST) or a token that is no JWT
    (TOKEN `allow`): never an Allow; the TOKEN sample's `*` stage is an ARN like others."""
    for shape in ("rest_request", "http_v1"):
        assert answer(world.policy, documented(shape)) == (
            "deny", deny_policy("anonymous", documented(shape)["methodArn"]))  # no route
    sample_v2 = documented("http_v2")  # POST /my/path: matched on rawPath, no route
    assert answer(world.policy, sample_v2) == ("deny", deny_policy(
        "anonymous", sample_v2["routeArn"]))
    assert answer(world.simple, sample_v2) == ("deny", {"isAuthorized": False})
    sample_token = documented("rest_token")  # GET / of stage `*`: no route
    assert answer(world.policy, sample_token) == ("deny", deny_policy(
        "anonymous", sample_token["methodArn"]))
    sample_token["methodArn"] = sample_token["methodArn"] + "orders"  # `allow`: no bearer token
    assert answer(world.policy, sample_token) == ("unauthorized", None)


@pytest.mark.parametrize("mutate", [
    "not_a_mapping", "no_type", "unknown_type", "unknown_version", "no_method_arn",
    "arn_not_execute_api", "arn_no_method", "token_not_string", "headers_not_mapping",
    "header_value_number", "multi_value_not_list", "v2_no_request_context", "v2_no_http",
    "v2_method_number", "v2_cookies_not_list", "v2_no_raw_path", "truncated_arn",
])
def test_bad_events_are_unauthorized_and_logged(
    world: World, mutate: str, caplog: pytest.LogCaptureFixture,
) -> None:
    token = access_token(world.keys)
    bodies: dict[str, Any] = {
        "not_a_mapping": ["TOKEN"],
        "no_type": {k: v for k, v in event("rest_token", "GET", "/orders/1", bearer(token)).items()
                    if k != "type"},
        "unknown_type": {**event("rest_token", "GET", "/orders/1", bearer(token)),
                         "type": "COGNITO"},
        "unknown_version": {**event("http_v2", "GET", "/orders/1", bearer(token)),
                            "version": "3.0"},
        "no_method_arn": {k: v for k, v in event("rest_request", "GET", "/orders/1",
                                                 bearer(token)).items() if k != "methodArn"},
        "arn_not_execute_api": {**event("rest_token", "GET", "/orders/1", bearer(token)),
                                "methodArn": "arn:aws:lambda:us-east-1:123456789012:function:f"},
        "arn_no_method": {**event("rest_token", "GET", "/orders/1", bearer(token)),
                          "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abc/test"},
        "token_not_string": {**event("rest_token", "GET", "/orders/1"),
                             "authorizationToken": ["Bearer", token]},
        "headers_not_mapping": {**event("rest_request", "GET", "/orders/1"),
                                "headers": [["Authorization", bearer(token)]]},
        "header_value_number": {**event("http_v1", "GET", "/orders/1", bearer(token)),
                                "headers": {"Authorization": 7}},
        "multi_value_not_list": {**event("rest_request", "GET", "/orders/1", bearer(token)),
                                 "multiValueHeaders": {"Authorization": bearer(token)}},
        "v2_no_request_context": {k: v for k, v in event("http_v2", "GET", "/orders/1",
                                                         bearer(token)).items()
                                  if k != "requestContext"},
        "v2_no_http": {**event("http_v2", "GET", "/orders/1", bearer(token)),
                       "requestContext": {"stage": "$default"}},
        "v2_method_number": {**event("http_v2", "GET", "/orders/1", bearer(token)),
                             "requestContext": {"http": {"method": 1}}},
        "v2_cookies_not_list": {**event("http_v2", "GET", "/orders/1", bearer(token)),
                                "cookies": "a=b"},
        "v2_no_raw_path": {k: v for k, v in event("http_v2", "GET", "/orders/1",
                                                  bearer(token)).items() if k != "rawPath"},
        "truncated_arn": {**event("rest_token", "GET", "/orders/1", bearer(token)),
                          "methodArn": method_arn("GET", "/orders/1")[:30]},
    }
    with caplog.at_level(logging.INFO, logger="jwtproxy"):
        assert answer(world.policy, bodies[mutate]) == ("unauthorized", None)
    errors = [r for r in caplog.records if r.getMessage() == "lambda_bad_event"]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert token not in caplog.text  # the event is described by field, never quoted
    # and the door keeps answering
    good = event("rest_token", "GET", "/orders/1", bearer(token))
    assert answer(world.policy, good)[0] == "allow"


@pytest.mark.parametrize("junk", ["\x0b", "\x01", "\x7f", "\x1f"])
def test_a_control_character_in_a_good_token_is_unauthorized(world: World, junk: str) -> None:
    """No HTTP parser stands before this door: a control character in the middle of a
    good token (what a looser reader may split on, or drop) makes it no token of ours."""
    token = access_token(world.keys)
    head, _, tail = token.rpartition(".")
    for forged in (token + junk, f"{head}.{junk}{tail}", f"{token}{junk}x"):
        body = event("rest_token", "GET", "/orders/1", bearer(forged))
        assert answer(world.policy, body) == ("unauthorized", None), repr(junk)
    assert answer(world.policy, event("rest_token", "GET", "/orders/1", bearer(token)))[0] == (
        "allow")


def test_request_sources_in_v2_cookies_and_query(keys: KeyRing) -> None:
    endpoint = JwksEndpoint(keys.jwks())
    with jwks_server(endpoint) as url:
        config = lambda_config(url, url)
        config["tokens"] = [{"header": "Authorization"}, {"cookie": "access_token"},
                            {"query": "access_token"}]
        token = access_token(keys)
        with authorizer(config) as door:
            by_cookie = event("http_v2", "GET", "/orders/1")
            by_cookie["cookies"] = ["theme=dark", f"access_token={token}"]
            assert answer(door, by_cookie)[0] == "allow"
            by_query = event("http_v2", "GET", "/orders/1")
            by_query["rawQueryString"] = f"a=1&access_token={token}"
            assert answer(door, by_query)[0] == "allow"
            rest_query = event("rest_request", "GET", "/orders/1")
            rest_query["queryStringParameters"] = {"access_token": token}
            assert answer(door, rest_query)[0] == "allow"
            # RFC 6750 §2: one method only; two places is no credential, never an Allow
            both = event("http_v2", "GET", "/orders/1", bearer(token))
            both["cookies"] = [f"access_token={token}"]
            assert answer(door, both) == ("unauthorized", None)
            twice = event("rest_request", "GET", "/orders/1")
            twice["multiValueHeaders"] = {"Authorization": [bearer(token), bearer(token)]}
            assert answer(door, twice) == ("unauthorized", None)


def test_domain_name_and_stage(keys: KeyRing) -> None:
    endpoint = JwksEndpoint(keys.jwks())
    with jwks_server(endpoint) as url:
        config = lambda_config(url, url)
        config["routes"].insert(0, {"name": "other-host", "match": {
            "host": "other.example.com", "path_prefix": "/orders"}, "auth": "none"})
        with authorizer(config) as door:
            token = access_token(keys, scope="none")
            v2 = event("http_v2", "GET", "/orders/1", bearer(token))
            assert answer(door, v2)[0] == "deny"  # DOMAIN is not other.example.com
            v2["requestContext"]["domainName"] = "other.example.com"
            assert answer(door, v2)[0] == "allow"
            rest = event("rest_request", "GET", "/orders/1", bearer(token))
            rest["requestContext"]["domainName"] = "other.example.com"
            assert answer(door, rest)[0] == "allow"
            # a named stage is the first segment of an HTTP API rawPath
            staged = event("http_v2", "GET", "/orders/1", bearer(access_token(keys)))
            staged["requestContext"]["stage"] = "prod"
            staged["rawPath"] = "/prod/orders/1"
            assert answer(door, staged)[0] == "allow"
    assert DOMAIN != "other.example.com"


def test_context_values() -> None:
    assert context_value("a") == "a"
    assert context_value(7) == 7 and context_value(1.5) == 1.5
    assert context_value(True) is True
    assert context_value(["a", "b", 3]) == "a,b,3"
    assert context_value({"k": [1]}) == '{"k":[1]}'
    assert context_value(None) is None
    assert context_value(["a", None]) is None  # a list that cannot be said whole is left out


def test_decision_log_line_and_emf(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """One JSON line per decision, also a CloudWatch EMF document: the `auth` metric has
    the jwtproxy_auth_total labels (route, result, reason); no token in it."""
    from jwtproxy.log import setup_logging

    stream = io.StringIO()
    root, ours = logging.getLogger(), logging.getLogger("jwtproxy")
    saved = (root.handlers[:], root.level, ours.handlers[:], ours.level, ours.propagate)
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("info", "json")  # what `load()` does in Lambda
    try:
        token = access_token(world.keys, jti="jti-log", scope="profile")
        answer(world.policy, event("rest_token", "GET", "/orders/1", bearer(token)))
        answer(world.policy, event("rest_token", "GET", "/orders/1", bearer(token)))
        answer(world.policy, {"type": "TOKEN"})
    finally:
        logging.captureWarnings(False)
        root.handlers[:], root.level = saved[0], saved[1]
        ours.handlers[:], ours.level, ours.propagate = saved[2], saved[3], saved[4]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()
             if '"lambda_decision"' in line]
    assert len(lines) == 3
    first, second, bad = lines
    assert {k: first[k] for k in ("route", "answer", "result", "reason", "sub", "jti", "cache",
                                  "shape", "issuer", "auth", "decisions")} == {
        "route": "orders", "answer": "deny", "result": "denied", "reason": "scope",
        "sub": "user-1", "jti": "jti-log", "cache": "miss", "shape": "rest_token",
        "issuer": "access", "auth": 1, "decisions": 1}
    assert second["cache"] == "hit"
    assert isinstance(first["latency_ms"], float)
    emf = first["_aws"]
    assert isinstance(emf["Timestamp"], int)
    directives = {tuple(d["Dimensions"][0]): d for d in emf["CloudWatchMetrics"]}
    assert directives[("route", "result", "reason")]["Metrics"] == [
        {"Name": "auth", "Unit": "Count"}]
    assert directives[("route", "answer")]["Metrics"] == [
        {"Name": "decisions", "Unit": "Count"}, {"Name": "latency_ms", "Unit": "Milliseconds"}]
    for directive in emf["CloudWatchMetrics"]:  # EMF: every dimension and metric is a member
        assert directive["Namespace"] == "jwtproxy"
        assert all(isinstance(first[name], str) for name in directive["Dimensions"][0])
        assert all(isinstance(first[m["Name"]], int | float) for m in directive["Metrics"])
    assert bad["reason"] == "bad_event" and bad["answer"] == "unauthorized"
    assert "auth" not in bad and len(bad["_aws"]["CloudWatchMetrics"]) == 1
    assert token not in json.dumps(lines)


def test_report_only_allows_and_counts_the_denial(
    keys: KeyRing, caplog: pytest.LogCaptureFixture,
) -> None:
    """report_only never denies, and the `auth` figure still says what `required` would."""
    with jwks_server(JwksEndpoint(keys.jwks())) as url:
        config = lambda_config(url, url)
        config["routes"][1]["auth"]["mode"] = "report_only"
        with authorizer(config) as door, caplog.at_level(logging.INFO, logger="jwtproxy"):
            token = access_token(keys, exp=int(time.time()) - 3600)
            arn = method_arn("GET", "/orders/1")
            got = answer(door, event("rest_token", "GET", "/orders/1", bearer(token)))
    assert got == ("allow", allow_policy("anonymous", arn, None))
    (record,) = [r for r in caplog.records if r.getMessage() == "lambda_decision"]
    assert (record.answer, record.result, record.reason, record.auth) == (  # type: ignore[attr-defined]
        "allow", "denied", "expired", 1)
