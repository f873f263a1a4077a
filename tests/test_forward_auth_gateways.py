"""Forward-auth end to end behind REAL nginx (`auth_request`) and REAL Caddy
(`forward_auth`), configured with the snippets of docs/forward-auth.md as written.

World (one per module): a JWKS server and a recording upstream in a thread
(tests/threaded.py), jwtproxy as a process with only its forward-auth door
(`server.listen: null`, tests/proc.py), and each gateway on loopback ports with its
config, pid and logs in a tmp dir, stopped by PID. The Debian packages are installed by a
session fixture when missing (`.ci/run` on a fresh machine)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, Final

import pytest

from tests.proc import ProxyProcess, free_port, proxy_process, stop
from tests.servers import EchoUpstream, JwksEndpoint, Received
from tests.threaded import serve_in_thread
from tests.tokens import KeyRing, make_keyring, mint

DOC: Final = Path(__file__).resolve().parent.parent / "docs" / "forward-auth.md"
ISSUER: Final = "https://issuer.test/"
AUDIENCE: Final = "api://orders"
DOWN_ISSUER: Final = "https://down.test/"
START_TIMEOUT: Final = 20.0
APT_TIMEOUT: Final = 1200
# the example ports of the snippets, replaced by free ones
DOC_JWTPROXY: Final = "127.0.0.1:9191"
DOC_APP: Final = "127.0.0.1:8000"


def doc_snippet(name: str) -> str:
    """The fenced block after `<!-- tested: NAME -->` in docs/forward-auth.md."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(rf"<!-- tested: {name} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert found, f"docs/forward-auth.md has no tested {name} snippet"
    return found.group(1)


