"""jwtproxy in front of a reflecting upstream, with tokens from moto's Cognito.

The proxy is the real CLI (tests/proc.py); the Cognito issuer is configured with the
shorthand plus `endpoint:` so keys come from moto at `<endpoint>/<pool>/.well-known/jwks.json`
while `iss` stays `https://cognito-idp.us-east-1.amazonaws.com/<pool>`.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from interop_support import (
    COGNITO_PASSWORD,
    Cognito,
    EchoUpstream,
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

CLAIM_HEADERS = {
    "sub": "X-Auth-Subject",
    "cognito:groups": "X-Auth-Groups",
    "client_id": "X-Auth-Client",
    "token_use": "X-Auth-Token-Use",
}


def _route(name: str, upstream: str, issuer: str, **auth: Any) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"path_prefix": f"/{name}"},
        "upstream": upstream,
        "auth": {"issuers": [issuer], **auth},
        "forward": {"claims": CLAIM_HEADERS},
    }


def cognito_config(cognito: Cognito, upstream: EchoUpstream) -> dict[str, Any]:
    up = upstream.url
    return {
        "log": {"level": "info", "format": "json"},
        "issuers": {
            "cognito-access": cognito.proxy_issuer(token_use="access"),
            "cognito-id": cognito.proxy_issuer(token_use="id"),
        },
        "routes": [
            _route("access", up, "cognito-access"),
            _route("id", up, "cognito-id"),
            _route("admin", up, "cognito-access", claims={"cognito:groups": "admin"}),
            _route("signin", up, "cognito-access", scopes=["aws.cognito.signin.user.admin"]),
            _route("orders", up, "cognito-access", scopes=["https://orders.api.test/read"]),
        ],
    }


@pytest.fixture(scope="module")
def proxy(cognito: Cognito, echo_upstream: EchoUpstream) -> Iterator[ProxyProcess]:
    with proxy_process(cognito_config(cognito, echo_upstream)) as proc:
        yield proc


# ----------------------------------------------------------------------------- tests


def test_readyz_means_moto_keys_loaded(proxy: ProxyProcess) -> None:
    text = metrics_text(proxy)
    for issuer in ("cognito-access", "cognito-id"):
        assert metric_sum(text, "jwtproxy_jwks_keys", issuer=issuer) == 1, issuer


def test_access_token_accepted_by_client_id(
    proxy: ProxyProcess, cognito: Cognito, echo_upstream: EchoUpstream
) -> None:
    resp = proxy_get(proxy, "/access/items?x=1", cognito.admin.access_token)
    assert resp.status == 200, describe(resp)
    seen = echo_upstream.headers_of(resp)
    _, claims = jwt_parts(cognito.admin.access_token)
    assert resp.json()["path"] == "/access/items"
    assert seen["x-auth-subject"] == [claims["sub"]]
    assert seen["x-auth-client"] == [cognito.client_id]
    assert seen["x-auth-groups"] == ["admin"]
    assert seen["x-auth-token-use"] == ["access"]
    assert seen["authorization"] == [f"Bearer {cognito.admin.access_token}"]  # keep


def test_access_token_refused_where_id_token_required(
    proxy: ProxyProcess, cognito: Cognito
) -> None:
    label = {"route": "id", "issuer": "cognito-id", "result": "denied", "reason": "token_use"}
    before = auth_total(metrics_text(proxy), **label)
    resp = proxy_get(proxy, "/id/profile", cognito.admin.access_token)
    assert_invalid_token(resp)
    assert auth_total(metrics_text(proxy), **label) == before + 1, metrics_text(proxy)


def test_id_token_accepted_where_id_token_required(
    proxy: ProxyProcess, cognito: Cognito, echo_upstream: EchoUpstream
) -> None:
    resp = proxy_get(proxy, "/id/profile", cognito.admin.id_token)
    assert resp.status == 200, describe(resp)
    seen = echo_upstream.headers_of(resp)
    assert seen["x-auth-token-use"] == ["id"]
    # An ID token carries aud, not client_id: the header is simply absent.
    assert "x-auth-client" not in seen


def test_id_token_refused_where_access_token_required(
    proxy: ProxyProcess, cognito: Cognito
) -> None:
    label = {"route": "access", "result": "denied", "reason": "token_use"}
    before = auth_total(metrics_text(proxy), **label)
    assert_invalid_token(proxy_get(proxy, "/access/items", cognito.admin.id_token))
    assert auth_total(metrics_text(proxy), **label) == before + 1


def test_group_member_allowed(proxy: ProxyProcess, cognito: Cognito) -> None:
    resp = proxy_get(proxy, "/admin/users", cognito.admin.access_token)
    assert resp.status == 200, describe(resp)


def test_non_member_forbidden(proxy: ProxyProcess, cognito: Cognito) -> None:
    label = {"route": "admin", "result": "denied", "reason": "claim"}
    before = auth_total(metrics_text(proxy), **label)
    # A client-sent copy of the group header must not help.
    resp = proxy_get(proxy, "/admin/users", cognito.user.access_token, **{"X-Auth-Groups": "admin"})
    assert_insufficient_scope(resp)
    assert auth_total(metrics_text(proxy), **label) == before + 1


def test_client_sent_claim_headers_are_replaced(
    proxy: ProxyProcess, cognito: Cognito, echo_upstream: EchoUpstream
) -> None:
    resp = proxy_get(
        proxy,
        "/access/items",
        cognito.user.access_token,
        **{"X-Auth-Subject": "forged", "X-Auth-Groups": "admin", "x-auth-client": "forged"},
    )
    assert resp.status == 200, describe(resp)
    seen = echo_upstream.headers_of(resp)
    _, claims = jwt_parts(cognito.user.access_token)
    assert seen["x-auth-subject"] == [claims["sub"]]
    assert seen["x-auth-client"] == [cognito.client_id]
    assert "x-auth-groups" not in seen  # bob is in no group: stripped, nothing injected


def test_cognito_scope_string(proxy: ProxyProcess, cognito: Cognito) -> None:
    # moto only ever mints scope "aws.cognito.signin.user.admin" (see test_issuer_facts).
    assert proxy_get(proxy, "/signin/x", cognito.user.access_token).status == 200
    resp = proxy_get(proxy, "/orders/x", cognito.user.access_token)
    assert_insufficient_scope(resp, "https://orders.api.test/read")


def test_refresh_token_as_bearer_refused(proxy: ProxyProcess, cognito: Cognito) -> None:
    label = {"route": "access", "result": "denied", "reason": "malformed"}
    before = auth_total(metrics_text(proxy), **label)
    assert_invalid_token(proxy_get(proxy, "/access/items", cognito.admin.refresh_token))
    assert auth_total(metrics_text(proxy), **label) == before + 1


def test_jwe_shaped_refresh_token_refused(proxy: ProxyProcess) -> None:
    # Real Cognito refresh tokens are JWE (five segments, RSA-OAEP/A256GCM); moto's are
    # UUIDs, so this one has the real shape with random contents.
    header = {"cty": "JWT", "enc": "A256GCM", "alg": "RSA-OAEP"}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    token = ".".join(
        [
            b64(json.dumps(header).encode()),
            b64(secrets.token_bytes(256)),
            b64(secrets.token_bytes(12)),
            b64(secrets.token_bytes(600)),
            b64(secrets.token_bytes(16)),
        ]
    )
    assert_invalid_token(proxy_get(proxy, "/access/items", token))


def test_forged_group_claim_refused(proxy: ProxyProcess, cognito: Cognito) -> None:
    # bob's real token with `cognito:groups: [admin]` spliced into the payload.
    header, _, signature = cognito.user.access_token.split(".")
    claims = jwt_parts(cognito.user.access_token)[1] | {"cognito:groups": ["admin"]}
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    forged = f"{header}.{forged_payload.decode()}.{signature}"
    label = {"route": "admin", "result": "denied", "reason": "bad_signature"}
    before = auth_total(metrics_text(proxy), **label)
    assert_invalid_token(proxy_get(proxy, "/admin/users", forged))
    assert auth_total(metrics_text(proxy), **label) == before + 1


def test_token_of_another_app_client_refused(proxy: ProxyProcess, cognito: Cognito) -> None:
    other_client = cognito.client.create_user_pool_client(
        UserPoolId=cognito.user_pool_id,
        ClientName="other-app",
        GenerateSecret=False,
        ExplicitAuthFlows=["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]["ClientId"]
    result = cognito.client.admin_initiate_auth(
        UserPoolId=cognito.user_pool_id,
        ClientId=other_client,
        AuthFlow="ADMIN_USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": "alice", "PASSWORD": COGNITO_PASSWORD},
    )["AuthenticationResult"]
    label = {"route": "access", "result": "denied", "reason": "audience"}
    before = auth_total(metrics_text(proxy), **label)
    assert_invalid_token(proxy_get(proxy, "/access/items", result["AccessToken"]))
    assert auth_total(metrics_text(proxy), **label) == before + 1
    id_label = {"route": "id", "result": "denied", "reason": "audience"}
    before = auth_total(metrics_text(proxy), **id_label)
    assert_invalid_token(proxy_get(proxy, "/id/profile", result["IdToken"]))
    assert auth_total(metrics_text(proxy), **id_label) == before + 1


def test_allowed_requests_counted(proxy: ProxyProcess, cognito: Cognito) -> None:
    label = {"route": "access", "issuer": "cognito-access", "result": "allowed", "reason": "ok"}
    before = auth_total(metrics_text(proxy), **label)
    assert proxy_get(proxy, "/access/items", cognito.admin.access_token).status == 200
    assert auth_total(metrics_text(proxy), **label) == before + 1
