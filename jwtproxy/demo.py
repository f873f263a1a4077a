"""`jwtproxy demo`: a local issuer, an echo upstream and the proxy, in one event loop.

The issuer has a fresh ES256 key and serves OIDC discovery and its JWKS on loopback; the
proxy is built from a config text by the same code as `jwtproxy run` (`load_text`,
`ProxyApp`, `proxy_server`, `admin_app`) and fetches the keys by discovery. Then it prints
ready-to-paste `curl` lines with freshly minted tokens, each with the status to expect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .app import ProxyApp
from .errors import ConfigError
from .forward_auth import ForwardAuthDoor
from .loader import load_text
from .log import setup_logging
from .metrics import Metrics
from .server import admin_app, door_server, proxy_server

DEFAULT_PORT: Final = 8080
DEFAULT_ADMIN_PORT: Final = 9090
LOOPBACK: Final = "127.0.0.1"
AUDIENCE: Final = "api://demo"
SCOPE: Final = "orders:read"
ALG: Final = "ES256"
TOKEN_LIFETIME: Final = 24 * 3600
EXPIRED_AGO: Final = 3600  # well past the default 60 s leeway
SHUTDOWN_TIMEOUT: Final = 2.0
BACKLOG: Final = 128
EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1

CONFIG_TEMPLATE: Final = """\
server:
  listen: {proxy}
  graceful_timeout: 2s
admin:
  listen: {admin}
forward_auth:
  listen: {forward_auth}  # a gateway's auth subrequests (nginx auth_request, Traefik, ...)
log:
  level: info
  format: text
issuers:
  demo:
    issuer: "{issuer}"  # keys by OIDC discovery (plain http: loopback only)
    audiences: ["{audience}"]
    algorithms: [{alg}]
routes:
  - name: public
    match: {{path_prefix: /public}}
    upstream: {upstream}
    auth: none
  - name: orders
    match: {{path_prefix: /orders}}
    upstream: {upstream}
    auth:
      issuers: [demo]
      scopes: ["{scope}"]
    forward:
      claims: {{sub: X-Auth-Subject, email: X-Auth-Email, scope: X-Auth-Scopes}}
"""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class DemoIssuer:
    """A throwaway P-256 key that signs demo tokens; its public half is the JWKS."""

    url: str
    kid: str
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, url: str) -> DemoIssuer:
        return cls(url, f"demo-{int(time.time())}", ec.generate_private_key(ec.SECP256R1()))

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {"keys": [{
            "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": ALG,
            "x": _b64(numbers.x.to_bytes(32, "big")), "y": _b64(numbers.y.to_bytes(32, "big")),
        }]}

    def discovery(self) -> dict[str, Any]:
        return {"issuer": self.url, "jwks_uri": f"{self.url}/jwks.json",
                "id_token_signing_alg_values_supported": [ALG]}

    def mint(self, **overrides: Any) -> str:
        """An ES256 token for `alice` with scope orders:read; `overrides` change claims."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url, "sub": "alice", "aud": AUDIENCE, "email": "alice@example.com",
            "scope": f"{SCOPE} profile", "iat": now, "exp": now + TOKEN_LIFETIME,
        }
        claims.update(overrides)
        header = {"alg": ALG, "typ": "JWT", "kid": self.kid}
        signing_input = (_b64(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + _b64(json.dumps(claims, separators=(",", ":")).encode()))
        der = self.key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)  # RFC 7518 §3.4: JWS wants R || S, 32 bytes each
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def app(self) -> web.Application:
        async def discovery(_: web.Request) -> web.Response:
            return web.json_response(self.discovery())

        async def jwks(_: web.Request) -> web.Response:
            return web.json_response(self.jwks(), headers={"Cache-Control": "max-age=300"})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks.json", jwks)
        return app


def echo_app() -> web.Application:
    """The upstream: answers every request with its method, path and headers as JSON."""

    async def echo(request: web.Request) -> web.Response:
        body = {"upstream": "echo", "method": request.method, "path": request.raw_path,
                "headers": dict(request.headers.items())}
        return web.Response(text=json.dumps(body, indent=2) + "\n",
                            content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def listen_socket(port: int) -> socket.socket:
    """A listening loopback socket on `port`, or on a free port when that one is taken."""
    for candidate in dict.fromkeys((port, 0)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, candidate))
            # Listen now: two SO_REUSEADDR sockets may both bind a port, only one listens.
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            continue
        return sock
    raise OSError(f"cannot bind a port on {LOOPBACK}")


