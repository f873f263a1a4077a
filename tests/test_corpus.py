"""The adversarial token corpus (tests/corpus) against the real proxy process.

One proxy (`python -m jwtproxy run`, via tests/proc.py) with three issuers: `main`
(asymmetric, JWKS over real loopback HTTP), `partner` (issuer B, `typ: at+jwt`) and `hs`
(HS256 with `secret:` from the environment). Each case sends `Authorization: Bearer
<token>` and checks, together: the status; `WWW-Authenticate` and the JSON error body;
that `jwtproxy_auth_total` moved by exactly one, on {route, result, reason}; and that only
accepted requests reached the upstream. The rules behind each expectation are in
tests/corpus/README.md. Last, the proxy must still be up and healthy, must never have
logged a token or the secret, and must never have fetched a URL named by a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from tests.corpus import forge, generate, node_mint
from tests.corpus.generate import (
    AUDIENCE_HS,
    AUDIENCE_MAIN,
    AUDIENCE_PARTNER,
    GROUP,
    GROUP_CLAIM,
    GROUPS,
    HS,
    ISSUER_HS,
    ISSUER_MAIN,
    ISSUER_PARTNER,
    LEEWAY,
    MAIN,
    MAIN_ALGORITHMS,
    MAX_TOKEN_BYTES,
    PARTNER,
    SCOPE,
    SCOPED,
    TYP_PARTNER,
    Case,
)
from tests.proc import ProxyProcess, proxy_process
from tests.servers import EchoUpstream, JwksEndpoint

HS_SECRET_ENV: Final = "JWTPROXY_CORPUS_HS_SECRET"
# Time-relative cases (exp 20 s ago within a 60 s leeway, ...) are re-signed this often.
CORPUS_MAX_AGE: Final = 15.0
UPSTREAM_MAX_FIELD: Final = 65536
# Every compact JWS starts with "ey" (base64url of '{"'): a log or a response that quotes
# an Authorization header holds this.
QUOTED_BEARER: Final = "Bearer ey"
# A secret-looking string shorter than this may occur in a log by chance.
MIN_LEAK_CHECK_LENGTH: Final = 24

# Keys for the whole module: case names are needed at collection, tokens at run time.
KEYS: Final = forge.generate_keys()
CASE_NAMES: Final = [case.name for case in generate.build_corpus(KEYS)]
NODE_CASE_NAMES: Final = [f"node-jose-{alg.lower()}" for alg in node_mint.NODE_ALGORITHMS]


def decision_problems(
    case: Any, status: int, before: Counter[tuple[str, str, str]],
    after: Counter[tuple[str, str, str]],
) -> list[str]:
    """What a door got wrong about a corpus case: the status, and whether
    jwtproxy_auth_total moved by exactly one on the expected route, result and reason."""
    problems: list[str] = []
    if status != case.expected_status:
        problems.append(f"status {status}, expected {case.expected_status}")
    result = "allowed" if case.expected_status == 200 else "denied"
    expected_delta = {(case.route_name, result, case.expected_reason): 1.0}
    delta = {key: after[key] - before[key] for key in after if after[key] != before[key]}
    if delta != expected_delta:
        problems.append(f"jwtproxy_auth_total moved {delta}, expected {expected_delta}")
    return problems


def proxy_config(keys_url: str, attacker_url: str, upstream_url: str) -> dict[str, Any]:
    del attacker_url  # never configured anywhere: only tokens name it
    jwks = {"cache_ttl": "10m", "refresh_min_interval": "1s", "stale_if_error": "1h"}

    def route(name: str, issuer: str, **auth: Any) -> dict[str, Any]:
        return {
            "name": name,
            "match": {"path_prefix": f"/{name}"},
            "upstream": upstream_url,
            "auth": {"issuers": [issuer], **auth},
        }

    return {
        "server": {"max_token_bytes": MAX_TOKEN_BYTES, "graceful_timeout": "2s"},
        "log": {"level": "debug", "format": "json"},
        "issuers": {
            "main": {
                "issuer": ISSUER_MAIN,
                "jwks_uri": f"{keys_url}/main/jwks.json",
                "audiences": [AUDIENCE_MAIN],
                "algorithms": list(MAIN_ALGORITHMS),
                "token_use": "access",
                "leeway": f"{LEEWAY}s",
                "jwks": jwks,
            },
            "partner": {
                "issuer": ISSUER_PARTNER,
                "jwks_uri": f"{keys_url}/partner/jwks.json",
                "audiences": [AUDIENCE_PARTNER],
                "algorithms": ["RS256", "ES256"],
                "typ": TYP_PARTNER,
                "leeway": f"{LEEWAY}s",
                "jwks": jwks,
            },
            "hs": {
                "issuer": ISSUER_HS,
                "secret": "${" + HS_SECRET_ENV + "}",
                "audiences": [AUDIENCE_HS],
                "algorithms": ["HS256"],
                "leeway": f"{LEEWAY}s",
            },
        },
        "routes": [
            route(MAIN, "main"),
            route(PARTNER, "partner"),
            route(HS, "hs"),
            route(SCOPED, "main", scopes=[SCOPE]),
            route(GROUPS, "main", claims={GROUP_CLAIM: GROUP}),
        ],
    }


# --------------------------------------------------------------------------- servers


class _Loop:
    """aiohttp apps on loopback, served by one event loop in a background thread.

    Unlike tests/threaded.py (one bare handler, default limits) it serves routed apps and
    lets the upstream take headers past aiohttp's 8190-byte default: a valid token of
    max_token_bytes is forwarded with its Authorization header."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="corpus-servers", daemon=True
        )
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def serve(self, app: web.Application) -> str:
        async def start() -> str:
            # the upstream must take the largest token the proxy accepts and forwards
            runner = web.AppRunner(app, access_log=None, max_field_size=UPSTREAM_MAX_FIELD)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            host, port = runner.addresses[0][:2]
            return f"http://{host}:{port}"

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)

    def close(self) -> None:
        for runner in self.runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass
