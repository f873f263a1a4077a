"""`jwtproxy token`: minted tokens pass the real verifier (and `jwtproxy explain`) for a
`secret` and a `jwks_file` issuer; every key or issuer it cannot sign for is refused."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from joserfc import jwk

from jwtproxy.cli import main
from jwtproxy.jwks import build_stores
from jwtproxy.loader import load_text
from jwtproxy.verifier import Verifier
from tests.conftest import AUDIENCE, ISSUER
from tests.tokens import KeyRing


@pytest.fixture
def config_path(tmp_path: Path, keys: KeyRing) -> Path:
    (tmp_path / "jwks.json").write_text(json.dumps(keys.jwks()))
    (tmp_path / "rsa.pem").write_bytes(keys.rsa.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ec_jwk = dict(jwk.import_key(keys.ec.private, "EC").as_dict(private=True))
    (tmp_path / "ec.jwk").write_text(json.dumps(ec_jwk))
    (tmp_path / "ec-public.jwk").write_text(json.dumps(keys.ec.public_jwk()))
    (tmp_path / "other.pem").write_bytes(keys.other_rsa.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    config = {
        "issuers": {
            "files": {"issuer": ISSUER, "jwks_file": "jwks.json", "audiences": [AUDIENCE],
                      "algorithms": ["RS256", "ES256"], "token_use": "access"},
            "shared": {"issuer": "hs-issuer", "secret": secrets.token_urlsafe(32),
                       "audiences": [AUDIENCE]},
            "remote": {"issuer": "https://login.example.com/",
                       "jwks_uri": "https://login.example.com/jwks"},
        },
        "routes": [{"name": "api", "upstream": "http://127.0.0.1:9",
                    "match": {"path_prefix": "/"},
                    "auth": {"issuers": ["files", "shared"], "scopes": ["orders:read"]}}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def token(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jwtproxy", "token", "-c", str(config_path), *args],
        capture_output=True, text=True, timeout=60, cwd=config_path.parent)


async def claims_of(config_path: Path, minted: str) -> dict[str, Any]:
    config = load_text(config_path.read_text(), base_dir=config_path.parent)
    stores = build_stores(config.issuers.values(), None)
    for name in ("files", "shared"):
        await stores[name].start()
    verified = await Verifier(config.issuers, stores).verify(minted, ("files", "shared"))
    return dict(verified.claims)


@pytest.mark.parametrize(("args", "issuer", "alg"), [
    (("--issuer", "shared"), "hs-issuer", "HS256"),
    (("--issuer", "files", "--key", "rsa.pem"), ISSUER, "RS256"),
    (("--issuer", "files", "--key", "ec.jwk"), ISSUER, "ES256"),
])
async def test_a_minted_token_passes_the_verifier(
    config_path: Path, args: tuple[str, ...], issuer: str, alg: str
) -> None:
    result = token(config_path, *args, "--scope", "orders:read", "--sub", "alice",
                   "--claim", "groups=[\"admin\"]", "--claim", "team=blue")
    assert result.returncode == 0, result.stderr
    minted = result.stdout.strip()
    header = json.loads(base64.urlsafe_b64decode(minted.split(".")[0] + "=="))
    assert header["alg"] == alg and header["typ"] == "JWT"
    claims = await claims_of(config_path, minted)
    assert claims["iss"] == issuer and claims["aud"] == AUDIENCE and claims["sub"] == "alice"
    assert claims["scope"] == "orders:read"
    assert (claims["groups"], claims["team"]) == (["admin"], "blue")
    assert claims["exp"] - claims["iat"] == 3600
    assert claims.get("token_use") == ("access" if issuer == ISSUER else None)


def test_explain_allows_a_minted_token(config_path: Path) -> None:
    minted = token(config_path, "--issuer", "files", "--key", "rsa.pem",
                   "--scope", "orders:read").stdout.strip()
    result = subprocess.run(
        [sys.executable, "-m", "jwtproxy", "explain", "-c", str(config_path), "--offline",
         "/orders", minted], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--issuer", "remote"), "issuer remote fetches its keys"),
    (("--issuer", "files"), "issuer files uses jwks_file: give --key"),
    (("--issuer", "files", "--key", "other.pem"), "its public key is not in"),
    (("--issuer", "files", "--key", "ec-public.jwk"), "not a private key"),
    (("--issuer", "files", "--key", "config.yaml"), "not a private JWK or PEM key"),
    (("--issuer", "files", "--key", "missing.pem"), "cannot read missing.pem"),
    (("--issuer", "shared", "--key", "rsa.pem"), "signs with its secret: drop --key"),
    (("--issuer", "nope"), "choose --issuer (files, shared)"),
    ((), "choose --issuer (files, shared)"),
    (("--issuer", "shared", "--claim", "novalue"), "expected NAME=VALUE"),
])
def test_what_cannot_be_minted_is_refused_with_exit_2(
    config_path: Path, args: tuple[str, ...], message: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(config_path.parent)
    assert main(["token", "-c", str(config_path), *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