def _url(sock: socket.socket) -> str:
    return f"http://{LOOPBACK}:{sock.getsockname()[1]}"


@dataclass(frozen=True, slots=True)
class Example:
    comment: str
    command: str


def examples(
    issuer: DemoIssuer, proxy: str, admin: str, explain_cmd: str, forward_auth: str,
) -> list[Example]:
    """The requests to try, each with the status the proxy answers."""
    now = int(time.time())

    def curl(path: str, token: str | None = None, *, base: str = proxy,
             flags: str = "-sS -i", headers: tuple[str, ...] = ()) -> str:
        if token:
            headers = (*headers, f"Authorization: Bearer {token}")
        options = "".join(f"-H {shlex.quote(header)} " for header in headers)
        return f"curl {flags} {options}{base}{path}"

    expired = issuer.mint(iat=now - EXPIRED_AGO - 300, exp=now - EXPIRED_AGO)
    return [
        Example("public route, no token needed -> expect 200", curl("/public/hello")),
        Example(f"allowed: valid token with scope {SCOPE} -> expect 200; the echo shows the "
                "X-Auth-Subject, X-Auth-Email and X-Auth-Scopes headers the proxy injected",
                curl("/orders/42", issuer.mint())),
        Example("client-sent X-Auth-Subject is stripped before the claims are injected "
                "-> expect 200 with X-Auth-Subject: alice",
                curl("/orders/42", issuer.mint(), headers=("X-Auth-Subject: admin",))),
        Example('no token -> expect 401, WWW-Authenticate: Bearer realm="jwtproxy"',
                curl("/orders/42")),
        Example("expired token (exp an hour ago) -> expect 401 invalid_token",
                curl("/orders/42", expired)),
        Example(f"wrong audience (aud api://someone-else, not {AUDIENCE}) "
                "-> expect 401 invalid_token",
                curl("/orders/42", issuer.mint(aud="api://someone-else"))),
        Example(f"missing scope (token has only 'profile') -> expect 403 insufficient_scope, "
                f'scope="{SCOPE}"',
                curl("/orders/42", issuer.mint(scope="profile"))),
        Example("no route matches -> expect 404", curl("/nowhere")),
        Example("forward-auth: a gateway asks about GET /orders/42 (Traefik/Caddy headers) "
                "-> expect 200, empty body, X-Auth-Subject: alice for the gateway to copy",
                curl("/", issuer.mint(), base=forward_auth,
                     headers=("X-Forwarded-Method: GET", "X-Forwarded-Uri: /orders/42"))),
        Example("why was the expired token refused? explain runs the same pipeline, step by "
                "step -> exits 1 (denied)",
                f"{explain_cmd} /orders/42 {expired}"),
        Example("readiness and metrics on the admin port -> expect 200",
                curl("/readyz", base=admin, flags="-sS")),
        Example("", curl("/metrics", base=admin, flags="-sS")),
    ]


def _explain_command(config_path: Path) -> str:
    program = ("jwtproxy" if shutil.which("jwtproxy")
               else f"{shlex.quote(sys.executable)} -m jwtproxy")
    return f"{program} explain -c {shlex.quote(str(config_path))}"


def banner(
    urls: dict[str, str], issuer: DemoIssuer, config_text: str, config_path: Path,
    busy: list[str], items: list[Example],
) -> str:
    lines = ["jwtproxy demo: an issuer, an upstream and the proxy, all on loopback in this "
             "one process.", ""]
    lines += [f"note: {note}" for note in busy]
    lines += [
        f"  proxy     {urls['proxy']}",
        f"  admin     {urls['admin']}   (/metrics /healthz /readyz)",
        f"  forward-auth {urls['forward_auth']}  (the same policy for a gateway's auth "
        "subrequests: docs/forward-auth.md)",
        f"  issuer    {urls['issuer']}  (fresh {ALG} key, kid {issuer.kid}; "
        "discovery at /.well-known/openid-configuration, keys at /jwks.json)",
        f"  upstream  {urls['upstream']}  (echo: answers with the method, path and headers "
        "it received)",
        "",
        f"The built-in config (also at {config_path}):",
        "",
        *(f"    {line}" for line in config_text.splitlines()),
        "",
        f"Try these (tokens are valid for {TOKEN_LIFETIME // 3600} h; "
        "the key is new on every run):",
    ]
    for item in items:
        if item.comment:  # an example without a comment shares the one above
            lines += ["", f"# {item.comment}"]
        lines.append(item.command)
    lines += ["", "Ready. Ctrl-C stops everything."]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _sockets(ports: dict[str, int]) -> Iterator[dict[str, socket.socket]]:
    socks: dict[str, socket.socket] = {}
    try:
        for name, port in ports.items():
            socks[name] = listen_socket(port)
        yield socks
    finally:
        for sock in socks.values():
            sock.close()