class _Attacker:
    """The host that jku/x5u cases point at: a real JWKS of the attacker's key, a real
    certificate; it records every request, and the proxy must never make one."""

    jwks: dict[str, Any]
    cert_pem: bytes
    hits: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        if request.path.endswith(".pem"):
            return web.Response(body=self.cert_pem, content_type="application/x-pem-file")
        return web.json_response(self.jwks)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    proxy: ProxyProcess
    upstream: EchoUpstream
    attacker: _Attacker
    attacker_url: str
    key_endpoints: dict[str, JwksEndpoint]
    sent: dict[str, str] = field(default_factory=dict)  # token -> case name
    cases: dict[str, Case] = field(default_factory=dict)
    _built: float = 0.0

    def case(self, name: str) -> Case:
        """The named case, re-signed when the corpus is older than CORPUS_MAX_AGE."""
        if time.monotonic() - self._built > CORPUS_MAX_AGE:
            cases = generate.build_corpus(KEYS, attacker_url=self.attacker_url)
            self.cases = {case.name: case for case in cases}
            assert list(self.cases) == CASE_NAMES, "case names must not depend on time"
            self._built = time.monotonic()
        return self.cases[name]


@contextlib.contextmanager
def run_world(extra: dict[str, Any] | None = None) -> Iterator[World]:
    """Key server, attacker host and echo upstream in a thread; the proxy as a process
    (`extra`: more top-level config, e.g. a `forward_auth` section)."""
    loop = _Loop()
    try:
        main = JwksEndpoint(KEYS.main_jwks())
        partner = JwksEndpoint(KEYS.partner_jwks())
        keys_app = web.Application()
        keys_app.add_subapp("/main", main.app())
        keys_app.add_subapp("/partner", partner.app())
        keys_url = loop.serve(keys_app)
        cert = forge.self_signed_cert_der(KEYS.attacker)
        attacker = _Attacker(KEYS.attacker_jwks(), _pem_certificate(cert))
        attacker_url = loop.serve(attacker.app())
        upstream = EchoUpstream()
        upstream_app = web.Application()
        upstream_app.router.add_route("*", "/{tail:.*}", upstream.handle)
        upstream_url = loop.serve(upstream_app)
        config = {**proxy_config(keys_url, attacker_url, upstream_url), **(extra or {})}
        with proxy_process(config, env={HS_SECRET_ENV: KEYS.hs_secret}) as proxy:
            yield World(proxy, upstream, attacker, attacker_url, {"main": main, "partner": partner})
    finally:
        loop.close()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with run_world() as running:
        yield running


