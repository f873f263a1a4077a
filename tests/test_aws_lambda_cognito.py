"""Real Cognito-shaped tokens (moto's Cognito on loopback, as tests/interop sets it up)
through the Lambda door: access tokens accepted by `client_id`, `cognito:groups`, ID tokens
refused on access routes, and the claims in the authorizer context."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any, Final

import pytest
import yaml

from jwtproxy.aws_lambda import Authorizer
from jwtproxy.loader import load_text
from tests.aws_lambda_support import answer, bearer, deny_policy, event, method_arn
from tests.interop.interop_support import Cognito, run_moto_cognito

CONTEXT: Final = {"sub": "X-Auth-Subject", "cognito:groups": "X-Auth-Groups",
                  "client_id": "X-Auth-Client", "token_use": "X-Auth-Token-Use"}


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@pytest.fixture(scope="module")
def cognito() -> Iterator[Cognito]:
    with run_moto_cognito() as pool:
        yield pool


@pytest.fixture(scope="module")
def door(cognito: Cognito) -> Iterator[Authorizer]:
    def route(name: str, issuer: str, **auth: Any) -> dict[str, Any]:
        return {"name": name, "match": {"path_prefix": f"/{name}"},
                "auth": {"issuers": [issuer], **auth},
                "forward": {"claims": CONTEXT}}

    config = {
        "log": {"level": "warning"},
        "issuers": {"cognito-access": cognito.proxy_issuer(token_use="access"),
                    "cognito-id": cognito.proxy_issuer(token_use="id")},
        "routes": [
            route("access", "cognito-access"),
            route("id", "cognito-id"),
            route("admin", "cognito-access", claims={"cognito:groups": "admin"}),
            route("orders", "cognito-access", scopes=["https://orders.api.test/read"]),
        ],
    }
    built = Authorizer(load_text(yaml.safe_dump(config)))
    try:
        yield built
    finally:
        built.close()


@pytest.mark.parametrize("shape", ["rest_token", "http_v2"])
def test_access_token_allowed_with_its_claims_as_context(
    door: Authorizer, cognito: Cognito, shape: str,
) -> None:
    token = cognito.admin.access_token
    sub = _claims(token)["sub"]
    got = answer(door, event(shape, "GET", "/access/items", bearer(token)))
    assert got == ("allow", {
        "principalId": sub,
        "policyDocument": {"Version": "2012-10-17", "Statement": [{
            "Action": "execute-api:Invoke", "Effect": "Allow",
            "Resource": method_arn("GET", "/access/items")}]},
        "context": {"sub": sub, "cognito:groups": "admin", "client_id": cognito.client_id,
                    "token_use": "access"}})


def test_groups(door: Authorizer, cognito: Cognito) -> None:
    arn = method_arn("GET", "/admin/users")
    assert answer(door, event("rest_token", "GET", "/admin/users",
                              bearer(cognito.admin.access_token)))[0] == "allow"
    bob = cognito.user.access_token
    assert answer(door, event("rest_token", "GET", "/admin/users", bearer(bob))) == (
        "deny", deny_policy(_claims(bob)["sub"], arn))


def test_id_token_only_where_id_tokens_go(door: Authorizer, cognito: Cognito) -> None:
    id_token = cognito.admin.id_token
    assert answer(door, event("rest_request", "GET", "/access/x", bearer(id_token))) == (
        "unauthorized", None)
    got = answer(door, event("rest_request", "GET", "/id/profile", bearer(id_token)))
    assert got[0] == "allow"
    assert "client_id" not in got[1]["context"]  # an ID token has aud, not client_id
    assert answer(door, event("rest_request", "GET", "/id/profile",
                              bearer(cognito.admin.access_token))) == ("unauthorized", None)


def test_scope_and_refresh_token(door: Authorizer, cognito: Cognito) -> None:
    # moto mints only aws.cognito.signin.user.admin (see tests/interop/test_issuer_facts)
    assert answer(door, event("http_v1", "GET", "/orders/1",
                              bearer(cognito.user.access_token)))[0] == "deny"
    assert answer(door, event("http_v1", "GET", "/access/1",
                              bearer(cognito.user.refresh_token))) == ("unauthorized", None)
