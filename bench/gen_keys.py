#!/usr/bin/env python3
"""Key material and test tokens for bench/run.sh (test material only; never use elsewhere).

Writes into --out (default bench/run/keys, git-ignored):
  private.pem        RSA-2048 private key (PKCS#8, mode 600)        -- kept across runs
  public.pem         its public key (SPKI PEM)                      -- HAProxy jwt_verify
  jwks.json          {"keys": [public JWK with kid, alg, use]}      -- upstream /jwks.json, jwtproxy
  tls_cert.pem, tls_key.pem  self-signed cert for 127.0.0.1 (the nginx upstream's https
                     listener for /jwks.json: mod_auth_openidc wants an https JWKS URI)
and the tokens, minted again on every run so that "valid" is always fresh:
  valid.jwt          RS256, right kid/iss/aud, exp = now + --ttl
  expired.jwt        as valid, exp an hour ago (good signature)
  badsig.jwt         as valid, signed by a different RSA-2048 key with the same kid
  tampered.jwt       valid token whose payload was changed after signing
  wrong_iss.jwt, wrong_aud.jwt, no_exp.jwt   good signature, one claim wrong or missing
  alg_none.jwt       alg "none", empty signature
  hs256_confusion.jwt  HS256 keyed with the public PEM (algorithm-confusion attack)
  garbage.jwt        not a JWT
  distinct.txt       exactly --distinct valid tokens, one per line, each with its own jti,
                     so a verifier's token cache cannot help; taken from distinct.pool.txt,
                     which is kept while key and claims still fit, it holds enough and its
                     tokens have more than a week to live (minting is ~0.5 ms a token)
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import multiprocessing
import os
import sys
import time
import uuid
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import RSAKey

WEEK = 7 * 24 * 3600


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seg(obj: dict[str, Any]) -> str:
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


def write(path: str, data: str | bytes, mode: int = 0o644) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def rs256(key: rsa.RSAPrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{seg(header)}.{seg(claims)}"
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64u(sig)}"


_worker_key: rsa.RSAPrivateKey | None = None


def _init_worker(pem: bytes) -> None:
    global _worker_key
    k = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(k, rsa.RSAPrivateKey)
    _worker_key = k


def _mint_chunk(job: tuple[dict[str, Any], dict[str, Any], int, int]) -> list[str]:
    header, base, start, count = job
    assert _worker_key is not None
    return [rs256(_worker_key, header, dict(base, jti=f"bench-{start + i}-{uuid.uuid4().hex[:8]}"))
            for i in range(count)]


def mint_distinct(pem: bytes, header: dict[str, Any], base: dict[str, Any], n: int) -> list[str]:
    chunk = 500
    jobs = [(header, base, s, min(chunk, n - s)) for s in range(0, n, chunk)]
    procs = max(1, min(len(jobs), os.cpu_count() or 1))
    with multiprocessing.get_context("fork").Pool(procs, _init_worker, (pem,)) as pool:
        return [t for part in pool.map(_mint_chunk, jobs) for t in part]


def tls_cert(out: str, now_dt: dt.datetime) -> None:
    tkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.DNSName("localhost")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(tkey.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now_dt - dt.timedelta(days=1))
            .not_valid_after(now_dt + dt.timedelta(days=3650))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(tkey, hashes.SHA256()))
    write(os.path.join(out, "tls_key.pem"), tkey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), 0o600)
    write(os.path.join(out, "tls_cert.pem"), cert.public_bytes(serialization.Encoding.PEM))


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(here, "run", "keys"))
    ap.add_argument("--iss", default="https://issuer.peers.test")
    ap.add_argument("--aud", default="peer-api")
    ap.add_argument("--kid", default="bench-rs256-1")
    ap.add_argument("--sub", default="bench-user")
    ap.add_argument("--ttl", type=int, default=30 * 24 * 3600,
                    help="lifetime of the valid tokens, seconds")
    ap.add_argument("--distinct", type=int, default=30000, help="how many distinct valid tokens")
    ap.add_argument("--new-key", action="store_true", help="replace an existing key pair")
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    os.chmod(a.out, 0o755)  # nginx workers (nobody) read jwks.json, apache (www-data) the TLS cert
    p = lambda name: os.path.join(a.out, name)  # noqa: E731
    now_dt = dt.datetime.now(dt.UTC)

    if a.new_key or not os.path.exists(p("private.pem")):
        new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write(p("private.pem"), new.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)
        print(f"generated a new RSA-2048 key in {p('private.pem')}", file=sys.stderr)
    with open(p("private.pem"), "rb") as f:
        pem = f.read()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    write(p("public.pem"), pub_pem)
    if a.new_key or not os.path.exists(p("tls_key.pem")):
        tls_cert(a.out, now_dt)

    meta = {"kid": a.kid, "alg": "RS256", "use": "sig"}
    jwk = RSAKey.import_key(pem, parameters=meta).as_dict(private=False)
    jwk.update(meta)
    write(p("jwks.json"), json.dumps({"keys": [jwk]}) + "\n")

    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": a.kid}
    base = {"iss": a.iss, "aud": a.aud, "sub": a.sub, "iat": now, "nbf": now - 60,
            "exp": now + a.ttl}

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    valid = rs256(key, header, dict(base, jti="bench-valid"))
    h, _pl, s = valid.split(".")
    hs_header, hs_payload = seg({"alg": "HS256", "typ": "JWT", "kid": a.kid}), seg(base)
    hs_sig = b64u(hmac.new(pub_pem, f"{hs_header}.{hs_payload}".encode(), hashlib.sha256).digest())
    tokens = {
        "valid": valid,
        "expired": rs256(key, header, dict(base, iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
        "badsig": rs256(other, header, dict(base, jti="bench-valid")),
        "tampered": f"{h}.{seg(dict(base, jti='bench-valid', sub='admin'))}.{s}",
        "wrong_iss": rs256(key, header, dict(base, iss="https://evil.example")),
        "wrong_aud": rs256(key, header, dict(base, aud="some-other-api")),
        "no_exp": rs256(key, header, {k: v for k, v in base.items() if k != "exp"}),
        "alg_none": f"{seg({'alg': 'none', 'typ': 'JWT'})}.{seg(base)}.",
        "hs256_confusion": f"{hs_header}.{hs_payload}.{hs_sig}",
        "garbage": "this-is-not-a-jwt",
    }
    for n, t in tokens.items():
        write(p(f"{n}.jwt"), t + "\n")

    # distinct tokens: expensive to mint, so reuse them while they still fit
    want = {"kid": a.kid, "iss": a.iss, "aud": a.aud, "sub": a.sub,
            "pub": hashlib.sha256(pub_pem).hexdigest()}
    try:
        with open(p("distinct.meta.json")) as f:
            have = json.load(f)
    except (OSError, ValueError):
        have = {}
    fresh = (all(have.get(k) == v for k, v in want.items()) and have.get("count", 0) >= a.distinct
             and have.get("exp", 0) > now + WEEK and os.path.exists(p("distinct.pool.txt")))
    if not fresh:
        t0 = time.monotonic()
        pool = mint_distinct(pem, header, base, a.distinct)
        write(p("distinct.pool.txt"), "".join(t + "\n" for t in pool))
        write(p("distinct.meta.json"),
              json.dumps(dict(want, count=a.distinct, exp=base["exp"])) + "\n")
        print(f"minted {len(pool)} distinct tokens in {time.monotonic() - t0:.1f}s",
              file=sys.stderr)
    with open(p("distinct.pool.txt")) as f:
        pool = f.read().split("\n")[: a.distinct]
    write(p("distinct.txt"), "".join(t + "\n" for t in pool))  # exactly --distinct of them
    print(f"keys + {len(tokens)} tokens in {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
