"""`jwtproxy explain`: the real CLI against a config with a `jwks_file:` issuer and a
`secret:` issuer (both written at test time), plus online cases against a real JWKS
server on loopback, run in-process."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from jwtproxy.cli import main
from jwtproxy.explain import explain
from jwtproxy.loader import load_text
from tests.conftest import AUDIENCE, ISSUER
from tests.servers import JwksEndpoint
from tests.tokens import KeyRing, mint

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = "http://127.0.0.1:8000"
HS_ISSUER = "hs-issuer"
REALM_ONLY = 'WWW-Authenticate: Bearer realm="jwtproxy"\n'


@dataclass
class Setup:
    config: Path
    keys: KeyRing
    secret: bytes


def good(**extra: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read", **extra}


@pytest.fixture
def setup(tmp_path: Path, keys: KeyRing) -> Setup:
    (tmp_path / "jwks.json").write_text(json.dumps(keys.jwks()))
    secret = secrets.token_urlsafe(32)
    config = {
        "issuers": {
            "files": {"issuer": ISSUER, "jwks_file": "jwks.json", "audiences": [AUDIENCE],
                      "algorithms": ["RS256", "ES256"]},
            "shared": {"issuer": HS_ISSUER, "secret": secret, "audiences": [AUDIENCE]},
        },
        "routes": [
            {"name": "public", "match": {"path_prefix": "/public"}, "upstream": UPSTREAM,
             "auth": "none"},
            {"name": "admin", "upstream": UPSTREAM,
             "match": {"host": "api.example.com", "path_prefix": "/admin", "methods": ["POST"]},
             "auth": {"issuers": ["files"], "claims": {"groups": "admin"}}},
            {"name": "orders", "match": {"path_prefix": "/orders"}, "upstream": UPSTREAM,
             "auth": {"issuers": ["files", "shared"], "scopes": ["orders:read"]},
             "forward": {"claims": {"sub": "X-Auth-Subject", "groups": "X-Auth-Groups",
                                    "email": "X-Auth-Email"}}},
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return Setup(path, keys, secret.encode())


def run(setup: Setup, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jwtproxy", "explain", "-c", str(setup.config), *args],
        capture_output=True, text=True, input=stdin, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def test_allowed_shows_every_check_upstream_and_claim_headers(setup: Setup) -> None:
    token = mint(setup.keys.rsa, good(groups=["a", "b"]))
    result = run(setup, "/orders/7?x=1", token)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("route", "token", "structure", "issuer", "key", "signature", "typ", "exp",
                 "audience", "authorize"):
        assert f"✓ {step} " in out, step
    assert "✗" not in out
    assert "-> route orders" in out
    assert "token aud 'api://orders' is one of ['api://orders']" in out
    assert f"✓ ALLOW: GET forwarded to {UPSTREAM}/orders/7?x=1" in out
    assert "X-Auth-Subject: user-1\n" in out
    assert "X-Auth-Groups: a,b\n" in out
    assert "X-Auth-Email: (not sent: the token has no email claim)" in out
    assert token not in out


def test_secret_issuer_with_token_from_stdin(setup: Setup) -> None:
    token = mint(None, {"iss": HS_ISSUER, "aud": AUDIENCE, "scope": "orders:read"},
                 secret=setup.secret)
    result = run(setup, "/orders/1", "-", stdin=token + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"iss {HS_ISSUER} -> issuer shared" in result.stdout
    assert "HS256 verified" in result.stdout


def _expired(keys: KeyRing) -> str:
    now = int(time.time())
    return mint(keys.rsa, good(iat=now - 7200, exp=now - 3600))


DENIALS = [
    # (case, path, token factory, status, lines the output must contain)
    ("expired", "/orders/1", _expired, 401,
     ["✗ exp", "expired at", ", 1h 0m ago (leeway 60s)",
      'WWW-Authenticate: Bearer realm="jwtproxy", error="invalid_token", '
      'error_description="token expired"\n']),
    ("wrong audience", "/orders/1", lambda k: mint(k.rsa, good(aud="api://other")), 401,
     ["✗ audience", "token aud 'api://other' is not one of ['api://orders']",
      'error_description="token audience is not accepted"']),
    ("missing scope", "/orders/1", lambda k: mint(k.rsa, good(scope="profile")), 403,
     ["✗ scope", "missing scope orders:read: the route requires all of ['orders:read']; "
      "token has ['profile']",
      'WWW-Authenticate: Bearer realm="jwtproxy", error="insufficient_scope", '
      'error_description="missing scope orders:read", scope="orders:read"\n']),
    ("no route", "/elsewhere", lambda k: mint(k.rsa, good()), 404,
     ["✗ route", "no route matches GET localhost/elsewhere", "public: path_prefix /public",
      'body: {"error": "not_found"}']),
    ("no token", "/orders/1", lambda k: "", 401,
     ["✗ token", "no token (looked in: header Authorization); the route requires one",
      REALM_ONLY]),
]

# The same checks run in-process through `cli.main` (one interpreter start is ~1 s).
MORE_DENIALS = [
    ("bad signature", "/orders/1", lambda k: mint(k.other_rsa, good()), 401,
     ["✗ bad_signature", "signature does not verify with the key kid='rsa-1'"]),
    ("iss differs by a slash", "/orders/1",
     lambda k: mint(k.rsa, good(iss=ISSUER.rstrip("/"))), 401,
     ["✗ issuer", "a trailing slash differs: iss must match exactly"]),
    ("alg not allowed", "/orders/1", lambda k: mint(k.ed, good()), 401,
     ["✗ alg", "issuer files allows ['RS256', 'ES256']"]),
    ("unknown kid", "/orders/1",
     lambda k: mint(k.rsa, good(), header={"kid": "gone"}), 401,
     ["✗ unknown_kid", "token kid 'gone', issuer files has ['rsa-1', 'ec-1', 'ed-1']"]),
]


@pytest.mark.parametrize(("case", "path", "factory", "status", "expected"), DENIALS,
                         ids=[row[0] for row in DENIALS])
def test_denials_name_the_failed_check_and_the_exact_answer(
    setup: Setup, case: str, path: str, factory: Any, status: int, expected: list[str],
) -> None:
    token = factory(setup.keys)
    result = run(setup, path, *([token] if token else []))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"✗ DENY: {status} " in result.stdout
    for text in expected:
        assert text in result.stdout, (case, text, result.stdout)


@pytest.mark.parametrize(("case", "path", "factory", "status", "expected"), MORE_DENIALS,
                         ids=[row[0] for row in MORE_DENIALS])
def test_more_denials_in_process(
    setup: Setup, capsys: pytest.CaptureFixture[str],
    case: str, path: str, factory: Any, status: int, expected: list[str],
) -> None:
    code = main(["explain", "-c", str(setup.config), path, factory(setup.keys)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"✗ DENY: {status} " in out
    for text in expected:
        assert text in out, (case, text, out)


def test_method_and_host_select_the_route(setup: Setup) -> None:
    token = mint(setup.keys.ec, good(groups=["staff", "admin"]))
    allowed = run(setup, "--method", "post", "--host", "api.example.com", "/admin/x", token)
    assert allowed.returncode == 0, allowed.stdout
    assert "POST api.example.com/admin/x -> route admin" in allowed.stdout
    assert "groups ['staff', 'admin'] contains 'admin'" in allowed.stdout
    wrong_method = run(setup, "--host", "api.example.com", "/admin/x", token)
    assert wrong_method.returncode == 1
    assert "✗ DENY: 404 " in wrong_method.stdout
    not_admin = run(setup, "--method", "POST", "--host", "api.example.com", "/admin/x",
                    mint(setup.keys.ec, good(groups=["staff"])))
    assert not_admin.returncode == 1
    assert "claim groups must equal or contain 'admin'; token has ['staff']" in not_admin.stdout
    assert 'error="insufficient_scope"' in not_admin.stdout


def test_json_output(setup: Setup) -> None:
    result = run(setup, "--json", "/orders/9", mint(setup.keys.rsa, good(scope="profile")))
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["route"] == "orders"
    assert data["issuer"] == "files"
    assert data["status"] == 403
    assert data["allowed"] is False
    assert data["reason"] == "scope"
    assert data["www_authenticate"].endswith('scope="orders:read"')
    assert data["body"] == {"error": "insufficient_scope",
                            "error_description": "missing scope orders:read"}
    assert [step["name"] for step in data["steps"]] == [
        "route", "token", "structure", "issuer", "key", "signature", "typ", "exp", "iat",
        "audience", "scope"]
    assert [step["ok"] for step in data["steps"]][-2:] == [True, False]
    assert data["forward_headers"] == {}

    allowed = run(setup, "--json", "/orders/9", mint(setup.keys.rsa, good(email="a@b.c")))
    assert allowed.returncode == 0
    data = json.loads(allowed.stdout)
    assert (data["status"], data["allowed"], data["www_authenticate"]) == (200, True, None)
    assert data["upstream_url"] == f"{UPSTREAM}/orders/9"
    assert data["forward_headers"] == {"X-Auth-Subject": "user-1", "X-Auth-Email": "a@b.c"}
    assert all(step["ok"] for step in data["steps"])


def test_public_route_and_config_error(setup: Setup, tmp_path: Path) -> None:
    public = run(setup, "/public/x")
    assert public.returncode == 0
    assert "✓ auth" in public.stdout and "route is public" in public.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("routes: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "jwtproxy", "explain", "-c", str(broken), "/x"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "invalid config" in result.stderr


def test_offline_does_not_fetch_remote_keys(setup: Setup, tmp_path: Path) -> None:
    data = yaml.safe_load(setup.config.read_text())
    data["issuers"]["files"] = {"issuer": ISSUER, "jwks_uri": "http://127.0.0.1:9/jwks.json",
                                "audiences": [AUDIENCE]}
    setup.config.write_text(yaml.safe_dump(data))
    result = run(setup, "--offline", "/orders/1", mint(setup.keys.rsa, good()))
    assert result.returncode == 1
    assert "✗ keys_unavailable" in result.stdout
    assert "--offline does not fetch them from http://127.0.0.1:9/jwks.json" in result.stdout
    assert "✗ DENY: 503 " in result.stdout and "Retry-After: 30" in result.stdout
    hs = mint(None, {"iss": HS_ISSUER, "aud": AUDIENCE, "scope": "orders:read"},
              secret=setup.secret)
    assert run(setup, "--offline", "/orders/1", hs).returncode == 0


# -- online: keys fetched from a real JWKS server, explain run in-process ----------------


def online_config(jwks_url: str) -> str:
    return yaml.safe_dump({
        "issuers": {"main": {"issuer": ISSUER, "jwks_uri": jwks_url, "audiences": [AUDIENCE],
                             "algorithms": ["RS256", "ES256"]}},
        "routes": [{"name": "orders", "match": {"path_prefix": "/orders"},
                    "upstream": UPSTREAM, "auth": {"scopes": ["orders:read"]},
                    "forward": {"claims": {"sub": "X-Auth-Subject"}}}],
    })


async def test_online_fetches_the_jwks(
    jwks: tuple[JwksEndpoint, str], keys: KeyRing,
) -> None:
    endpoint, url = jwks
    out = io.StringIO()
    code = await explain(load_text(online_config(url)), "GET", "localhost", "/orders/3",
                         mint(keys.ec, good()), as_json=True, out=out)
    data = json.loads(out.getvalue())
    assert code == 0, data
    assert endpoint.hits == 1
    assert {"name": "key", "ok": True, "detail": "kid=ec-1 kty=EC crv=P-256"} in data["steps"]
    assert data["forward_headers"] == {"X-Auth-Subject": "user-1"}


async def test_online_jwks_failure_is_explained(
    jwks: tuple[JwksEndpoint, str], keys: KeyRing,
) -> None:
    endpoint, url = jwks
    endpoint.status = 500
    out = io.StringIO()
    code = await explain(load_text(online_config(url)), "GET", "localhost", "/orders/3",
                         mint(keys.rsa, good()), out=out)
    text = out.getvalue()
    assert code == 1
    assert f"keys of issuer main are unavailable: GET {url}: HTTP 500" in text
    assert "✗ DENY: 503 (keys_unavailable)" in text