def _pem_certificate(der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(der)
    return cert.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- helpers


def send(proxy: ProxyProcess, path: str, token: str) -> tuple[int, Message, bytes]:
    """GET `path` with `Authorization: Bearer <token>` (no header for an empty token),
    byte for byte: http.client sends odd tokens (tabs, 14 KB) as they are."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        conn.putrequest("GET", path)
        if token:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def auth_counts(proxy: ProxyProcess) -> Counter[tuple[str, str, str]]:
    """jwtproxy_auth_total summed over `issuer`, by (route, result, reason)."""
    status, text = proxy.admin_get("/metrics")
    assert status == 200, text
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "jwtproxy_auth_total":
                labels = sample.labels
                counts[(labels["route"], labels["result"], labels["reason"])] += sample.value
    return counts


def upstream_hits(world: World, path: str) -> int:
    return sum(1 for got in world.upstream.received if got.path_qs == path)


def leaks(token: str) -> list[str]:
    """Pieces of a token that must never show up in a response or a log: the token and
    its signature. (A quoted `Bearer ey…` header is looked for separately.)"""
    if len(token) < MIN_LEAK_CHECK_LENGTH:
        return []
    pieces = [token]
    signature = token.rsplit(".", 1)[-1]
    if "." in token and len(signature) >= 40:
        pieces.append(signature)
    return pieces


def check(world: World, case: Case) -> None:
    """Send one case; collect every disagreement with the contract, then fail once."""
    path = f"/{case.route_name}/{case.name}"
    before, hits_before = auth_counts(world.proxy), upstream_hits(world, path)
    world.sent[case.token] = case.name
    status, headers, body = send(world.proxy, path, case.token)
    after, hits = auth_counts(world.proxy), upstream_hits(world, path) - hits_before
    challenge = headers.get("WWW-Authenticate", "")
    problems = decision_problems(case, status, before, after)
    if hits != (1 if case.expected_status == 200 else 0):
        problems.append(f"upstream saw the request {hits} times")

    if case.expected_status != 200 and status == case.expected_status:
        problems += _check_error_response(case, challenge, body)
    problems += [
        f"response echoes the token: {piece[:40]}..."
        for piece in leaks(case.token)
        if piece in challenge or piece.encode() in body
    ]
    if QUOTED_BEARER in challenge or QUOTED_BEARER.encode() in body:
        problems.append(f"response quotes the Authorization header ({QUOTED_BEARER}...)")

    assert not problems, (
        f"{case.name} ({case.description})\n  "
        + "\n  ".join(problems)
        + f"\n  got {status} WWW-Authenticate={challenge!r} body={body[:300]!r}"
    )


def _check_error_response(case: Case, challenge: str, body: bytes) -> list[str]:
    problems: list[str] = []
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not (isinstance(payload, dict) and "error" in payload and "error_description" in payload):
        problems.append('body is not JSON {"error": ..., "error_description": ...}')
        payload = {}
    if not challenge.startswith("Bearer "):
        problems.append("no Bearer WWW-Authenticate challenge")
    if case.expected_reason == "missing":
        # RFC 6750 §3.1: no error code when the request carried no credentials
        if 'realm="jwtproxy"' not in challenge or "error=" in challenge:
            problems.append('WWW-Authenticate should be Bearer realm="jwtproxy" without error')
    elif case.expected_status == 401:
        if 'error="invalid_token"' not in challenge or "error_description=" not in challenge:
            problems.append('WWW-Authenticate lacks error="invalid_token" / error_description')
        if payload.get("error") != "invalid_token":
            problems.append(f"body error {payload.get('error')!r}, expected 'invalid_token'")
    elif case.expected_status == 403:
        if 'error="insufficient_scope"' not in challenge:
            problems.append('WWW-Authenticate lacks error="insufficient_scope"')
        if case.expected_reason == "scope" and f'scope="{SCOPE}"' not in challenge:
            problems.append(f'WWW-Authenticate lacks scope="{SCOPE}"')
        if payload.get("error") != "insufficient_scope":
            problems.append(f"body error {payload.get('error')!r}, expected 'insufficient_scope'")
    return problems


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", CASE_NAMES)
def test_corpus_case(world: World, name: str) -> None:
    check(world, world.case(name))


@pytest.fixture(scope="module")
def node_cases() -> dict[str, Case]:
    try:
        cases = node_mint.node_cases(KEYS)
    except node_mint.NodeUnavailable as exc:
        pytest.skip(f"tokens from panva/jose (node) not minted: {exc}")
    return {case.name: case for case in cases}


@pytest.mark.parametrize("name", NODE_CASE_NAMES)
def test_token_minted_by_node_jose(world: World, node_cases: dict[str, Case], name: str) -> None:
    check(world, node_cases[name])


def test_proxy_survived_the_corpus(world: World) -> None:
    """Runs last: the proxy is up and healthy, fetched nothing a token named, logged no
    token and no secret, and forwarded only what it accepted."""
    proxy = world.proxy
    assert proxy.process.poll() is None, f"jwtproxy exited:\n{proxy.logs()[-3000:]}"
    status, text = proxy.admin_get("/healthz")
    assert status == 200, text
    assert world.attacker.hits == [], "the proxy fetched a URL named by a token"
    logs = proxy.logs()
    assert logs, "the proxy logged nothing at level debug"
    leaked = sorted(
        {
            f"{name}: {piece[:40]}..."
            for token, name in world.sent.items()
            for piece in leaks(token)
            if piece in logs
        }
    )
    assert not leaked, f"tokens in the proxy's log: {leaked}"
    quoted = [line[:160] for line in logs.splitlines() if QUOTED_BEARER in line]
    assert not quoted, f"the proxy's log quotes Authorization headers: {quoted}"
    assert KEYS.hs_secret not in logs, "the HS256 secret is in the proxy's log"
    accepted = {
        f"/{case.route_name}/{case.name}"
        for case in world.cases.values()
        if case.expected_status == 200
    } | {f"/{MAIN}/{name}" for name in NODE_CASE_NAMES}
    forwarded = {got.path_qs for got in world.upstream.received}
    assert forwarded <= accepted, f"forwarded but not accepted: {sorted(forwarded - accepted)}"


def test_readme_documents_every_rule() -> None:
    """tests/corpus/README.md has one row per rule, with its status and reason."""
    readme = (Path(generate.__file__).parent / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(" `"): (line.split("|")[2].strip(), line.split("|")[3].strip(" `"))
        for line in readme.splitlines()
        if line.startswith("| `")
    }
    for rule_id, rule in generate.RULES.items():
        assert rows.get(rule_id) == (str(rule.status), rule.reason), rule_id
