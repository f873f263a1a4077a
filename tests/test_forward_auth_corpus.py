"""The hostile-token corpus (tests/corpus) through the forward-auth door: one table, two
doors. Each case is asked about as a gateway would (Traefik/Caddy `X-Forwarded-*`), to the
same jwtproxy process that serves the proxy door, and must give the very status, reason,
`WWW-Authenticate` and JSON body the proxy door gives (tests/test_corpus.py holds the
expectations), with `jwtproxy_auth_total` moved by exactly one and nothing forwarded."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from email.message import Message

import pytest

from tests.corpus.generate import Case
from tests.proc import ProxyProcess
from tests.test_corpus import (
    CASE_NAMES,
    QUOTED_BEARER,
    World,
    _check_error_response,
    auth_counts,
    decision_problems,
    leaks,
    run_world,
)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with run_world({"forward_auth": {}}) as running:
        yield running


def ask(proxy: ProxyProcess, path: str, token: str) -> tuple[int, Message, bytes]:
    """An auth subrequest for `GET path` with `Authorization: Bearer <token>`, byte for
    byte (odd tokens as they are)."""
    assert proxy.forward_port is not None
    conn = http.client.HTTPConnection("127.0.0.1", proxy.forward_port, timeout=30)
    try:
        conn.putrequest("GET", "/", skip_accept_encoding=True)
        conn.putheader("X-Forwarded-Method", "GET")
        conn.putheader("X-Forwarded-Uri", path)
        conn.putheader("X-Forwarded-Host", "api.example.com")
        if token:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def check_forward_auth(world: World, case: Case) -> None:
    path = f"/{case.route_name}/{case.name}"
    before, seen = auth_counts(world.proxy), len(world.upstream.received)
    world.sent[case.token] = case.name
    status, headers, body = ask(world.proxy, path, case.token)
    after = auth_counts(world.proxy)
    challenge = headers.get("WWW-Authenticate", "")
    problems = decision_problems(case, status, before, after)
    if len(world.upstream.received) != seen:
        problems.append("the forward-auth door reached the upstream")
    if case.expected_status == 200 and body:
        problems.append(f"an allowed answer has a body: {body[:80]!r}")
    if case.expected_status != 200 and status == case.expected_status:
        problems += _check_error_response(case, challenge, body)
    problems += [f"answer echoes the token: {piece[:40]}..." for piece in leaks(case.token)
                 if piece in challenge or piece.encode() in body]
    if QUOTED_BEARER in challenge or QUOTED_BEARER.encode() in body:
        problems.append("answer quotes the Authorization header")
    assert not problems, (f"{case.name} ({case.description})\n  " + "\n  ".join(problems)
                          + f"\n  got {status} WWW-Authenticate={challenge!r} "
                          f"body={body[:300]!r}")


@pytest.mark.parametrize("name", CASE_NAMES)
def test_corpus_case_through_forward_auth(world: World, name: str) -> None:
    check_forward_auth(world, world.case(name))


def test_door_survived_the_corpus(world: World) -> None:
    proxy = world.proxy
    assert proxy.process.poll() is None, proxy.logs()[-3000:]
    assert proxy.admin_get("/healthz")[0] == 200
    assert world.attacker.hits == [], "a URL named by a token was fetched"
    logs = proxy.logs()
    leaked = sorted({name for token, name in world.sent.items()
                     for piece in leaks(token) if piece in logs})
    assert not leaked, f"tokens in the log: {leaked}"
    assert QUOTED_BEARER not in logs
    assert '"door":"forward_auth"' in logs
