"""What the third-party issuers actually emit, checked without the proxy.

These pin the facts the proxy tests rely on (and that the docs may quote): if moto or
oidc-provider change behaviour, these fail first and say what changed.
"""

from __future__ import annotations

import pytest
from interop_support import (
    API_AUDIENCE,
    Cognito,
    OidcIssuer,
    http_request,
    jwt_parts,
)

pytestmark = pytest.mark.interop


# ----------------------------------------------------------------------------- moto


def test_moto_iss_is_real_cognito_issuer(cognito: Cognito) -> None:
    for token in (cognito.admin.access_token, cognito.admin.id_token):
        _, claims = jwt_parts(token)
        # Not moto's own host: the same iss as real Cognito, so the proxy's expected iss
        # does not change when only the JWKS endpoint is local.
        assert claims["iss"] == (
            f"https://cognito-idp.us-east-1.amazonaws.com/{cognito.user_pool_id}"
        )


def test_moto_access_token_shape(cognito: Cognito) -> None:
    header, claims = jwt_parts(cognito.admin.access_token)
    # moto signs every pool with one bundled RSA key, kid "dummy"; joserfc adds typ JWT
    # (real Cognito sends no typ).
    assert header == {"typ": "JWT", "kid": "dummy", "alg": "RS256"}
    assert claims["token_use"] == "access"
    assert claims["client_id"] == cognito.client_id
    assert "aud" not in claims
    assert claims["username"] == "alice"
    assert claims["cognito:groups"] == ["admin"]
    # moto does not mint custom resource-server scopes, whatever the app client allows.
    assert claims["scope"] == "aws.cognito.signin.user.admin"
    _, bob = jwt_parts(cognito.user.access_token)
    assert "cognito:groups" not in bob


def test_moto_id_token_shape(cognito: Cognito) -> None:
    header, claims = jwt_parts(cognito.admin.id_token)
    assert header == {"typ": "JWT", "kid": "dummy", "alg": "RS256"}
    assert claims["token_use"] == "id"
    assert claims["aud"] == cognito.client_id
    assert "client_id" not in claims
    assert claims["cognito:username"] == "alice"
    assert claims["cognito:groups"] == ["admin"]


def test_moto_refresh_token_is_opaque(cognito: Cognito) -> None:
    # A UUID, not Cognito's JWE (five segments): as a bearer it can only be "malformed".
    assert cognito.admin.refresh_token.count(".") == 0
    assert len(cognito.admin.refresh_token) == 36


def test_moto_serves_jwks_at_pool_path(cognito: Cognito) -> None:
    resp = http_request(cognito.jwks_url)
    assert resp.status == 200
    keys = resp.json()["keys"]
    assert [(k["kid"], k["kty"], k["alg"], k["use"]) for k in keys] == [
        ("dummy", "RSA", "RS256", "sig")
    ]
    # (moto up to 5.2.1 served no discovery document for a pool, 5.2.5 does: the Cognito
    # shorthand goes straight to the key URL either way, so nothing here depends on it)


# ----------------------------------------------------------------------------- oidc-provider


def test_oidc_provider_discovery_over_loopback_http(oidc_issuer: OidcIssuer) -> None:
    doc = oidc_issuer.discovery()
    assert doc["issuer"] == oidc_issuer.url  # no trailing slash
    assert oidc_issuer.url.startswith("http://127.0.0.1:")
    assert doc["jwks_uri"] == f"{oidc_issuer.url}/jwks"
    kinds = {(k["kty"], k["alg"]) for k in oidc_issuer.jwks()["keys"]}
    assert kinds == {("RSA", "RS256"), ("EC", "ES256")}


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_oidc_provider_jwt_access_token(oidc_issuer: OidcIssuer, alg: str) -> None:
    token = oidc_issuer.access_token("orders:read", alg=alg)
    header, claims = jwt_parts(token)
    assert header["typ"] == "at+jwt"  # RFC 9068
    assert header["alg"] == alg
    assert header["kid"] == oidc_issuer.keys_state()["signing"][alg]
    assert claims["iss"] == oidc_issuer.url
    assert claims["aud"] == API_AUDIENCE
    assert claims["scope"] == "orders:read"
    assert claims["client_id"] == claims["sub"] == f"svc-{alg.lower()}"


def test_oidc_provider_drops_scopes_of_another_resource(oidc_issuer: OidcIssuer) -> None:
    # Asking for a scope the resource does not have is not an error: it is left out.
    _, claims = jwt_parts(oidc_issuer.access_token("orders:read other:read"))
    assert claims["scope"] == "orders:read"


def test_oidc_provider_id_token_has_no_typ(oidc_issuer: OidcIssuer) -> None:
    header, claims = jwt_parts(oidc_issuer.id_token())
    assert "typ" not in header
    assert header["alg"] == "RS256"
    assert claims["aud"] == "web"
    assert claims["sub"] == "alice"
    assert claims["iss"] == oidc_issuer.url


def test_oidc_provider_rotation_keeps_previous_keys(oidc_issuer: OidcIssuer) -> None:
    before = oidc_issuer.keys_state()
    after = oidc_issuer.rotate()
    assert set(after["signing"].values()).isdisjoint(before["signing"].values())
    published = [k["kid"] for k in oidc_issuer.jwks()["keys"]]
    assert published == after["kids"]
    assert set(before["signing"].values()) <= set(published)
    header, _ = jwt_parts(oidc_issuer.access_token(alg="ES256"))
    assert header["kid"] == after["signing"]["ES256"]
