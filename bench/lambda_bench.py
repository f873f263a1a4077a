#!/usr/bin/env python3
"""The Lambda authorizer door: cold start, warm invocations, package size.

    python3 bench/lambda_bench.py [--cold N] [--warm N] [--build] [--json FILE]

cold start  a fresh Python per run (as a new execution environment): `import
            jwtproxy.aws_lambda`, config load and build (`load()`), then the first
            invocation, which fetches the JWKS from a loopback issuer and verifies an
            RS256 token. Median and worst of N runs, in ms of wall clock and (`_cpu`) of
            the process's CPU time, which a busy machine disturbs less; the interpreter's
            own start is shown apart (Lambda's runtime has already paid it).
warm        one Authorizer in this process, REST TOKEN and HTTP API 2.0 events: the same
            token again (verified-token cache hit), and a distinct token each time (a
            signature check each), for both policy scopes; p50 / p99 in ms.
package     deploy/aws/jwtproxy-lambda.zip (made by deploy/aws/build.sh; `--build` runs it
            first): zipped and unzipped size.
Loads are bounded in count; everything listens on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ROOT: Final = Path(__file__).resolve().parent.parent
AWS: Final = ROOT / "deploy" / "aws"
ISSUER: Final = "https://issuer.bench/"
AUDIENCE: Final = "api://bench"
KID: Final = "bench-1"
ARN: Final = "arn:aws:execute-api:us-east-1:123456789012:abcdef123/prod"

CHILD: Final = """
import json, sys, time
clocks = [(time.perf_counter(), time.process_time())]
import jwtproxy.aws_lambda as door
clocks.append((time.perf_counter(), time.process_time()))
authorizer = door.load()
clocks.append((time.perf_counter(), time.process_time()))
door._ENVIRONMENT.authorizer = authorizer
answer = door.handler(json.loads(sys.argv[1]), None)
clocks.append((time.perf_counter(), time.process_time()))
assert answer["policyDocument"]["Statement"][0]["Effect"] == "Allow", answer
out = {}
for clock, suffix in ((0, ""), (1, "_cpu")):
    marks = [c[clock] for c in clocks]
    out.update({"import" + suffix: marks[1] - marks[0], "config" + suffix: marks[2] - marks[1],
                "first_invocation" + suffix: marks[3] - marks[2],
                "total" + suffix: marks[3] - marks[0]})
