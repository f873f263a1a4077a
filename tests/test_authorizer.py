"""Route rules over verified claims: scopes (all / any) and required claim values."""

from __future__ import annotations

from typing import Any

import pytest

from jwtproxy.authorizer import authorize, claim_value, token_scopes
from jwtproxy.config import Auth
from jwtproxy.errors import Forbidden, MissingClaim, MissingScope


@pytest.mark.parametrize(("claims", "scopes"), [
    ({"scope": "a b  c"}, {"a", "b", "c"}),
    ({"scope": ""}, set()),
    ({"scp": ["a", "b"]}, {"a", "b"}),
    ({"scp": "a b"}, {"a", "b"}),
    ({"scope": ["a", "b"]}, {"a", "b"}),
    ({"scope": "a", "scp": ["b"]}, {"a", "b"}),
    ({"scp": ["a", 5, None, {"b": 1}]}, {"a"}),
    ({"scope": 5}, set()),
    ({}, set()),
])
def test_token_scopes(claims: dict[str, Any], scopes: set[str]) -> None:
    assert token_scopes(claims) == scopes


@pytest.mark.parametrize(("rule", "claims"), [
    (Auth(), {}),
    (Auth(scopes=("orders/read",)), {"scope": "openid orders/read"}),
    (Auth(scopes=("a", "b")), {"scope": "b a c"}),
    (Auth(scopes=("a", "b")), {"scp": ["a", "b"]}),
    (Auth(scopes=("a",)), {"scp": "x a"}),
    (Auth(any_scopes=("a", "b")), {"scope": "b"}),
    (Auth(any_scopes=("a", "b")), {"scp": ["z", "a"]}),
    (Auth(scopes=("a",), any_scopes=("x", "y")), {"scope": "a y"}),
])
def test_scopes_allowed(rule: Auth, claims: dict[str, Any]) -> None:
    authorize(rule, claims)


@pytest.mark.parametrize(("rule", "claims", "description", "scope"), [
    (Auth(scopes=("a",)), {}, "missing scope a", "a"),
    (Auth(scopes=("a", "b")), {"scope": "a"}, "missing scope b", "a b"),
    (Auth(scopes=("a", "b", "c")), {"scope": "b"}, "missing scope a c", "a b c"),
    (Auth(scopes=("a",)), {"scope": "ab"}, "missing scope a", "a"),
    (Auth(scopes=("a",)), {"scope": "A"}, "missing scope a", "a"),
    (Auth(scopes=("a",)), {"scp": [["a"]]}, "missing scope a", "a"),
    (Auth(scopes=("a",)), {"sc": "a"}, "missing scope a", "a"),
    (Auth(any_scopes=("a", "b")), {"scope": "c"}, "needs one of the scopes a b", "a b"),
    (Auth(any_scopes=("a", "b")), {}, "needs one of the scopes a b", "a b"),
    (Auth(scopes=("x",), any_scopes=("a", "b")), {"scope": "x"},
     "needs one of the scopes a b", "a b"),
])
def test_scopes_denied(rule: Auth, claims: dict[str, Any], description: str,
                       scope: str) -> None:
    with pytest.raises(MissingScope) as caught:
        authorize(rule, claims)
    err = caught.value
    assert (err.status, err.reason, err.error) == (403, "scope", "insufficient_scope")
    assert err.description == description
    assert err.scope == scope  # goes into WWW-Authenticate: Bearer scope="…"


NESTED = {
    "sub": "u1",
    "cognito:groups": ["admin", "dev"],
    "email_verified": True,
    "level": 3,
    "realm_access": {"roles": ["reader", "writer"], "tier": "gold"},
    "https://example.com/claims/team": "core",
    "a.b": "flat wins",
    "a": {"b": "nested"},
    "mixed": ["1", 2, True, None, {"x": 1}],
}


@pytest.mark.parametrize(("name", "expected"), [
    ("sub", "u1"),
    ("cognito:groups", "admin"),
    ("cognito:groups", "dev"),
    ("email_verified", "true"),
    ("level", "3"),
    ("realm_access.roles", "writer"),
    ("realm_access.tier", "gold"),
    ("https://example.com/claims/team", "core"),
    ("a.b", "flat wins"),
    ("mixed", "1"),
    ("mixed", "2"),
    ("mixed", "true"),
])
def test_claim_allowed(name: str, expected: str) -> None:
    authorize(Auth(claims=((name, expected),)), NESTED)


@pytest.mark.parametrize(("name", "expected"), [
    ("sub", "u2"),
    ("sub", "U1"),
    ("cognito:groups", "adm"),
    ("cognito:groups", "admin,dev"),
    ("email_verified", "True"),
    ("email_verified", "1"),
    ("level", "3.0"),
    ("realm_access.roles", "admin"),
    ("realm_access", "gold"),
    ("realm_access.missing", "x"),
    ("a.b.c", "x"),
    ("missing", "x"),
    ("mixed", "None"),
    ("mixed", "{'x': 1}"),
    ("cognito", "admin"),
])
def test_claim_denied(name: str, expected: str) -> None:
    with pytest.raises(MissingClaim) as caught:
        authorize(Auth(claims=((name, expected),)), NESTED)
    err = caught.value
    assert (err.status, err.reason, err.error) == (403, "claim", "insufficient_scope")
    assert err.description == f"claim {name} must contain {expected}"
    assert isinstance(err, Forbidden)


def test_all_claims_are_required() -> None:
    rule = Auth(claims=(("cognito:groups", "admin"), ("email_verified", "true")))
    authorize(rule, NESTED)
    with pytest.raises(MissingClaim, match="email_verified"):
        authorize(rule, {**NESTED, "email_verified": False})


def test_scopes_checked_before_claims() -> None:
    rule = Auth(scopes=("a",), claims=(("sub", "nobody"),))
    with pytest.raises(MissingScope):
        authorize(rule, {"sub": "u1"})
    with pytest.raises(MissingClaim):
        authorize(rule, {"sub": "u1", "scope": "a"})


def test_bool_is_not_an_int() -> None:
    authorize(Auth(claims=(("flag", "true"),)), {"flag": True})
    with pytest.raises(MissingClaim):
        authorize(Auth(claims=(("flag", "1"),)), {"flag": True})
    with pytest.raises(MissingClaim):
        authorize(Auth(claims=(("n", "true"),)), {"n": 1})


@pytest.mark.parametrize(("name", "value"), [
    ("cognito:groups", ["admin", "dev"]),
    ("realm_access.tier", "gold"),
    ("a.b", "flat wins"),
    ("a", {"b": "nested"}),
    ("nope.x", None),
    ("sub.x", None),
])
def test_claim_value(name: str, value: Any) -> None:
    assert claim_value(NESTED, name) == value
