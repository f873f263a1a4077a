"""`policy_scope: routes` under API Gateway's authorizer cache, and what `check` refuses.

API Gateway may cache an authorizer's policy for a token and evaluate it, not the function,
for the token's later requests. The table below evaluates each cached policy with IAM's own
rules (`*` any run of characters, `?` one, explicit Deny wins, nothing allows by default —
implemented here apart from jwtproxy's) for every method ARN in a table and compares it with
a fresh `handle` call: any route's permission leaking to another fails it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from jwtproxy.aws_lambda import Authorizer
from jwtproxy.errors import ConfigError
from jwtproxy.loader import load_text
from jwtproxy.matcher import normalize_path
from tests.aws_lambda_support import (
    answer,
    authorizer,
    bearer,
    event,
    glob_match,
    iam_allows,
    jwks_server,
    method_arn,
    token_event,
)
from tests.servers import JwksEndpoint
from tests.tokens import KeyRing, mint

ISSUER: Final = "https://issuer.test/"
AUDIENCE: Final = "api://orders"


def test_glob_match() -> None:
    assert glob_match("a*", "a/b/c") and glob_match("*", "")
    assert glob_match("G?T/x", "GET/x") and not glob_match("G?T/x", "GT/x")
    assert glob_match("*/orders/*", "GET/orders/") and not glob_match("*/orders/*", "GET/orders")
    assert not glob_match("GET/orders", "GET/orders/1")


def routes_config(jwks_url: str) -> dict[str, Any]:
    def route(name: str, match: dict[str, Any], auth: Any, **extra: Any) -> dict[str, Any]:
        return {"name": name, "match": match, "auth": auth, **extra}

    issuer = {"issuer": ISSUER, "jwks_uri": jwks_url, "audiences": [AUDIENCE],
              "algorithms": ["RS256"], "jwks": {"refresh_min_interval": "1s"}}
    return {
        "log": {"level": "warning"},
        "issuers": {"access": {**issuer, "token_use": "access"},
                    "id": {**issuer, "token_use": "id"}},
        "routes": [
            route("public", {"path_prefix": "/public"}, "none"),
            route("orders-write", {"path_prefix": "/orders", "methods": ["POST", "DELETE"]},
                  {"issuers": ["access"], "scopes": ["orders:write"]}),
            route("orders-read", {"path_prefix": "/orders", "methods": ["GET", "HEAD"]},
                  {"issuers": ["access"], "scopes": ["orders:read"]},
                  forward={"claims": {"scope": "X-Scope"}}),
            route("audit", {"path_prefix": "/admin/audit"},
                  {"issuers": ["access"], "claims": {"groups": "admin"},
                   "scopes": ["audit"]}),
            route("admin", {"path_prefix": "/admin"},
                  {"issuers": ["access"], "claims": {"groups": "admin"}},
                  forward={"claims": {"groups": "X-Groups"}}),
            route("profile", {"path": "/profile"}, {"issuers": ["id"]}),
            route("health", {"path": "/health", "methods": ["GET"]}, {"mode": "optional",
                                                                      "issuers": ["access"]}),
            route("api", {"path_prefix": "/"}, {"issuers": ["access"]},
                  forward={"claims": {"sub": "X-Sub"}}),
        ],
        "aws_lambda": {"policy_scope": "routes"},
    }


PATHS: Final = (
    "/", "/public", "/public/x", "/publicx", "/orders", "/orders/", "/orders/1", "/ordersx",
    "/admin", "/admin/", "/admin/audit", "/admin/audit/log", "/admin/auditx", "/profile",
    "/profile/x", "/health", "/elsewhere/deep/path", "/public/../admin", "/public/%2e%2e/admin",
    "//admin", "/public/./x", "/public\\..\\admin", "/public/..;/admin", "/orders%2F1",
    "/admin/.", "/a*b", "/a?b",
)
METHODS: Final = ("GET", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS")
ARNS: Final = tuple(method_arn(method, path) for method in METHODS for path in PATHS)
FIRST_CALLS: Final = tuple(method_arn(m, p) for m, p in (
    ("GET", "/orders/1"), ("POST", "/orders"), ("GET", "/admin/x"), ("GET", "/public/x"),
    ("GET", "/nowhere"), ("GET", "/profile"), ("GET", "/health"), ("GET", "/public/../admin")))


def tokens(keys: KeyRing) -> dict[str, str]:
    def access(**claims: Any) -> str:
        return mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "token_use": "access", **claims})

    return {
        "none": "",
        "plain": access(),
        "read": access(scope="orders:read"),
        "read-write": access(scope="orders:read orders:write"),
        "write": access(scope="orders:write"),
        "admin": access(groups=["admin"]),
        "auditor": access(groups=["admin"], scope="audit"),
        "audit-scope-only": access(scope="audit"),
        "expired": access(scope="orders:read", exp=int(time.time()) - 3600),
        "id-token": mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "token_use": "id"}),
        "garbage": "not-a-jwt",
    }


@pytest.fixture(scope="module")
def doors(keys: KeyRing) -> Iterator[tuple[Authorizer, Authorizer]]:
    """(routes scope, request scope) over the same routes and keys."""
    with jwks_server(JwksEndpoint(keys.jwks())) as url:
        request_scope = {**routes_config(url), "aws_lambda": {"policy_scope": "request"}}
        with authorizer(routes_config(url)) as routes, authorizer(request_scope) as request:
            yield routes, request


@pytest.fixture(scope="module")
def door(doors: tuple[Authorizer, Authorizer]) -> Authorizer:
    return doors[0]


def gate_answer(request_door: Authorizer, token: str, arn: str) -> str:
    """What a fresh decision means: the request-scope door's Allow/Deny of this one ARN,
    except that a path the gate would normalise is never allowed under the routes scope."""
    outcome = answer(request_door, _arn_event(token, arn))[0]
    path = "/" + arn.split("/", 3)[3]
    if normalize_path(path).path != path or "%" in path:
        return "deny" if outcome == "allow" else outcome
    return outcome


def _arn_event(token: str, arn: str) -> dict[str, Any]:
    return {"type": "TOKEN", "authorizationToken": bearer(token) if token else "",
            "methodArn": arn}


TOKEN_LABELS: Final = ("none", "plain", "read", "read-write", "write", "admin", "auditor",
                       "audit-scope-only", "expired", "id-token", "garbage")


def test_token_labels(keys: KeyRing) -> None:
    assert tuple(tokens(keys)) == TOKEN_LABELS


@pytest.mark.parametrize("label", TOKEN_LABELS)
def test_cached_policy_gives_every_arn_the_fresh_answer(
    doors: tuple[Authorizer, Authorizer], keys: KeyRing, label: str,
) -> None:
    door, request_door = doors
    mismatches: list[str] = []
    allowed_somewhere = denied_somewhere = 0
    token = tokens(keys)[label]
    fresh = {arn: gate_answer(request_door, token, arn) for arn in ARNS + FIRST_CALLS}
    policies = []
    for first in FIRST_CALLS:
        outcome, policy = answer(door, _arn_event(token, first))
        assert outcome != "error", (label, first)
        if outcome == "unauthorized":
            continue  # API Gateway caches no policy for a 401
        assert iam_allows(policy, first) == (fresh[first] == "allow"), (label, first)
        policies.append(policy)
        for arn in ARNS:
            cached = iam_allows(policy, arn)
            allowed_somewhere += cached
            denied_somewhere += not cached
            if cached != (fresh[arn] == "allow"):
                mismatches.append(f"{label}: first {first.split('/', 2)[2]} -> "
                                  f"{arn.split('/', 2)[2]}: cached "
                                  f"{'allow' if cached else 'deny'}, fresh {fresh[arn]}")
    # whatever request came first, the token gets one policy (the cache key is the token)
    assert all(policy == policies[0] for policy in policies), label
    assert not mismatches, "\n".join(mismatches[:40])
    if label not in ("none", "expired", "garbage"):  # these may be only 401s and denials
        assert allowed_somewhere and denied_somewhere


def test_the_table_catches_a_leak(door: Authorizer, keys: KeyRing) -> None:
    """Guard the guard: the same policy without its Deny statement lets the `plain` token
    (no scope) reach /orders through the catch-all route, and the table sees it."""
    token = tokens(keys)["plain"]
    _, policy = answer(door, _arn_event(token, method_arn("GET", "/x")))
    leaky = {**policy, "policyDocument": {**policy["policyDocument"], "Statement": [
        s for s in policy["policyDocument"]["Statement"] if s["Effect"] == "Allow"]}}
    arn = method_arn("GET", "/orders/1")
    assert not iam_allows(answer(door, _arn_event(token, arn))[1], arn)
    assert iam_allows(leaky, arn) and not iam_allows(policy, arn)


def test_routes_context_is_the_same_for_every_route(door: Authorizer, keys: KeyRing) -> None:
    """The cached answer carries one context: the claims of every route the token passes."""
    token = tokens(keys)["read"]
    _, first = answer(door, _arn_event(token, method_arn("GET", "/orders/1")))
    _, other = answer(door, _arn_event(token, method_arn("GET", "/elsewhere")))
    assert first == other
    assert first["principalId"] == "user-1"
    assert first["context"] == {"scope": "orders:read", "sub": "user-1"}


def test_keys_unavailable_is_an_error_not_a_policy(keys: KeyRing) -> None:
    down = JwksEndpoint({}, status=503)
    with jwks_server(down) as url, authorizer(routes_config(url)) as built:
        token = tokens(keys)["read"]
        assert answer(built, _arn_event(token, method_arn("GET", "/public/x"))) == (
            "error", "keys_unavailable")


def _problems(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(yaml.safe_dump(config))
    return caught.value.problems


BASE: Final[dict[str, Any]] = {
    "issuers": {"a": {"issuer": "dev", "secret": "s" * 32, "algorithms": ["HS256"]}},
    "aws_lambda": {"policy_scope": "routes"},
}


def _route(name: str, **match: Any) -> dict[str, Any]:
    return {"name": name, "match": match}


@pytest.mark.parametrize(("routes", "aws", "expected"), [
    ([_route("r", host="api.example.com")], {}, "routes[0].match.host: policy_scope: routes "
     "cannot express a host match"),
    ([{**_route("r"), "cors_preflight": "pass"}], {}, "routes[0].cors_preflight: "),
    ([_route("r", path="/a*b")], {}, "routes[0].match: '/a*b': `*` and `?` are IAM wildcards"),
    ([_route("r", path_prefix="/a?")], {}, "routes[0].match: '/a?'"),
    ([{**_route("deep", path_prefix="/orders/archive"), "auth": {"scopes": ["archive"]}},
      {**_route("orders", path_prefix="/orders"), "auth": {"scopes": ["read"]}},
      _route("api", path_prefix="/")], {},
     "routes[1]: policy_scope: routes: 'orders' overlaps the earlier route 'deep' and the "
     "later route 'api'"),
    ([_route("r")], {"response": "simple"}, "aws_lambda.policy_scope: routes needs response: "
     "policy"),
    ([_route("r")], {"response": "iam"}, "aws_lambda.response: expected one of policy, simple"),
    ([_route("r")], {"policy_scope": "all"}, "aws_lambda.policy_scope: expected one of request"),
    ([_route("r")], {"cache": "1m"}, "aws_lambda.cache: unknown key"),
])
def test_check_refuses(routes: list[dict[str, Any]], aws: dict[str, Any], expected: str) -> None:
    config = {**BASE, "routes": routes, "aws_lambda": {**BASE["aws_lambda"], **aws}}
    problems = _problems(config)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_check_accepts_what_iam_can_say(keys: KeyRing) -> None:
    nested_implied = {**BASE, "routes": [
        {**_route("deep", path_prefix="/orders/archive"), "auth": {"scopes": ["read", "x"]}},
        {**_route("orders", path_prefix="/orders"), "auth": {"scopes": ["read"]}},
        _route("api", path_prefix="/")]}
    assert load_text(yaml.safe_dump(nested_implied)).aws_lambda.policy_scope == "routes"
    # request scope says nothing about caching: hosts and overlaps are fine
    hosts = {**BASE, "routes": [_route("r", host="api.example.com")], "aws_lambda": {}}
    assert load_text(yaml.safe_dump(hosts)).aws_lambda.policy_scope == "request"
    assert load_text(yaml.safe_dump(routes_config("http://127.0.0.1:1/jwks.json")))


def test_jwtproxy_check_names_the_path(tmp_path: Path) -> None:
    config = {**BASE, "routes": [_route("r", host="api.example.com")]}
    path = tmp_path / "jwtproxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "jwtproxy", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert "routes[0].match.host: policy_scope: routes cannot express a host match" in (
        result.stdout + result.stderr)


def test_token_event_helper_matches_arn() -> None:
    assert token_event("x", "GET", "/a")["methodArn"] == method_arn("GET", "/a")


def test_routes_scope_decides_http_v2_on_the_route_arn(door: Authorizer, keys: KeyRing) -> None:
    """Under the routes scope the decision is on what IAM evaluates: the routeArn."""
    token = tokens(keys)["read"]
    body = event("http_v2", "GET", "/orders/1", bearer(token))
    body["rawPath"] = body["requestContext"]["http"]["path"] = "/admin/x"
    outcome, response = answer(door, body)
    assert outcome == "allow"
    assert response == answer(door, _arn_event(token, method_arn("GET", "/orders/1")))[1]
