"""Real third-party issuers and a reflecting upstream for the interop tests.

* ``echo_upstream``: an aiohttp server on loopback, in a thread with its own loop, that
  answers every request with JSON describing what it received (method, path, headers).
* ``oidc_issuer``: panva/oidc-provider (``node/issuer.mjs``) as a subprocess: JWT access
  tokens (RFC 9068) by client_credentials with resource indicators, ID tokens by an
  authorization-code flow that logs in without a form, and key rotation on demand.
* ``cognito``: moto's Cognito user pool in server mode on loopback, with a group, two users
  and tokens minted by ``admin_initiate_auth``.

Each is a context manager (the fixtures in conftest.py wrap them). Every socket is on
127.0.0.1; every process or server started here is stopped here, by its own handle or PID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.cookiejar
import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

TESTS_DIR = str(Path(__file__).resolve().parent.parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)  # tests/ holds proc.py
# Re-exported for the tests (explicit `as` form).
from proc import ProxyProcess as ProxyProcess  # noqa: E402
from proc import proxy_process as proxy_process  # noqa: E402

NODE_DIR = Path(__file__).resolve().parent / "node"
API_AUDIENCE = "https://api.test"
OTHER_AUDIENCE = "https://other.test"
CLIENT_SECRET = "secret"
WEB_REDIRECT_URI = "http://127.0.0.1/cb"  # never contacted: the flow stops at the redirect
ISSUER_START_TIMEOUT = 30.0
NPM_INSTALL_TIMEOUT = 300.0


def decode_segment(segment: str) -> dict[str, Any]:
    """Decode one base64url JSON segment of a compact JWS (no verification)."""
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    value = json.loads(data)
    assert isinstance(value, dict)
    return value


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a compact JWS, unverified: for asserting on what issuers emit."""
    header, payload, _ = token.split(".")
    return decode_segment(header), decode_segment(payload)


# --------------------------------------------------------------------------- HTTP helper


