"""Positive controls minted by an independent implementation: panva/jose under node.

`node_cases(keys)` installs jose into tests/corpus/node (npm ci, once; node_modules is
git-ignored), hands the private JWKs and claims to node/mint.mjs over stdin, and returns
cases that must be accepted. `NodeUnavailable` says why they cannot be made here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Final

try:
    from . import forge
    from .generate import Case, main_claims, make_case
except ImportError:  # run as a script from tests/corpus
    import forge  # type: ignore[no-redef]
    from generate import Case, main_claims, make_case  # type: ignore[no-redef]

NODE_DIR: Final = Path(__file__).resolve().parent / "node"
NPM_TIMEOUT: Final = 300.0
MINT_TIMEOUT: Final = 60.0
NODE_ALGORITHMS: Final = ("RS256", "RS384", "PS256", "ES256", "EdDSA", "Ed25519")


class NodeUnavailable(Exception):
    """node, npm or the jose install is not available on this machine."""


def ensure_jose() -> None:
    """Install jose from the lock file unless it is already there."""
    if shutil.which("node") is None:
        raise NodeUnavailable("node is not on PATH")
    if (NODE_DIR / "node_modules" / "jose" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise NodeUnavailable("npm is not on PATH")
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeUnavailable(f"npm ci failed: {exc}") from exc
    if done.returncode != 0:
        raise NodeUnavailable(f"npm ci exited {done.returncode}: {done.stderr.strip()[-500:]}")


def mint(requests: list[dict[str, object]]) -> dict[str, str]:
    """Run node/mint.mjs; private keys travel only through its stdin."""
    ensure_jose()
    try:
        done = subprocess.run(
            ["node", str(NODE_DIR / "mint.mjs")],
            cwd=NODE_DIR,
            input=json.dumps({"tokens": requests}),
            capture_output=True,
            text=True,
            timeout=MINT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeUnavailable(f"node mint.mjs failed: {exc}") from exc
    if done.returncode != 0:
        # a bug in mint.mjs is a failure, not a reason to skip
        raise RuntimeError(f"node mint.mjs exited {done.returncode}: {done.stderr[-2000:]}")
    tokens: dict[str, str] = json.loads(done.stdout)
    return tokens


def node_cases(keys: forge.Keys, *, now: int | None = None) -> list[Case]:
    """One accepted case per algorithm, signed by jose with the main issuer's keys."""
    now = int(time.time()) if now is None else now
    signers: dict[str, tuple[forge.PrivateKey, str]] = {
        "RS": (keys.rsa, forge.KID_RSA),
        "PS": (keys.rsa, forge.KID_RSA),
        "ES": (keys.ec, forge.KID_EC),
        "Ed": (keys.ed, forge.KID_ED),
    }
    requests: list[dict[str, object]] = []
    for alg in NODE_ALGORITHMS:
        key, kid = signers[alg[:2]]
        name = f"node-jose-{alg.lower()}"
        requests.append(
            {
                "name": name,
                "alg": alg,
                "kid": kid,
                "typ": "at+jwt",
                "jwk": forge.private_jwk(key),
                "claims": main_claims(name, now),
            }
        )
    tokens = mint(requests)
    return [
        make_case(
            str(spec["name"]),
            "valid",
            f"{spec['alg']} signed by panva/jose (node), kid {spec['kid']}, typ at+jwt",
            tokens[str(spec["name"])],
        )
        for spec in requests
    ]
