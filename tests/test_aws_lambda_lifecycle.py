"""The Lambda door's execution environment: `handler` loads the config once (from
`JWTPROXY_CONFIG`, else `jwtproxy.yaml` in the task root), keeps one event loop, one key
session and warm caches across invocations, and bounds a JWKS fetch by the invocation's
deadline. Each case runs a fresh Python (as a new execution environment would)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Final

import yaml
from aiohttp import web

from tests.aws_lambda_support import answer, authorizer, bearer, event, jwks_server
from tests.servers import JwksEndpoint
from tests.threaded import serve_in_thread
from tests.tokens import KeyRing, mint

ISSUER: Final = "https://issuer.test/"
ROOT: Final = Path(__file__).resolve().parent.parent

# Runs in the child: two invocations of the real entry point, then what it kept.
INVOKE: Final = """
import json, sys
from jwtproxy import aws_lambda
event = json.loads(sys.argv[1])
answers = []
for _ in range(2):
    try:
        answers.append(aws_lambda.handler(event, None)["policyDocument"]["Statement"][0]["Effect"])
    except Exception as err:
        answers.append(f"{type(err).__name__}: {str(err)[:200]}")
    kept = aws_lambda._ENVIRONMENT.authorizer
    answers.append([id(kept), id(kept.loop), id(kept.session)] if kept else None)
answers.append(sorted(m for m in sys.modules
                      if m.startswith(("aiohttp.web", "prometheus_client"))))
print(json.dumps(answers))
"""


def config(jwks_url: str) -> dict[str, Any]:
    return {
        "log": {"level": "warning"},
        "issuers": {"main": {"issuer": ISSUER, "jwks_uri": jwks_url, "algorithms": ["RS256"],
                             "audiences": ["api"]}},
        "routes": [{"name": "api", "match": {"path_prefix": "/"}}],
    }


def invoke(env: dict[str, str], body: dict[str, Any]) -> list[Any]:
    result = subprocess.run(
        [sys.executable, "-c", INVOKE, json.dumps(body)], capture_output=True, text=True,
        timeout=60, cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env})
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.splitlines()[-1]))


def _write(directory: Path, data: dict[str, Any]) -> Path:
    path = directory / "jwtproxy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _body(keys: KeyRing) -> dict[str, Any]:
    token = mint(keys.rsa, {"iss": ISSUER, "aud": "api"})
    return event("rest_token", "GET", "/x", bearer(token))


def test_handler_loads_once_and_keeps_loop_session_and_keys(
    keys: KeyRing, tmp_path: Path,
) -> None:
    endpoint = JwksEndpoint(keys.jwks())
    with jwks_server(endpoint) as url:
        path = _write(tmp_path, config(url))
        first, kept_1, second, kept_2, imported = invoke(
            {"JWTPROXY_CONFIG": str(path)}, _body(keys))
    assert (first, second) == ("Allow", "Allow")
    assert kept_1 == kept_2 and kept_1 is not None  # the same authorizer, loop and session
    assert endpoint.hits == 1  # keys fetched once for both invocations
    assert imported == []  # neither aiohttp's server nor prometheus-client came along


def test_default_config_is_jwtproxy_yaml_in_the_task_root(keys: KeyRing, tmp_path: Path) -> None:
    endpoint = JwksEndpoint(keys.jwks())
    with jwks_server(endpoint) as url:
        _write(tmp_path, config(url))
        first, *_ = invoke({"LAMBDA_TASK_ROOT": str(tmp_path)}, _body(keys))
    assert first == "Allow"


def test_bad_or_missing_config_fails_every_invocation(keys: KeyRing, tmp_path: Path) -> None:
    missing = invoke({"JWTPROXY_CONFIG": str(tmp_path / "absent.yaml")}, _body(keys))
    assert missing[0].startswith("ConfigError: ") and "cannot read" in missing[0]
    assert missing[1] is None and missing[2].startswith("ConfigError")
    bad = _write(tmp_path, {"routes": [{"name": "api", "match": {"path_prefix": "/"}}],
                            "aws_lambda": {"policy_scope": "everything"}})
    answers = invoke({"JWTPROXY_CONFIG": str(bad)}, _body(keys))
    assert "aws_lambda.policy_scope: expected one of request, routes" in answers[0]


class _Context:
    """The part of the Lambda context object the door reads."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_a_slow_issuer_cannot_eat_the_invocation(keys: KeyRing) -> None:
    """The key server holds its answer until the test releases it: the door answers (an
    error, never an Allow) while the fetch is still waiting, within the context's deadline."""
    release = threading.Event()
    answered: list[bool] = []

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.to_thread(release.wait, 30)
        answered.append(True)
        return web.json_response(keys.jwks())

    with serve_in_thread(slow) as port:
        data = config(f"http://127.0.0.1:{port}/jwks.json")
        data["issuers"]["main"]["jwks"] = {"timeout": "30s"}
        try:
            with authorizer(data) as door:
                got = answer(door, _body(keys), _Context(remaining_ms=600))
                assert got == ("error", "keys_unavailable")
                assert answered == []  # the issuer had not answered yet
        finally:
            release.set()
