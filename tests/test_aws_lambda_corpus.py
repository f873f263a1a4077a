"""The hostile-token corpus (tests/corpus) through the Lambda door.

The same issuers and routes as tests/test_corpus.py (its `proxy_config`), keys over real
loopback HTTP, and each of the ~270 tokens sent as a REST TOKEN event and as an HTTP API 2.0
event: a token the proxy refuses with 401 is `Unauthorized`, one refused with 403 is a
Deny, and only the cases the proxy forwards get an Allow — never any other. The attacker
host that jku/x5u cases name is real, and must never be contacted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import pytest
import yaml
from aiohttp import web

from jwtproxy.aws_lambda import Authorizer
from jwtproxy.loader import load_text
from tests.aws_lambda_support import answer, bearer, event
from tests.corpus import generate
from tests.servers import JwksEndpoint
from tests.test_corpus import HS_SECRET_ENV, KEYS, proxy_config
from tests.threaded import serve_in_thread

EXPECTED: Final = {200: "allow", 401: "unauthorized", 403: "deny"}


class KeyHosts:
    """/main/jwks.json, /partner/jwks.json, and the attacker's host (every hit recorded)."""

    def __init__(self) -> None:
        self.main = JwksEndpoint(KEYS.main_jwks())
        self.partner = JwksEndpoint(KEYS.partner_jwks())
        self.attacker_hits: list[str] = []

    async def keys(self, request: web.BaseRequest) -> web.StreamResponse:
        endpoint = self.main if request.path.startswith("/main/") else self.partner
        return await endpoint.handle(request)  # type: ignore[arg-type]

    async def attacker(self, request: web.BaseRequest) -> web.StreamResponse:
        self.attacker_hits.append(request.path)
        return web.json_response(KEYS.attacker_jwks())


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[KeyHosts, Authorizer, str]]:
    served = KeyHosts()
    with serve_in_thread(served.keys) as keys_port, \
            serve_in_thread(served.attacker) as attacker_port:
        keys_url, attacker_url = (f"http://127.0.0.1:{keys_port}",
                                  f"http://127.0.0.1:{attacker_port}")
        data = proxy_config(keys_url, attacker_url, "http://127.0.0.1:9")
        config = load_text(yaml.safe_dump(data), {HS_SECRET_ENV: KEYS.hs_secret})
        door = Authorizer(config)
        try:
            yield served, door, attacker_url
        finally:
            door.close()


def _event(shape: str, case: generate.Case) -> dict[str, Any]:
    path = f"/{case.route_name}/{case.name}"
    if shape == "rest_token":
        return event(shape, "GET", path, bearer(case.token) if case.token else "")
    return event(shape, "GET", path, bearer(case.token) if case.token else None)


@pytest.mark.parametrize("shape", ["rest_token", "http_v2"])
def test_no_allow_for_any_token_the_proxy_refuses(
    hosts: tuple[KeyHosts, Authorizer, str], shape: str,
) -> None:
    served, door, attacker_url = hosts
    cases = generate.build_corpus(KEYS, attacker_url=attacker_url)
    assert len(cases) > 200
    wrong: list[str] = []
    for case in cases:
        got, _ = answer(door, _event(shape, case))
        if got != EXPECTED[case.expected_status]:
            wrong.append(f"{case.name}: {got}, expected {EXPECTED[case.expected_status]} "
                         f"({case.description})")
    assert not wrong, "\n".join(wrong)
    assert served.attacker_hits == [], "the door fetched a URL named by a token"