async def _serve(stack: contextlib.AsyncExitStack, runner: web.BaseRunner,
                 sock: socket.socket) -> None:
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.SockSite(runner, sock).start()


async def _demo(port: int, admin_port: int, out: TextIO) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    wanted = {"proxy": port, "admin": admin_port, "issuer": 0, "upstream": 0,
              "forward_auth": 0}
    try:
        async with contextlib.AsyncExitStack() as stack:
            socks = stack.enter_context(_sockets(wanted))
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jwtproxy-demo-")))
            urls = {name: _url(sock) for name, sock in socks.items()}
            busy = [f"port {wanted[name]} is taken: the {name} listens on "
                    f"{socks[name].getsockname()[1]}"
                    for name in ("proxy", "admin")
                    if wanted[name] and socks[name].getsockname()[1] != wanted[name]]
            issuer = DemoIssuer.generate(urls["issuer"])
            await _serve(stack, web.AppRunner(issuer.app(), access_log=None), socks["issuer"])
            await _serve(stack, web.AppRunner(echo_app(), access_log=None), socks["upstream"])
            config_text = CONFIG_TEMPLATE.format(
                proxy=urls["proxy"].removeprefix("http://"),
                admin=urls["admin"].removeprefix("http://"), issuer=urls["issuer"],
                forward_auth=urls["forward_auth"].removeprefix("http://"),
                upstream=urls["upstream"], audience=AUDIENCE, scope=SCOPE, alg=ALG)
            config = load_text(config_text)
            config_path = tmp / "config.yaml"
            config_path.write_text(config_text, encoding="utf-8")
            proxy = ProxyApp(config, Metrics())
            stack.push_async_callback(proxy.close)
            await proxy.start()
            missing = proxy.missing_keys()
            if missing:
                print(f"jwtproxy demo: the proxy could not load the issuer's keys: {missing}",
                      file=sys.stderr)
                return EXIT_RUNTIME
            await _serve(stack, web.ServerRunner(proxy_server(proxy, config),
                                                 shutdown_timeout=SHUTDOWN_TIMEOUT),
                         socks["proxy"])
            assert config.forward_auth is not None
            await _serve(stack, web.ServerRunner(
                door_server(ForwardAuthDoor(proxy, config.forward_auth).handle, config),
                shutdown_timeout=SHUTDOWN_TIMEOUT), socks["forward_auth"])
            await _serve(stack, web.AppRunner(admin_app(proxy), access_log=None,
                                              shutdown_timeout=SHUTDOWN_TIMEOUT),
                         socks["admin"])
            items = examples(issuer, urls["proxy"], urls["admin"],
                             _explain_command(config_path), urls["forward_auth"])
            out.write(banner(urls, issuer, config_text, config_path, busy, items))
            out.flush()
            await stop.wait()
            print("jwtproxy demo: stopping", file=sys.stderr)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return EXIT_OK


def run_demo(port: int = DEFAULT_PORT, admin_port: int = DEFAULT_ADMIN_PORT) -> int:
    """Serve the demo until SIGINT or SIGTERM; 0 on a clean stop, 1 if it cannot start.

    `port` / `admin_port` fall back to free ports when taken; 0 means any free port."""
    setup_logging("info", "text")
    try:
        return asyncio.run(_demo(port, admin_port, sys.stdout))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        return EXIT_OK
    except (OSError, ConfigError) as err:
        print(f"jwtproxy demo: cannot start: {err}", file=sys.stderr)
        return EXIT_RUNTIME
