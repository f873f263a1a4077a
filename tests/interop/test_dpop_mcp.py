"""DPoP and MCP with real third-party implementations, through the real proxy process.

* DPoP: oidc-provider (DPoP on) issues `cnf.jkt`-bound JWT access tokens to a client whose
  proofs come from the npm `dpop` package (node/dpop_client.mjs), which then calls jwtproxy
  with good and bad proofs.
* MCP: the official TypeScript SDK client with its client-credentials OAuth provider
  (node/mcp_client.mjs) against a minimal SDK server (node/mcp_server.mjs) behind jwtproxy,
  with oidc-provider as the authorization server: 401 -> `resource_metadata` -> token for
  the resource -> tools listed and called.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from interop_support import (
    API_AUDIENCE,
    CLIENT_SECRET,
    EchoUpstream,
    OidcIssuer,
    ProxyProcess,
    auth_total,
    bearer,
    describe,
    http_request,
    jwt_parts,
    metrics_text,
    node_server,
    proxy_process,
    run_node,
)

pytestmark = pytest.mark.interop

WELL_KNOWN = "/.well-known/oauth-protected-resource"
REFUSED = {
    # scenario: (error, the log's dpop sub-reason)
    "replayed_jti": ("invalid_dpop_proof", "replay"),
    "other_method": ("invalid_dpop_proof", "htm"),
    "other_uri": ("invalid_dpop_proof", "htu"),
    "other_token": ("invalid_dpop_proof", "ath"),
    "other_key": ("invalid_dpop_proof", "jkt"),
    "old_iat": ("invalid_dpop_proof", "iat"),
    "future_iat": ("invalid_dpop_proof", "iat"),
    "no_proof": ("invalid_dpop_proof", "proof"),
    "two_proofs": ("invalid_dpop_proof", "proof"),
    "bound_as_bearer": ("invalid_token", "jkt"),
    "alg_none": ("invalid_dpop_proof", "proof"),
    "alg_hs256": ("invalid_dpop_proof", "proof"),
    "private_jwk": ("invalid_dpop_proof", "proof"),
    "extra_segments": ("invalid_dpop_proof", "proof"),
    "typ_jwt": ("invalid_dpop_proof", "proof"),
}


@pytest.fixture(scope="module")
def dpop_proxy(oidc_issuer: OidcIssuer, echo_upstream: EchoUpstream) -> Iterator[ProxyProcess]:
    config = {
        "issuers": {"op": {"issuer": oidc_issuer.url, "audiences": [API_AUDIENCE],
                           "algorithms": ["RS256", "ES256"], "typ": "at+jwt",
                           "dpop": {"mode": "allowed", "max_age": "300s",
                                    "algorithms": ["ES256", "Ed25519", "EdDSA"]}}},
        "routes": [{"name": "orders", "match": {"path_prefix": "/orders"},
                    "upstream": echo_upstream.url, "auth": {"issuers": ["op"]}}],
    }
    with proxy_process(config) as proc:
        yield proc


def test_oidc_provider_bound_tokens_with_npm_dpop_proofs(
    dpop_proxy: ProxyProcess, oidc_issuer: OidcIssuer,
) -> None:
    out = run_node("dpop_client.mjs", json.dumps({
        "issuer": oidc_issuer.url, "client_id": "svc-es256", "client_secret": CLIENT_SECRET,
        "resource": API_AUDIENCE, "scope": "orders:read",
        "url": f"{dpop_proxy.url}/orders/1", "other_url": f"{dpop_proxy.url}/orders/2"}))
    header, claims = jwt_parts(out["token"])
    assert out["token_type"] == "DPoP" and header["typ"] == "at+jwt"
    assert claims["cnf"] == {"jkt": out["jkt"]}  # oidc-provider bound it to the npm key
    results: dict[str, dict[str, Any]] = out["results"]
    for name in ("good", "good_post", "good_ed25519", "unbound_as_bearer"):
        assert results[name]["status"] == 200, (name, results[name])
    for name, (error, _) in REFUSED.items():
        result = results[name]
        assert result["status"] == 401, (name, result)
        assert json.loads(result["body"])["error"] == error, (name, result)
        challenge = result["www_authenticate"]  # fetch joins the challenges with ", "
        assert f'error="{error}"' in challenge, (name, challenge)
        assert 'algs="ES256 Ed25519 EdDSA"' in challenge, (name, challenge)
        assert 'Bearer realm="jwtproxy"' in challenge, (name, challenge)
    assert auth_total(metrics_text(dpop_proxy), route="orders", reason="dpop") == len(REFUSED)
    logged = [json.loads(line) for line in dpop_proxy.logs().splitlines()
              if line.startswith("{") and '"dpop"' in line]
    assert sorted(entry["dpop"] for entry in logged) == sorted(
        check for _, check in REFUSED.values())
    assert out["token"] not in dpop_proxy.logs()


# --------------------------------------------------------------------------- MCP


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[str]:
    with node_server("mcp_server.mjs") as (url, _process, _lines):
        yield url


@pytest.fixture(scope="module")
def mcp_proxy(oidc_issuer: OidcIssuer, mcp_server: str) -> Iterator[ProxyProcess]:
    config = {
        "issuers": {"op": {"issuer": oidc_issuer.url, "algorithms": ["RS256", "ES256"],
                           "typ": "at+jwt"}},
        "routes": [{"name": "mcp", "match": {"path_prefix": "/mcp"}, "upstream": mcp_server,
                    "auth": {"issuers": ["op"], "scopes": ["mcp:tools"]},
                    "forward": {"authorization": "strip"},
                    "resource_metadata": {}}],
    }
    with proxy_process(config) as proc:
        yield proc


def test_mcp_sdk_client_discovers_the_authorization_server_and_calls_a_tool(
    mcp_proxy: ProxyProcess, oidc_issuer: OidcIssuer, mcp_server: str,
) -> None:
    resource = f"{mcp_proxy.url}/mcp"
    out = run_node("mcp_client.mjs", resource, oidc_issuer.url, "svc-rs256", CLIENT_SECRET,
                   "mcp:tools")
    assert out["tools"] == ["add"]
    assert out["result"] == [{"type": "text", "text": "5"}]
    assert out["token_aud"] == resource
    urls = [(method, url.split("?")[0], status) for method, url, status in out["requests"]]
    # what the client did: refused, then the metadata, then the AS, then the token
    assert urls[0] == ("POST", resource, 401), urls
    assert ("GET", f"{mcp_proxy.url}{WELL_KNOWN}/mcp", 200) in urls, urls
    assert ("POST", f"{oidc_issuer.url}/token", 200) in urls, urls
    assert urls[-1][2] in (200, 202), urls
    seen = http_request(f"{mcp_server}/__test/seen").json()
    assert seen["requests"] >= 2 and seen["authorization"] == 0  # no token passthrough


def test_mcp_route_metadata_and_challenge(mcp_proxy: ProxyProcess, oidc_issuer: OidcIssuer) -> None:
    resp = http_request(f"{mcp_proxy.url}{WELL_KNOWN}/mcp")
    assert resp.status == 200, describe(resp)
    assert resp.json() == {
        "resource": f"{mcp_proxy.url}/mcp", "authorization_servers": [oidc_issuer.url],
        "scopes_supported": ["mcp:tools"], "bearer_methods_supported": ["header"]}
    resp = http_request(f"{mcp_proxy.url}/mcp", method="POST", data=b"{}")
    assert resp.status == 401
    for challenge in resp.headers.get_all("WWW-Authenticate"):
        assert challenge.endswith(f'resource_metadata="{mcp_proxy.url}{WELL_KNOWN}/mcp"')


def test_mcp_route_refuses_a_token_for_another_resource(
    mcp_proxy: ProxyProcess, oidc_issuer: OidcIssuer,
) -> None:
    token = oidc_issuer.access_token("orders:read", resource=API_AUDIENCE)
    before = auth_total(metrics_text(mcp_proxy), route="mcp", reason="audience")
    resp = http_request(f"{mcp_proxy.url}/mcp", method="POST", data=b"{}",
                        headers=bearer(token))
    assert resp.status == 401, describe(resp)
    assert resp.json()["error"] == "invalid_token"
    assert auth_total(metrics_text(mcp_proxy), route="mcp", reason="audience") == before + 1
