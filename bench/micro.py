#!/usr/bin/env python3
"""Microbenchmarks of jwtproxy's per-request building blocks (no sockets, one core).

    python3 bench/micro.py [--quick] [--json FILE]

Prints markdown tables:
  route match   RouteTable.match with 10 / 1,000 / 10,000 routes (a mix of exact
                paths, prefixes, method lists and hosts): the first route, the last
                one, a miss (404), and normalize_path + match as the gate runs them
  verify        per algorithm (RS256, PS256, ES256, EdDSA, HS256): parse (pre-checks
                and JSON), the signature alone, Verifier.verify on a cache miss (every
                token distinct: parse + key + signature + claims + cache insert) and on
                a cache hit (the same token again: digest + lookup + time checks)
  dpop          a DPoP-bound token (already in the verified-token cache) with a fresh
                proof per request, per proof alg (ES256, EdDSA, RS256): Verifier.verify as
                the gate runs it (proof parse, jwk import, signature, thumbprint, htm/htu/
                iat/ath, jti replay insert), next to the same cache hit as a bearer token
  revocation    RevocationList.check (one set operation) with 0 / 1,000 / 100,000 entries,
                and Verifier.verify on a cache hit with that list (the hot path it adds to)
  headers       HeaderPlan.request_headers (strip, X-Forwarded-*, three claim headers;
                and with payload_header) and response_headers
Each figure is the best of several repeats (like timeit), in microseconds per call.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey, OKPKey, RSAKey
from multidict import CIMultiDict, CIMultiDictProxy

from jwtproxy.config import Forward, Issuer, Match, Route
from jwtproxy.dpop import Presentation, ProofChecker, access_token_hash, thumbprint
from jwtproxy.headers import HeaderPlan, TrustedProxies, response_headers
from jwtproxy.jwks import build_stores
from jwtproxy.jws import parse
from jwtproxy.matcher import RouteTable, normalize_path
from jwtproxy.revocation import Entry, RevocationList, token_marks
from jwtproxy.verifier import Verifier

AUD = "micro-api"


def best_us(fn: Callable[[], Any], repeat: int, budget: float) -> float:
    """Best per-call time in microseconds: calibrate the loop count to ~budget s, repeat."""
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        dt = time.perf_counter() - t0
        if dt >= budget / 5 or loops >= 1 << 24:
            break
        loops *= 4 if dt < budget / 50 else 2
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t0) / loops)
    return min(times) * 1e6


# ----------------------------------------------------------------------------- routes
def make_routes(n: int) -> list[Route]:
    """A mix: prefixes, exact paths, prefixes with methods, host-bound prefixes."""
    routes = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            match = Match(path_prefix=f"/svc{i}/")
        elif kind == 1:
            match = Match(path=f"/svc{i}/health")
        elif kind == 2:
            match = Match(path_prefix=f"/svc{i}", methods=frozenset({"GET", "POST"}))
        else:
            match = Match(host=f"api{i}.example.com", path_prefix=f"/svc{i}")
        routes.append(Route(name=f"r{i}", upstream="http://127.0.0.1:8000", match=match))
    return routes


def query_for(i: int) -> tuple[str, str, str]:
    kind = i % 4
    host = f"api{i}.example.com" if kind == 3 else "api.example.com"
    path = f"/svc{i}/health" if kind == 1 else f"/svc{i}/items/42"
    return "GET", host, path


def bench_routes(counts: list[int], repeat: int, budget: float) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        routes = make_routes(n)
        t0 = time.perf_counter()
        table = RouteTable(routes)
        build_ms = (time.perf_counter() - t0) * 1e3
        first, last = query_for(0), query_for(n - 1)
        assert table.match(*first) is routes[0], "first route did not match"
        assert table.match(*last) is routes[n - 1], "last route did not match"
        miss = ("GET", "api.example.com", "/nothing/here/at/all")
        assert table.match(*miss) is None
        raw = last[2].replace("/items/", "/./items/")
        # B023: best_us calls each lambda before the loop rebinds what it reads
        rows.append({
            "routes": n, "build_ms": build_ms,
            "first_us": best_us(lambda: table.match(*first), repeat, budget),  # noqa: B023
            "last_us": best_us(lambda: table.match(*last), repeat, budget),  # noqa: B023
            "miss_us": best_us(lambda: table.match(*miss), repeat, budget),  # noqa: B023
            "normalize_match_us": best_us(
                lambda: table.match(last[0], last[1], normalize_path(last[2]).path),  # noqa: B023
                repeat, budget),
            "dot_segment_us": best_us(
                lambda: table.match(last[0], last[1], normalize_path(raw).path),  # noqa: B023
                repeat, budget),
        })
    return rows


# ----------------------------------------------------------------------------- verify
def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seg(obj: dict[str, Any]) -> str:
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


class Signer:
    """One algorithm: a fresh key, its JWKS (or secret), and a token minter."""

    def __init__(self, alg: str) -> None:
        self.alg, self.kid, self.secret = alg, f"micro-{alg.lower()}", None
        pub: Any
        if alg in ("RS256", "PS256"):
            self.key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pub = RSAKey.import_key(self._pub_pem())
        elif alg == "ES256":
            self.key = ec.generate_private_key(ec.SECP256R1())
            pub = ECKey.import_key(self._pub_pem())
        elif alg == "EdDSA":
            self.key = ed25519.Ed25519PrivateKey.generate()
            pub = OKPKey.import_key(self._pub_pem())
        elif alg == "HS256":
            self.key = None
            self.secret = b64u(os.urandom(32))
            pub = None
        else:
            raise ValueError(alg)
        self.jwk = None
        if pub is not None:
            self.jwk = dict(pub.as_dict(private=False), kid=self.kid, alg=alg, use="sig")

    def _pub_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, data: bytes) -> bytes:
        if self.alg == "RS256":
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if self.alg == "PS256":
            return self.key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                                 hashes.SHA256())
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.key.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if self.alg == "EdDSA":
            return self.key.sign(data)
        assert self.secret is not None
        return hmac.new(self.secret.encode(), data, hashlib.sha256).digest()

    def token(self, jti: str, **extra: Any) -> str:
        now = int(time.time())
        header = {"alg": self.alg, "typ": "JWT"} | ({"kid": self.kid} if self.jwk else {})
        claims = {"iss": f"https://{self.alg.lower()}.micro.test", "aud": AUD, "sub": "micro-user",
                  "iat": now, "nbf": now - 60, "exp": now + 3600, "jti": jti,
                  "scope": "orders/read orders/write", "email": "micro@example.com", **extra}
        signing_input = f"{seg(header)}.{seg(claims)}"
        return f"{signing_input}.{b64u(self.sign(signing_input.encode()))}"

    def issuer(self, jwks_dir: str) -> Issuer:
        iss = f"https://{self.alg.lower()}.micro.test"
        if self.secret is not None:
            return Issuer(name=self.alg, issuer=iss, audiences=(AUD,), algorithms=(self.alg,),
                          secret=self.secret)
        path = os.path.join(jwks_dir, f"{self.alg}.json")
        with open(path, "w") as f:
            json.dump({"keys": [self.jwk]}, f)
        return Issuer(name=self.alg, issuer=iss, audiences=(AUD,), algorithms=(self.alg,),
                      jwks_file=path)


async def bench_verify(
    algs: list[str], distinct: int, repeat: int, budget: float,
) -> list[dict[str, Any]]:
    signers = {alg: Signer(alg) for alg in algs}
    with tempfile.TemporaryDirectory() as tmp:
        issuers = {alg: s.issuer(tmp) for alg, s in signers.items()}
        stores = build_stores(issuers.values(), None)
        for store in stores.values():
            await store.start()
        verifier = Verifier(issuers, stores)
        rows = []
        for alg, signer in signers.items():
            n = max(50, distinct // 4) if alg in ("RS256", "PS256") else distinct
            tokens = [signer.token(f"micro-{i}") for i in range(n)]
            allowed = (alg,)
            one = tokens[0]
            parsed = parse(one)
            key = await verifier.select_key(parsed.header, issuers[alg])
            verified = await verifier.verify(one, allowed)
            assert verified.claims["sub"] == "micro-user"

            miss = []
            for _ in range(repeat):
                verifier.cache.clear()
                t0 = time.perf_counter()
                for t in tokens:
                    await verifier.verify(t, allowed)
                miss.append((time.perf_counter() - t0) / n)
            verifier.cache.clear()
            await verifier.verify(one, allowed)
            hit = []
            for _ in range(repeat):
                loops = max(1000, n)
                t0 = time.perf_counter()
                for _ in range(loops):
                    v = await verifier.verify(one, allowed)
                hit.append((time.perf_counter() - t0) / loops)
            assert v.cache_hit, "the repeated token did not hit the cache"
            # B023: best_us calls each lambda before the loop rebinds what it reads
            rows.append({
                "alg": alg, "tokens": n,
                "parse_us": best_us(lambda: parse(one), repeat, budget),  # noqa: B023
                "signature_us": best_us(
                    lambda: verifier.check_signature(parsed, key),  # noqa: B023
                    repeat, budget),
                "verify_miss_us": min(miss) * 1e6,
                "verify_hit_us": min(hit) * 1e6,
            })
        for store in stores.values():
            await store.close()
    return rows


# ----------------------------------------------------------------------------- dpop
def make_proof(holder: Signer, htu: str, token: str, jti: str) -> str:
    assert holder.jwk is not None
    jwk = {k: v for k, v in holder.jwk.items() if k not in ("kid", "alg", "use")}
    header = {"typ": "dpop+jwt", "alg": holder.alg, "jwk": jwk}
    claims = {"jti": jti, "htm": "GET", "htu": htu, "iat": int(time.time()),
              "ath": access_token_hash(token)}
    signing_input = f"{seg(header)}.{seg(claims)}"
    return f"{signing_input}.{b64u(holder.sign(signing_input.encode()))}"


async def bench_dpop(proof_algs: list[str], distinct: int, repeat: int) -> list[dict[str, Any]]:
    issuer_signer = Signer("ES256")
    htu = "https://api.example.com/orders/42"
    with tempfile.TemporaryDirectory() as tmp:
        issuers = {"ES256": issuer_signer.issuer(tmp)}
        stores = build_stores(issuers.values(), None)
        for store in stores.values():
            await store.start()
        verifier = Verifier(issuers, stores)
        allowed = ("ES256",)
        plain = issuer_signer.token("micro-plain")
        await verifier.verify(plain, allowed)
        rows = []
        for alg in proof_algs:
            holder = Signer(alg)
            assert holder.jwk is not None
            jwk = {k: v for k, v in holder.jwk.items() if k not in ("kid", "alg", "use")}
            token = issuer_signer.token(f"micro-{alg}", cnf={"jkt": thumbprint(jwk)})
            n = max(50, distinct // 4) if alg == "RS256" else distinct
            proofs = [Presentation("dpop", (make_proof(holder, htu, token, f"{alg}-{i}"),),
                                   "GET", htu) for i in range(n)]
            verifier.proofs = ProofChecker()
            await verifier.verify(token, allowed, None, proofs[0])  # into the token cache
            times = []
            for _ in range(repeat):
                verifier.proofs = ProofChecker()  # a fresh replay cache: the same jtis again
                t0 = time.perf_counter()
                for presentation in proofs:
                    verified = await verifier.verify(token, allowed, None, presentation)
                times.append((time.perf_counter() - t0) / n)
            assert verified.cache_hit, "the bound token did not hit the token cache"
            bearer = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                for _ in range(n):
                    await verifier.verify(plain, allowed)
                bearer.append((time.perf_counter() - t0) / n)
            rows.append({"proof_alg": alg, "proofs": n, "dpop_us": min(times) * 1e6,
                         "bearer_hit_us": min(bearer) * 1e6,
                         "cost_us": (min(times) - min(bearer)) * 1e6})
        for store in stores.values():
            await store.close()
    return rows


# ----------------------------------------------------------------------------- revocation
async def bench_revocation(counts: list[int], repeat: int, budget: float) -> list[dict[str, Any]]:
    """The deny-list check alone, and a verified-token cache hit with it (ES256 issuer)."""
    signer = Signer("ES256")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        issuers = {"ES256": signer.issuer(tmp)}
        stores = build_stores(issuers.values(), None)
        for store in stores.values():
            await store.start()
        revoked = RevocationList()
        verifier = Verifier(issuers, stores, revocations=revoked)
        one = signer.token("micro-kept")
        claims = (await verifier.verify(one, ("ES256",))).claims
        marks = token_marks({**claims, "origin_jti": "o-1", "client_id": "c-1"})
        far = time.time() + 3600
        for n in counts:
            kinds = ("jti", "sub", "origin_jti", "client_id")
            revoked.replace(Entry(kinds[i % 4], f"v-{i}", far) for i in range(n))
            hit = []
            for _ in range(repeat):
                loops = 20000
                t0 = time.perf_counter()
                for _ in range(loops):
                    v = await verifier.verify(one, ("ES256",))
                hit.append((time.perf_counter() - t0) / loops)
            assert v.cache_hit
            rows.append({
                "entries": n,
                "check_us": best_us(lambda: revoked.check(marks, claims), repeat, budget),
                "verify_hit_us": min(hit) * 1e6,
            })
        revoked.replace([Entry("sub", "micro-user", far)])
        try:
            await verifier.verify(one, ("ES256",))
            raise AssertionError("a listed token was not refused")
        except Exception as err:
            assert "revoked" in str(err)
        for store in stores.values():
            await store.close()
    return rows


# ----------------------------------------------------------------------------- headers
def bench_headers(repeat: int, budget: float) -> list[dict[str, Any]]:
    claims_map = (("sub", "X-Auth-Subject"), ("email", "X-Auth-Email"),
                  ("cognito:groups", "X-Auth-Groups"))
    plain = Route(name="api", upstream="http://127.0.0.1:8000",
                  forward=Forward(claims=claims_map))
    payload = Route(name="api2", upstream="http://127.0.0.1:8000",
                    forward=Forward(claims=claims_map, payload_header="X-Auth-Claims"))
    stripped = frozenset(h for _, h in claims_map) | {"X-Auth-Claims"}
    trusted = TrustedProxies(())
    incoming = CIMultiDictProxy(CIMultiDict([
        ("Host", "api.example.com"), ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) micro/1.0"),
        ("Accept", "application/json"), ("Accept-Encoding", "gzip, deflate, br"),
        ("Accept-Language", "en-US,en;q=0.9"), ("Authorization", "Bearer " + "x" * 700),
        ("Connection", "keep-alive"), ("Content-Type", "application/json"),
        ("Content-Length", "42"), ("X-Auth-Subject", "spoofed-admin"),
        ("X_Auth_Email", "spoofed@example.com"), ("Cookie", "session=abc; theme=dark"),
    ]))
    claims = {"sub": "1f0e5c7a-5d1b-4f6e-9f0a-3c2b1a0d9e8f", "email": "user@example.com",
              "cognito:groups": ["admin", "ops", "readers"], "scope": "orders/read",
              "iss": "https://idp.example.com/", "aud": "api", "exp": 2_000_000_000,
              "iat": 1_700_000_000, "token_use": "access", "client_id": "abc123"}
    upstream: list[tuple[bytes, bytes]] = [  # raw, as the upstream sent them
        (b"Content-Type", b"application/json"), (b"Content-Length", b"12"),
        (b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=60"), (b"Server", b"nginx"),
        (b"Date", b"Mon, 24 Nov 2026 00:00:00 GMT"), (b"Cache-Control", b"no-store"),
    ]
    plan, plan2 = HeaderPlan(plain, stripped, trusted), HeaderPlan(payload, stripped, trusted)
    out = plan.request_headers(incoming, claims, "127.0.0.1", "http", "req-1")
    assert out["X-Auth-Subject"] == claims["sub"] and "X_Auth_Email" not in out
    assert out["X-Auth-Groups"] == "admin,ops,readers"
    assert [name for name, _ in response_headers(upstream)] == [
        "Content-Type", "Server", "Date", "Cache-Control"]
    return [
        {"what": "request_headers, 12 in, 3 claim headers",
         "us": best_us(lambda: plan.request_headers(incoming, claims, "127.0.0.1", "http", "req-1"),
                       repeat, budget)},
        {"what": "request_headers + payload_header",
         "us": best_us(
             lambda: plan2.request_headers(incoming, claims, "127.0.0.1", "http", "req-1"),
             repeat, budget)},
        {"what": "request_headers, no claims (public route)",
         "us": best_us(lambda: plan.request_headers(incoming, None, "127.0.0.1", "http", "req-1"),
                       repeat, budget)},
        {"what": "response_headers, 7 in",
         "us": best_us(lambda: response_headers(upstream), repeat, budget)},
    ]


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats (~5 s)")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    repeat, budget, distinct = (3, 0.05, 200) if a.quick else (5, 0.2, 2000)
    warnings.simplefilter("ignore")  # joserfc warns about "EdDSA" (RFC 9864 names Ed25519)

    print(f"python {sys.version.split()[0]}, best of {repeat}, microseconds per call\n")
    routes = bench_routes([10, 1000, 10000], repeat, budget)
    print("| routes | build ms | first route | last route | miss (404) | normalize + match | "
          "with dot segment |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in routes:
        print(f"| {r['routes']:,} | {r['build_ms']:.1f} | {r['first_us']:.2f} | "
              f"{r['last_us']:.2f} | {r['miss_us']:.2f} | {r['normalize_match_us']:.2f} | "
              f"{r['dot_segment_us']:.2f} |")

    verify = asyncio.run(bench_verify(["RS256", "PS256", "ES256", "EdDSA", "HS256"],
                                      distinct, repeat, budget))
    print("\n| alg | parse | signature | verify, cache miss | verify, cache hit | "
          "distinct tokens |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in verify:
        print(f"| {r['alg']} | {r['parse_us']:.1f} | {r['signature_us']:.1f} | "
              f"{r['verify_miss_us']:.1f} | {r['verify_hit_us']:.1f} | {r['tokens']:,} |")

    dpop = asyncio.run(bench_dpop(["ES256", "EdDSA", "RS256"], distinct, repeat))
    print("\n| DPoP proof alg | bound token + proof | bearer, cache hit | proof cost | "
          "proofs |")
    print("|---|---:|---:|---:|---:|")
    for r in dpop:
        print(f"| {r['proof_alg']} | {r['dpop_us']:.1f} | {r['bearer_hit_us']:.1f} | "
              f"{r['cost_us']:.1f} | {r['proofs']:,} |")

    revocation = asyncio.run(bench_revocation([0, 1000, 100000], repeat, budget))
    print("\n| revocation entries | check (token not listed, 4 marks) | verify, cache hit |")
    print("|---:|---:|---:|")
    for r in revocation:
        print(f"| {r['entries']:,} | {r['check_us']:.3f} | {r['verify_hit_us']:.2f} |")

    headers = bench_headers(repeat, budget)
    print("\n| headers | us |")
    print("|---|---:|")
    for r in headers:
        print(f"| {r['what']} | {r['us']:.2f} |")

    if a.json:
        with open(a.json, "w") as f:
            json.dump({"routes": routes, "verify": verify, "dpop": dpop,
                       "revocation": revocation, "headers": headers}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
