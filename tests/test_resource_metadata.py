"""RFC 9728 protected-resource metadata through the real proxy: where each route's
document is served, what it says, the `resource_metadata` challenge on every 401 of its
route (and nowhere else), and the audience binding to the resource (RFC 8707)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from jwtproxy.errors import ConfigError
from jwtproxy.loader import load_text
from tests.conftest import AUDIENCE, ISSUER, Proxy, ProxyFactory, base_config
from tests.servers import EchoUpstream, JwksEndpoint
from tests.tokens import KeyRing, mint

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_config(jwks_url: str, upstream_url: str, **server: Any) -> dict[str, Any]:
    config = base_config(jwks_url, upstream_url)
    route = {"upstream": upstream_url, "forward": {"authorization": "strip"}}
    config["routes"] = [
        {**route, "name": "mcp", "match": {"path_prefix": "/mcp"},
         "auth": {"scopes": ["mcp:tools"]}, "resource_metadata": {}},
        {**route, "name": "nested", "match": {"path_prefix": "/api/v1"},
         "resource_metadata": {"resource": "https://api.example.com/api/v1",
                               "authorization_servers": ["https://login.example.com"],
                               "scopes_supported": ["a", "b"]}},
        {**route, "name": "slash", "match": {"path": "/docs/"}, "resource_metadata": {}},
        {**route, "name": "plain", "match": {"path_prefix": "/plain"}},
        {**route, "name": "root", "match": {"path_prefix": "/"}, "resource_metadata": {}},
    ]
    if server:
        config["server"] = server
    return config


@pytest.fixture
async def mproxy(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], upstream: tuple[EchoUpstream, str],
) -> Proxy:
    return await make_proxy(metadata_config(jwks[1], upstream[1]))


def origin(proxy: Proxy) -> str:
    return str(proxy.client.make_url("")).rstrip("/")


def token_for(keys: KeyRing, *audiences: str, scope: str = "mcp:tools") -> str:
    return mint(keys.rsa, {"iss": ISSUER, "aud": [AUDIENCE, *audiences], "scope": scope})


async def test_documents_are_served_unauthenticated_at_the_rfc_9728_paths(
    mproxy: Proxy, upstream: tuple[EchoUpstream, str],
) -> None:
    base = origin(mproxy)
    dpop: dict[str, Any] = {}  # the issuer has no `dpop:` setting: DPoP is not advertised
    expected = {
        WELL_KNOWN + "/mcp": {"resource": f"{base}/mcp", "authorization_servers": [ISSUER],
                              "scopes_supported": ["mcp:tools"],
                              "bearer_methods_supported": ["header"], **dpop},
        WELL_KNOWN + "/api/v1": {"resource": "https://api.example.com/api/v1",
                                 "authorization_servers": ["https://login.example.com"],
                                 "scopes_supported": ["a", "b"],
                                 "bearer_methods_supported": ["header"], **dpop},
        WELL_KNOWN + "/docs/": {"resource": f"{base}/docs/", "authorization_servers": [ISSUER],
                                "bearer_methods_supported": ["header"], **dpop},
        WELL_KNOWN: {"resource": base, "authorization_servers": [ISSUER],
                     "bearer_methods_supported": ["header"], **dpop},
    }
    for path, document in expected.items():
        resp = await mproxy.client.get(path)
        assert resp.status == 200, (path, await resp.text())
        assert resp.content_type == "application/json"
        assert await resp.json() == document, path
        assert (await mproxy.client.head(path)).status == 200
    assert upstream[0].received == []
    # not a document: another method, a path below, the route without metadata
    for method, path in (("POST", WELL_KNOWN + "/mcp"), ("GET", WELL_KNOWN + "/mcp/x"),
                         ("GET", WELL_KNOWN + "/plain")):
        resp = await mproxy.client.request(method, path)
        assert resp.status == 401, (method, path)  # the root route protects them


async def test_forwarded_origin_counts_only_from_trusted_proxies(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], upstream: tuple[EchoUpstream, str],
) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "mcp.example.com"}
    untrusting = await make_proxy(metadata_config(jwks[1], upstream[1]))
    trusting = await make_proxy(metadata_config(
        jwks[1], upstream[1], trusted_proxies=["127.0.0.1/32", "::1/128"]))
    for proxy, base in ((untrusting, origin(untrusting)), (trusting, "https://mcp.example.com")):
        doc = await (await proxy.client.get(WELL_KNOWN + "/mcp", headers=forwarded)).json()
        assert doc["resource"] == f"{base}/mcp"
        resp = await proxy.client.get("/mcp", headers=forwarded)
        assert resp.headers["WWW-Authenticate"] == (
            f'Bearer realm="jwtproxy", resource_metadata="{base}{WELL_KNOWN}/mcp"')
    resp = await untrusting.client.get(WELL_KNOWN + "/mcp", headers={"Host": 'x"y'})
    assert resp.status == 400


async def test_every_401_of_the_route_carries_resource_metadata_and_nothing_else_does(
    mproxy: Proxy, keys: KeyRing,
) -> None:
    base = origin(mproxy)
    url = f'resource_metadata="{base}{WELL_KNOWN}/mcp"'
    expired = mint(keys.rsa, {"iss": ISSUER, "aud": [AUDIENCE, f"{base}/mcp"],
                              "exp": 1_000_000})
    for headers in ({}, {"Authorization": "Bearer not.a.token"},
                    {"Authorization": f"Bearer {expired}"},
                    {"Authorization": f"Bearer {token_for(keys)}"},  # not for this resource
                    {"Authorization": f"DPoP {token_for(keys, f'{base}/mcp')}"}):
        resp = await mproxy.client.get("/mcp/tools", headers=headers)
        assert resp.status == 401, headers
        challenges = resp.headers.getall("WWW-Authenticate")
        # one per scheme offered: Bearer, and DPoP where the client used it
        assert len(challenges) == (2 if "DPoP" in str(headers) else 1), challenges
        assert all(c.endswith(url) for c in challenges), challenges
    # a 403 (enough to be authenticated) and another route's 401 do not carry it
    resp = await mproxy.client.get("/mcp/tools", headers={
        "Authorization": f"Bearer {token_for(keys, f'{base}/mcp', scope='other')}"})
    assert resp.status == 403
    assert all("resource_metadata" not in c for c in resp.headers.getall("WWW-Authenticate"))
    resp = await mproxy.client.get("/plain")
    assert resp.status == 401
    assert all("resource_metadata" not in c for c in resp.headers.getall("WWW-Authenticate"))
    # the configured resource decides the metadata URL's origin
    resp = await mproxy.client.get("/api/v1/x")
    assert resp.headers["WWW-Authenticate"].endswith(
        f'resource_metadata="https://api.example.com{WELL_KNOWN}/api/v1"')
    resp = await mproxy.client.get("/anything")
    assert resp.headers["WWW-Authenticate"].endswith(f'resource_metadata="{base}{WELL_KNOWN}"')


async def test_the_route_takes_only_tokens_for_its_resource(
    mproxy: Proxy, keys: KeyRing, upstream: tuple[EchoUpstream, str],
) -> None:
    base = origin(mproxy)
    resp = await mproxy.client.get("/mcp/tools", headers={
        "Authorization": f"Bearer {token_for(keys, 'https://other.example/mcp')}"})
    assert resp.status == 401 and "audience" in (await resp.json())["error_description"]
    assert await mproxy.metric("jwtproxy_auth_total", route="mcp", reason="audience") == 1
    resp = await mproxy.client.get("/mcp/tools", headers={
        "Authorization": f"Bearer {token_for(keys, f'{base}/mcp')}"})
    assert resp.status == 200, await resp.text()
    # forward.authorization: strip (no token passthrough)
    assert upstream[0].received[-1].header("Authorization") is None


async def test_dpop_in_the_document_and_challenge_when_configured(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], upstream: tuple[EchoUpstream, str],
) -> None:
    config = metadata_config(jwks[1], upstream[1])
    config["issuers"]["main"]["dpop"] = {"mode": "required", "algorithms": ["ES256", "EdDSA"]}
    proxy = await make_proxy(config)
    doc = await (await proxy.client.get(WELL_KNOWN + "/mcp")).json()
    assert doc["dpop_signing_alg_values_supported"] == ["ES256", "EdDSA"]
    assert doc["dpop_bound_access_tokens_required"] is True
    resp = await proxy.client.get("/mcp")
    assert resp.headers.getall("WWW-Authenticate") == [
        f'DPoP algs="ES256 EdDSA", resource_metadata="{origin(proxy)}{WELL_KNOWN}/mcp"']


def _load(config: dict[str, Any]) -> list[str]:
    try:
        load_text(yaml.safe_dump(config))
    except ConfigError as err:
        return err.problems
    return []


def test_config_errors_name_their_path() -> None:
    config = base_config("https://issuer.test/jwks.json", "http://127.0.0.1:1")
    config["routes"][0]["resource_metadata"] = {}  # the public route
    config["routes"][1]["resource_metadata"] = {
        "resource": "https://x.test/mcp#frag", "authorization_servers": ["ftp://idp"],
        "extra": 1}
    config["issuers"]["main"]["dpop"] = {"mode": "sometimes", "algorithms": ["HS256"],
                                         "max_age": 0}
    problems = "\n".join(_load(config))
    for path in ("routes[0].resource_metadata", "routes[1].resource_metadata.resource",
                 "routes[1].resource_metadata.authorization_servers[0]",
                 "routes[1].resource_metadata.extra", "issuers.main.dpop.mode",
                 "issuers.main.dpop.algorithms[0]", "issuers.main.dpop.max_age"):
        assert f"{path}:" in problems, (path, problems)


def test_check_warns_on_token_passthrough(tmp_path: Path) -> None:
    config = base_config("https://issuer.test/jwks.json", "http://127.0.0.1:1")
    config["routes"][1]["resource_metadata"] = {}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "jwtproxy", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "warning: routes[1].forward.authorization: keep passes the client's token" in (
        result.stderr)
    config["routes"][1]["forward"] = {"authorization": "strip"}
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "jwtproxy", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "warning" not in result.stderr


def test_explain_shows_the_metadata_url(tmp_path: Path) -> None:
    config = base_config("https://issuer.test/jwks.json", "http://127.0.0.1:1")
    config["routes"][1]["resource_metadata"] = {}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "jwtproxy", "explain", "-c", str(path), "--offline",
         "--host", "mcp.example.com", "/orders/1"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (f"http://mcp.example.com{WELL_KNOWN}/orders (resource "
            "http://mcp.example.com/orders") in result.stdout
    assert f'resource_metadata="http://mcp.example.com{WELL_KNOWN}/orders"' in result.stdout