print(json.dumps(out))
"""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An RSA key, its JWKS on loopback (served from a thread), and RS256 tokens."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        self.jwks = {"keys": [{
            "kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig",
            "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64(numbers.e.to_bytes(3, "big"))}]}
        self.fetches = 0

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 3600,
                "scope": "orders:read", **claims}
        head = {"alg": "RS256", "kid": KID, "typ": "JWT"}
        signing = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(body).encode())}"
        signature = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{b64(signature)}"

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        loop = asyncio.new_event_loop()
        holder: dict[str, Any] = {}

        async def jwks(_: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response(self.jwks)

        async def start() -> int:
            app = web.Application()
            app.router.add_get("/jwks.json", jwks)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            holder["runner"] = runner
            return int(runner.addresses[0][1])

        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
        try:
            yield f"http://127.0.0.1:{port}/jwks.json"
        finally:
            asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


def config_text(jwks_url: str, scope: str) -> str:
    routes = [
        {"name": "health", "match": {"path": "/health"}, "auth": "none"},
        {"name": "orders", "match": {"path_prefix": "/orders", "methods": ["GET", "HEAD"]},
         "auth": {"scopes": ["orders:read"]}, "forward": {"claims": {"sub": "X-Sub",
                                                                    "scope": "X-Scope"}}},
        {"name": "admin", "match": {"path_prefix": "/admin"},
         "auth": {"claims": {"groups": "admin"}}},
        {"name": "api", "match": {"path_prefix": "/"}, "forward": {"claims": {"sub": "X-Sub"}}},
    ]
    return json.dumps({
        "log": {"level": "warning"},
        "issuers": {"bench": {"issuer": ISSUER, "jwks_uri": jwks_url, "audiences": [AUDIENCE],
                              "algorithms": ["RS256"]}},
        "routes": routes,
        "aws_lambda": {"policy_scope": scope},
    })


def token_event(token: str) -> dict[str, Any]:
    return {"type": "TOKEN", "authorizationToken": f"Bearer {token}",
            "methodArn": f"{ARN}/GET/orders/42"}


def v2_event(token: str) -> dict[str, Any]:
    return {"version": "2.0", "type": "REQUEST", "routeArn": f"{ARN}/GET/orders/42",
            "identitySource": [f"Bearer {token}"], "routeKey": "$default",
            "rawPath": "/orders/42", "rawQueryString": "", "cookies": [],
            "headers": {"authorization": f"Bearer {token}", "host": "api.example.com"},
            "requestContext": {"domainName": "api.example.com", "stage": "$default",
                               "http": {"method": "GET", "path": "/orders/42"}}}


def cold(issuer: Issuer, runs: int) -> dict[str, Any]:
    with issuer.serve() as url, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jwtproxy.yaml"
        path.write_text(config_text(url, "routes"))
        env = {**os.environ, "JWTPROXY_CONFIG": str(path)}
        samples: list[dict[str, float]] = []
        interpreter: list[float] = []
        for _ in range(runs):
            before = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
            interpreter.append(time.perf_counter() - before)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(token_event(issuer.token()))],
                check=True, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
            samples.append(json.loads(out.stdout))
        fetched = issuer.fetches
    assert fetched == runs, "each cold start fetches the JWKS once"
    result = {key: {"median_ms": 1000 * statistics.median(s[key] for s in samples),
                    "max_ms": 1000 * max(s[key] for s in samples)}
              for key in samples[0]}
    result["python_start"] = {"median_ms": 1000 * statistics.median(interpreter),
                              "max_ms": 1000 * max(interpreter)}
    return result


def warm(issuer: Issuer, count: int) -> dict[str, Any]:
    from jwtproxy.aws_lambda import Authorizer
    from jwtproxy.loader import load_text

    results: dict[str, Any] = {}
    distinct = [issuer.token(jti=f"t{i}") for i in range(min(count, 2000))]
    with issuer.serve() as url:
        for scope in ("request", "routes"):
            door = Authorizer(load_text(config_text(url, scope)))
            try:
                same = issuer.token()
                for name, build in (("rest_token", token_event), ("http_v2", v2_event)):
                    for _ in range(200):
                        door.handle(build(same))
                    results[f"{scope}/{name}/cache_hit"] = _timed(
                        door, [build(same)] * count)
                results[f"{scope}/rest_token/distinct_tokens"] = _timed(
                    door, [token_event(token) for token in distinct])
            finally:
                door.close()
    return results


def _timed(door: Any, events: list[dict[str, Any]]) -> dict[str, float]:
    times = []
    for body in events:
        started = time.perf_counter()
        door.handle(body)
        times.append(time.perf_counter() - started)
    times.sort()
    return {"n": len(times), "p50_ms": 1000 * times[len(times) // 2],
            "p99_ms": 1000 * times[int(len(times) * 0.99)]}


def package(build: bool) -> dict[str, Any]:
    archive = AWS / "jwtproxy-lambda.zip"
    if build:
        subprocess.run(["bash", str(AWS / "build.sh")], check=True, timeout=900)
    if not archive.exists():
        return {"note": "no deploy/aws/jwtproxy-lambda.zip: run with --build"}
    with zipfile.ZipFile(archive) as zipped:
        unzipped = sum(info.file_size for info in zipped.infolist())
        top = sorted({info.filename.split("/")[0] for info in zipped.infolist()})
    return {"zip_mb": archive.stat().st_size / 1e6, "unzipped_mb": unzipped / 1e6,
            "top_level": [name for name in top if not name.endswith(".dist-info")]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=7, help="cold starts (default 7)")
    parser.add_argument("--warm", type=int, default=20000, help="warm invocations per case")
    parser.add_argument("--build", action="store_true", help="run deploy/aws/build.sh first")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    issuer = Issuer()
    figures = {"cold_start": cold(issuer, args.cold), "warm": warm(issuer, args.warm),
               "package": package(args.build)}
    print("| cold start (fresh Python, JWKS from loopback) | median ms | max ms |")
    print("|---|---|---|")
    for key, value in figures["cold_start"].items():
        print(f"| {key} | {value['median_ms']:.1f} | {value['max_ms']:.1f} |")
    print("\n| warm invocation | n | p50 ms | p99 ms |\n|---|---|---|---|")
    for key, value in figures["warm"].items():
        print(f"| {key} | {value['n']} | {value['p50_ms']:.3f} | {value['p99_ms']:.3f} |")
    print(f"\npackage: {json.dumps(figures['package'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