@dataclass
class Response:
    status: int
    headers: Any  # email.message.Message: case-insensitive, multi-valued
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 10.0,
) -> Response:
    """One plain HTTP request; any status is returned, never raised."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, err.headers, err.read())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- echo upstream


@dataclass
class EchoUpstream:
    url: str

    @staticmethod
    def headers_of(resp: Response) -> dict[str, list[str]]:
        """Headers the upstream received (lower-cased names, every value kept)."""
        received: dict[str, list[str]] = {}
        for name, value in resp.json()["headers"]:
            received.setdefault(name.lower(), []).append(value)
        return received


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_bytes": len(body),
        }
    )


@contextlib.contextmanager
def run_echo_upstream() -> Iterator[EchoUpstream]:
    """A reflecting upstream: the JSON body says what the proxy actually sent."""
    loop = asyncio.new_event_loop()
    started: queue.Queue[int | BaseException] = queue.Queue()
    stop = asyncio.Event()

    async def serve() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", _echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            await web.SockSite(runner, sock).start()
            started.put(sock.getsockname()[1])
            await stop.wait()
        finally:
            await runner.cleanup()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as err:
            started.put(err)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="echo-upstream", daemon=True)
    thread.start()
    port = started.get(timeout=10)
    if isinstance(port, BaseException):
        raise port
    try:
        yield EchoUpstream(f"http://127.0.0.1:{port}")
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)


# --------------------------------------------------------------------------- oidc-provider


@dataclass
class OidcIssuer:
    """A running node/issuer.mjs: its issuer URL and helpers to get real tokens."""

    url: str
    process: subprocess.Popen[str]
    stdout_lines: queue.Queue[str] = field(default_factory=queue.Queue)

    def discovery(self) -> dict[str, Any]:
        resp = http_request(f"{self.url}/.well-known/openid-configuration")
        assert resp.status == 200, resp.body
        doc = resp.json()
        assert isinstance(doc, dict)
        return doc

    def jwks(self) -> dict[str, Any]:
        resp = http_request(self.discovery()["jwks_uri"])
        assert resp.status == 200, resp.body
        doc = resp.json()
        assert isinstance(doc, dict)
        return doc

    def token_request(self, form: dict[str, str], client_id: str) -> Response:
        basic = base64.b64encode(f"{client_id}:{CLIENT_SECRET}".encode()).decode()
        return http_request(
            f"{self.url}/token",
            method="POST",
            data=urllib.parse.urlencode(form).encode(),
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )

    def token_form(
        self, scope: str = "orders:read", *, resource: str = API_AUDIENCE
    ) -> dict[str, str]:
        return {"grant_type": "client_credentials", "resource": resource, "scope": scope}

    def access_token(
        self,
        scope: str = "orders:read",
        *,
        resource: str = API_AUDIENCE,
        alg: str = "RS256",
    ) -> str:
        """A JWT access token by client_credentials; `alg` picks client svc-rs256/svc-es256."""
        resp = self.token_request(
            self.token_form(scope, resource=resource), client_id=f"svc-{alg.lower()}"
        )
        assert resp.status == 200, resp.body
        token = resp.json()["access_token"]
        assert isinstance(token, str)
        return token

    def id_token(self) -> str:
        """An ID token for `alice` via the authorization-code flow (client `web`)."""
        jar = http.cookiejar.CookieJar()

        class _NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect)
        url = f"{self.url}/auth?" + urllib.parse.urlencode(
            {
                "client_id": "web",
                "response_type": "code",
                "scope": "openid email",
                "redirect_uri": WEB_REDIRECT_URI,
                "state": "interop",
                "nonce": "interop",
            }
        )
        for _ in range(5):
            try:
                with opener.open(url, timeout=10) as resp:
                    raise AssertionError(f"authorization flow ended at {resp.status} {url}")
            except urllib.error.HTTPError as err:
                if err.code not in (302, 303):
                    raise AssertionError(f"{err.code} at {url}: {err.read()!r}") from err
                url = urllib.parse.urljoin(url, err.headers["Location"])
            if url.startswith(WEB_REDIRECT_URI):
                break
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        assert "code" in query, url
        resp = self.token_request(
            {
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": WEB_REDIRECT_URI,
            },
            client_id="web",
        )
        assert resp.status == 200, resp.body
        token = resp.json()["id_token"]
        assert isinstance(token, str)
        return token

    def keys_state(self) -> dict[str, Any]:
        resp = http_request(f"{self.url}/__test/keys")
        assert resp.status == 200, resp.body
        state = resp.json()
        assert isinstance(state, dict)
        return state

    def rotate(self) -> dict[str, Any]:
        """New signing keys in front, previous ones still published; returns the kids."""
        resp = http_request(f"{self.url}/__test/rotate", method="POST", data=b"")
        assert resp.status == 200, resp.body
        state = resp.json()
        assert isinstance(state, dict)
        return state


NODE_PACKAGES = ("oidc-provider", "jose", "dpop", "@modelcontextprotocol/sdk", "zod")


def _npm_install() -> None:
    if all((NODE_DIR / "node_modules" / name / "package.json").is_file()
           for name in NODE_PACKAGES):
        return
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node/npm not found on PATH: oidc-provider interop tests need Node.js 20+")
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],  # exactly the versions of the lock
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_INSTALL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm ci in {NODE_DIR} timed out after {NPM_INSTALL_TIMEOUT}s")
    if result.returncode != 0:
        pytest.skip(f"npm ci in {NODE_DIR} failed:\n{result.stdout}\n{result.stderr}")


@contextlib.contextmanager
def run_oidc_issuer() -> Iterator[OidcIssuer]:
    """node/issuer.mjs on an ephemeral loopback port, ready once it prints `READY <url>`."""
    with node_server("issuer.mjs", "0") as (url, process, lines):
        yield OidcIssuer(url, process, lines)


def run_node(script: str, *args: str, timeout: float = 60.0) -> Any:
    """Run node/<script> to completion; its one line of JSON output, parsed."""
    _npm_install()
    node = shutil.which("node")
    if not node:
        pytest.skip("node not found on PATH")
    result = subprocess.run([node, script, *args], cwd=NODE_DIR, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def node_server(
    script: str, *args: str
) -> Iterator[tuple[str, subprocess.Popen[str], queue.Queue[str]]]:
    """node/<script> as a subprocess, ready once it prints `READY <url>`; stopped by PID."""
    _npm_install()
    node = shutil.which("node")
    if not node:
        pytest.skip("node not found on PATH")
    process = subprocess.Popen(
        [node, script, *args],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DEBUG": ""},
    )
    lines: queue.Queue[str] = queue.Queue()
    stderr_tail: list[str] = []

    def pump_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put("")  # EOF marker

    def pump_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            stderr_tail.append(line)
            del stderr_tail[:-200]

    threading.Thread(target=pump_stdout, daemon=True).start()
    threading.Thread(target=pump_stderr, daemon=True).start()
    try:
        try:
            first = lines.get(timeout=ISSUER_START_TIMEOUT)
        except queue.Empty:
            first = ""
        if not first.startswith("READY "):
            raise RuntimeError(
                f"{script} did not print READY (got {first!r}):\n{''.join(stderr_tail)}"
            )
        yield first.split(" ", 1)[1].strip(), process, lines
    finally:
        if process.poll() is None:
            process.terminate()  # SIGTERM to the PID we started
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --------------------------------------------------------------------------- moto Cognito

COGNITO_REGION = "us-east-1"
COGNITO_PASSWORD = "Interop-Passw0rd!"


@dataclass
class CognitoTokens:
    id_token: str
    access_token: str
    refresh_token: str


@dataclass
class Cognito:
    """A moto user pool: ids, endpoint and real tokens for an admin and a plain user."""

    endpoint: str
    region: str
    user_pool_id: str
    client_id: str
    admin: CognitoTokens  # user `alice`, member of group `admin`
    user: CognitoTokens  # user `bob`, in no group
    client: Any  # boto3 cognito-idp client

    @property
    def issuer(self) -> str:
        """What real Cognito (and moto) put in `iss`."""
        return f"https://cognito-idp.{self.region}.amazonaws.com/{self.user_pool_id}"

    @property
    def jwks_url(self) -> str:
        return f"{self.endpoint}/{self.user_pool_id}/.well-known/jwks.json"

    def proxy_issuer(self, **extra: Any) -> dict[str, Any]:
        """jwtproxy issuer config for this pool (Cognito shorthand with a local endpoint)."""
        return {
            "cognito": {
                "region": self.region,
                "user_pool_id": self.user_pool_id,
                "endpoint": self.endpoint,
            },
            "audiences": [self.client_id],
            "algorithms": ["RS256"],
            **extra,
        }


@contextlib.contextmanager
def run_moto_cognito() -> Iterator[Cognito]:
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request lines
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "cognito-idp",
            endpoint_url=endpoint,
            region_name=COGNITO_REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        pool_id = client.create_user_pool(PoolName="jwtproxy-interop")["UserPool"]["Id"]
        client.create_resource_server(
            UserPoolId=pool_id,
            Identifier="https://orders.api.test",
            Name="orders",
            Scopes=[{"ScopeName": "read", "ScopeDescription": "read orders"}],
        )
        client_id = client.create_user_pool_client(
            UserPoolId=pool_id,
            ClientName="interop-app",
            GenerateSecret=False,
            ExplicitAuthFlows=["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
            AllowedOAuthFlows=["code"],
            AllowedOAuthScopes=["openid", "https://orders.api.test/read"],
        )["UserPoolClient"]["ClientId"]
        client.create_group(GroupName="admin", UserPoolId=pool_id)

        def user_tokens(username: str, groups: list[str]) -> CognitoTokens:
            client.admin_create_user(
                UserPoolId=pool_id,
                Username=username,
                UserAttributes=[{"Name": "email", "Value": f"{username}@example.test"}],
                MessageAction="SUPPRESS",
            )
            client.admin_set_user_password(
                UserPoolId=pool_id, Username=username, Password=COGNITO_PASSWORD, Permanent=True
            )
            for group in groups:
                client.admin_add_user_to_group(
                    UserPoolId=pool_id, Username=username, GroupName=group
                )
            result = client.admin_initiate_auth(
                UserPoolId=pool_id,
                ClientId=client_id,
                AuthFlow="ADMIN_USER_PASSWORD_AUTH",
                AuthParameters={"USERNAME": username, "PASSWORD": COGNITO_PASSWORD},
            )["AuthenticationResult"]
            return CognitoTokens(result["IdToken"], result["AccessToken"], result["RefreshToken"])

        yield Cognito(
            endpoint=endpoint,
            region=COGNITO_REGION,
            user_pool_id=pool_id,
            client_id=client_id,
            admin=user_tokens("alice", ["admin"]),
            user=user_tokens("bob", []),
            client=client,
        )
    finally:
        server.stop()


# --------------------------------------------------------------------------- metrics


def auth_total(metrics_text: str, **labels: str) -> float:
    """Sum of jwtproxy_auth_total samples whose labels include `labels`."""
    return metric_sum(metrics_text, "jwtproxy_auth_total", **labels)


def metric_sum(metrics_text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name != name:
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def proxy_get(proxy: ProxyProcess, path: str, token: str | None, **headers: str) -> Response:
    """GET through the proxy, with `token` as the bearer (if any) and extra headers."""
    return http_request(proxy.url + path, headers={**(bearer(token) if token else {}), **headers})


def metrics_text(proxy: ProxyProcess) -> str:
    """The proxy's admin /metrics page."""
    status, text = proxy.admin_get("/metrics")
    assert status == 200, text
    return text


# --------------------------------------------------------------------------- assertions


def describe(resp: Response) -> str:
    """Status, headers and the start of the body, for assertion messages."""
    return f"{resp.status} {dict(resp.headers)} {resp.body[:300]!r}"


def assert_invalid_token(resp: Response) -> None:
    """401 with an RFC 6750 invalid_token challenge and JSON error body."""
    assert resp.status == 401, describe(resp)
    challenge = resp.headers.get("WWW-Authenticate", "")
    assert challenge.startswith("Bearer"), describe(resp)
    assert 'error="invalid_token"' in challenge, describe(resp)
    assert resp.json()["error"] == "invalid_token", describe(resp)


def assert_insufficient_scope(resp: Response, mentions: str | None = None) -> None:
    """403 with an RFC 6750 insufficient_scope challenge (naming `mentions` if given)."""
    assert resp.status == 403, describe(resp)
    challenge = resp.headers.get("WWW-Authenticate", "")
    assert 'error="insufficient_scope"' in challenge, describe(resp)
    if mentions is not None:
        assert mentions in challenge, describe(resp)