def ensure_installed(binary: str, package: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if path is None:
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y", package],
            check=True, timeout=APT_TIMEOUT, capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    assert path is not None, f"{package} did not install {binary}"
    return path


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    return ensure_installed("nginx", "nginx")


@pytest.fixture(scope="session")
def caddy_bin() -> str:
    return ensure_installed("caddy", "caddy")


# --------------------------------------------------------------------------- the world


def jwtproxy_config(jwks_url: str, dead_url: str) -> dict[str, Any]:
    claims = {"sub": "X-Auth-Subject", "groups": "X-Auth-Groups"}
    return {
        "server": {"listen": None, "graceful_timeout": "2s"},
        "forward_auth": {},
        "tokens": [{"header": "Authorization"}, {"query": "access_token"}],
        "log": {"level": "info", "format": "json"},
        "issuers": {
            "main": {"issuer": ISSUER, "jwks_uri": jwks_url, "audiences": [AUDIENCE],
                     "algorithms": ["RS256", "ES256"]},
            # nothing listens there: its routes can only answer 503
            "down": {"issuer": DOWN_ISSUER, "jwks_uri": dead_url,
                     "audiences": [AUDIENCE], "jwks": {"timeout": "1s"}},
        },
        "routes": [
            {"name": "public", "match": {"path_prefix": "/public"}, "auth": "none"},
            {"name": "orders", "match": {"path_prefix": "/orders"},
             "auth": {"issuers": ["main"], "scopes": ["orders:read"]},
             "forward": {"claims": claims}},
            {"name": "maybe", "match": {"path_prefix": "/maybe"},
             "auth": {"issuers": ["main"], "mode": "optional"}, "forward": {"claims": claims}},
            {"name": "down", "match": {"path_prefix": "/down"}, "auth": {"issuers": ["down"]}},
        ],
    }


@dataclass
class Backend:
    keys: KeyRing
    upstream: EchoUpstream
    upstream_port: int
    jwtproxy: ProxyProcess


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    keys = make_keyring()
    jwks = JwksEndpoint(keys.jwks())
    echo = EchoUpstream()
    with serve_in_thread(jwks.handle) as jwks_port, serve_in_thread(echo.handle) as up_port:
        config = jwtproxy_config(f"http://127.0.0.1:{jwks_port}/jwks.json",
                                 f"http://127.0.0.1:{free_port()}/jwks.json")
        # not ready by design (issuer `down`): /healthz, then main's keys by a request
        with proxy_process(config, wait_ready=False) as proc:
            yield Backend(keys, echo, up_port, proc)


@contextlib.contextmanager
def gateway(command: list[str], port: int, workdir: Path, log: Path,
            env: dict[str, str] | None = None) -> Iterator[int]:
    """Start a gateway process, wait for its port, stop it by PID on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited {process.returncode}:\n"
                                   f"{log.read_text(errors='replace')}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command[0]} not listening:\n{log.read_text()}")
            time.sleep(0.05)  # polling interval, not a readiness guess
        yield port
    finally:
        stop(process)


def nginx_config(tmp: Path, port: int, backend: Backend) -> str:
    assert backend.jwtproxy.forward_port is not None
    snippet = (doc_snippet("nginx")
               .replace(DOC_JWTPROXY, f"127.0.0.1:{backend.jwtproxy.forward_port}")
               .replace(DOC_APP, f"127.0.0.1:{backend.upstream_port}")
               .replace("listen 8080;", f"listen 127.0.0.1:{port};"))
    temp = "\n".join(f"  {kind}_temp_path {tmp}/{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\nworker_processes 1;\n"
            f"events {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n{temp}\n"
            f"{snippet}\n}}\n")


def caddy_config(port: int, backend: Backend) -> str:
    assert backend.jwtproxy.forward_port is not None
    site = (doc_snippet("caddy")
            .replace(DOC_JWTPROXY, f"127.0.0.1:{backend.jwtproxy.forward_port}")
            .replace(DOC_APP, f"127.0.0.1:{backend.upstream_port}")
            .replace(":8080 {", f"http://127.0.0.1:{port} {{"))
    return "{\n\tadmin off\n\tauto_https off\n}\n\n" + site + "\n"


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def gateway_port(request: pytest.FixtureRequest, backend: Backend) -> Iterator[int]:
    name = request.param
    with tempfile.TemporaryDirectory(prefix=f"jwtproxy-{name}-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        if name == "nginx":
            binary = request.getfixturevalue("nginx_bin")
            conf = tmp / "nginx.conf"
            conf.write_text(nginx_config(tmp, port, backend))
            command = [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log"),
                       "-g", "daemon off;"]
            env = None
        else:
            binary = request.getfixturevalue("caddy_bin")
            conf = tmp / "Caddyfile"
            conf.write_text(caddy_config(port, backend))
            command = [binary, "run", "--config", str(conf), "--adapter", "caddyfile"]
            env = {"HOME": str(tmp), "XDG_DATA_HOME": str(tmp / "data"),
                   "XDG_CONFIG_HOME": str(tmp / "config")}
        with gateway(command, port, tmp, tmp / "gateway.log", env) as running:
            yield running


# --------------------------------------------------------------------------- helpers


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(port: int, method: str, target: str, headers: dict[str, str] | None = None
         ) -> Answer:
    """One request, the target byte for byte (`..` and `%2e` unresolved)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token(backend: Backend, **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read", **claims}
    return mint(backend.keys.rsa, body)


def reached(backend: Backend, path: str) -> list[Received]:
    return [got for got in backend.upstream.received if got.path_qs == path]


# --------------------------------------------------------------------------- tests


def test_allowed_with_claim_headers_upstream(backend: Backend, gateway_port: int) -> None:
    path = f"/orders/{gateway_port}/allowed"
    headers = {**bearer(token(backend, sub="alice", groups=["a", "b"])),
               "X-Auth-Subject": "mallory", "X-Auth-Groups": "admin"}
    answer = send(gateway_port, "GET", path, headers)
    assert answer.status == 200, answer.body
    (got,) = reached(backend, path)
    assert got.header_all("X-Auth-Subject") == ["alice"]
    assert got.header_all("X-Auth-Groups") == ["a,b"]


def test_client_copies_stripped_without_claims(backend: Backend, gateway_port: int) -> None:
    """A public route and an optional one without a token: jwtproxy sends no claim
    headers, and the client's own copies must not reach the upstream either."""
    for path in (f"/public/{gateway_port}/x", f"/maybe/{gateway_port}/anonymous"):
        answer = send(gateway_port, "GET", path,
                      {"X-Auth-Subject": "mallory", "X-Auth-Groups": "admin"})
        assert answer.status == 200, (path, answer.body)
        (got,) = reached(backend, path)
        assert got.header("X-Auth-Subject") is None, path
        assert got.header("X-Auth-Groups") is None, path


def test_token_without_the_claim_strips_the_client_copy(
    backend: Backend, gateway_port: int,
) -> None:
    path = f"/orders/{gateway_port}/no-groups"
    headers = {**bearer(token(backend, sub="bob")), "X-Auth-Groups": "admin"}
    assert send(gateway_port, "GET", path, headers).status == 200
    (got,) = reached(backend, path)
    assert got.header_all("X-Auth-Subject") == ["bob"]
    assert got.header("X-Auth-Groups") is None


@pytest.mark.parametrize(("case", "expected_status", "challenge"), [
    ("missing", 401, 'Bearer realm="jwtproxy"'),
    ("expired", 401, 'error="invalid_token"'),
    ("bad_signature", 401, 'error="invalid_token"'),
    ("scope", 403, 'error="insufficient_scope", error_description="missing scope'),
    ("ambiguous", 400, 'error="invalid_request"'),
])
def test_each_denial_relayed_with_its_challenge(
    backend: Backend, gateway_port: int, case: str, expected_status: int, challenge: str,
) -> None:
    path = f"/orders/{gateway_port}/{case}"
    target = path
    headers = {
        "missing": {},
        "expired": bearer(mint(backend.keys.rsa, {"iss": ISSUER, "aud": AUDIENCE,
                                                  "exp": int(time.time()) - 3600})),
        "bad_signature": bearer(mint(backend.keys.other_rsa, {"iss": ISSUER, "aud": AUDIENCE})),
        "scope": bearer(token(backend, scope="profile")),
        "ambiguous": bearer(token(backend)),
    }[case]
    if case == "ambiguous":  # RFC 6750 §2: one method only; the query is the original URI's
        target += f"?access_token={token(backend)}"
    answer = send(gateway_port, "GET", target, headers)
    assert answer.status == expected_status, answer.body
    (sent,) = answer.headers.get_all("WWW-Authenticate") or [""]  # once, not twice
    assert challenge in sent, answer.headers
    assert "error" in answer.json()  # a JSON body, not the gateway's HTML page
    assert not [got for got in backend.upstream.received if got.path_qs.startswith(path)]
    if case == "scope":
        assert 'scope="orders:read"' in answer.headers["WWW-Authenticate"]


def _closed_by_the_gateway(port: int) -> int:
    """Connections to `port` the gateway closed in the last minute (TIME_WAIT on its side:
    the peer port is `port`), from /proc/net/tcp."""
    closed = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "06" and int(fields[2].rsplit(":", 1)[1], 16) == port:
            closed += 1
    return closed


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="counts sockets in /proc")
def test_denials_keep_the_gateways_connection_to_jwtproxy(
    backend: Backend, gateway_port: int,
) -> None:
    """A denial answers with a JSON body; nginx never reads a subrequest's body and closes
    a connection that still holds one. The snippet asks with HEAD (`proxy_method`): same
    status and headers, no body, the connection kept. Before, each denial cost a connect."""
    assert backend.jwtproxy.forward_port is not None
    forged = bearer(mint(backend.keys.other_rsa, {"iss": ISSUER, "aud": AUDIENCE}))
    before = _closed_by_the_gateway(backend.jwtproxy.forward_port)
    for i in range(20):
        answer = send(gateway_port, "GET", f"/orders/{gateway_port}/keep/{i}", forged)
        assert answer.status == 401
        assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    closed = _closed_by_the_gateway(backend.jwtproxy.forward_port) - before
    assert closed <= 2, f"{closed} of 20 denials closed the connection to jwtproxy"


@pytest.mark.parametrize("target", [
    "/public/../orders/{port}/dots",
    "/public/%2e%2e/orders/{port}/encoded",
    "/public/%2E%2E/orders/{port}/upper",
    "/public/..%2forders/{port}/slash",
])
def test_dot_segments_cannot_reach_a_protected_route(
    backend: Backend, gateway_port: int, target: str,
) -> None:
    """The gateway may resolve or keep the dots; either way jwtproxy decides the route
    the upstream acts on (/orders), never the public one the raw text starts with."""
    target = target.format(port=gateway_port)
    answer = send(gateway_port, "GET", target)
    assert answer.status in (400, 401), (target, answer.status, answer.body)
    assert not [got for got in backend.upstream.received if str(gateway_port) in got.path_qs
                and got.path_qs.endswith(target.rsplit("/", 1)[-1])]


def test_client_sent_original_request_headers_are_not_believed(
    backend: Backend, gateway_port: int,
) -> None:
    """A client naming a public route in the forward-auth headers itself gets no further
    than without them."""
    path = f"/orders/{gateway_port}/spoof"
    for spoof in ({"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/public/x"},
                  {"X-Original-Method": "GET", "X-Original-URI": "/public/x"}):
        answer = send(gateway_port, "GET", path, spoof)
        assert answer.status in (400, 401), (spoof, answer.status, answer.body)
    assert reached(backend, path) == []


def test_no_route_is_refused(backend: Backend, gateway_port: int) -> None:
    path = f"/nowhere/{gateway_port}"
    assert send(gateway_port, "GET", path).status == 403
    assert reached(backend, path) == []


def test_keys_unavailable_is_503_at_the_gateway(backend: Backend, gateway_port: int) -> None:
    path = f"/down/{gateway_port}"
    answer = send(gateway_port, "GET", path, bearer(token(backend, iss=DOWN_ISSUER)))
    assert answer.status == 503, answer.body
    assert answer.headers.get("Retry-After") == "30"
    assert reached(backend, path) == []


def test_jwtproxy_counted_and_logged_each_decision(backend: Backend) -> None:
    """After the gateway tests: the door's metrics and access lines, and /readyz says
    which issuer has no keys."""
    proc = backend.jwtproxy
    status, text = proc.admin_get("/metrics")
    assert status == 200
    assert re.search(r'jwtproxy_forward_auth_requests_total\{code="200",route="orders"\} '
                     r'[1-9]', text), text
    assert re.search(r'jwtproxy_auth_total\{issuer="main",reason="ok",result="allowed",'
                     r'route="orders"\} [1-9]', text)
    assert re.search(r'jwtproxy_auth_total\{issuer="down",reason="keys_unavailable",'
                     r'result="denied",route="down"\} [1-9]', text)
    status, body = proc.admin_get("/readyz")
    assert status == 503 and json.loads(body)["missing"][0]["issuer"] == "down"
    lines = [json.loads(line) for line in proc.logs().splitlines()
             if line.startswith("{") and '"door":"forward_auth"' in line]
    assert lines and all(line["event"] == "request" for line in lines)
    assert {"x-original", "x-forwarded"} <= {line.get("source") for line in lines}
    assert "Bearer ey" not in proc.logs()
