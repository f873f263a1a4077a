"""A proxied WebSocket ends with its token: closed 1008 at `exp` or when an entry for it
reaches the revocation list. The token may come as the `bearer.<token>` subprotocol
(browsers cannot set Authorization on a WebSocket); it is never forwarded nor echoed.
Driven by aiohttp's client and by a real headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import AUDIENCE, ISSUER, Proxy, ProxyFactory, base_config
from tests.servers import JwksEndpoint
from tests.services import ensure_debian_package
from tests.tokens import KeyRing, mint

BOUND = 30.0  # generous: what should take a few seconds



@pytest.fixture
async def ws_proxy(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], ws_upstream: Any, tmp_path: Path
) -> Proxy:
    config = base_config(jwks[1], ws_upstream[0], revocation={
        "file": str(tmp_path / "revoked.yaml")})
    config["issuers"]["main"]["leeway"] = 0
    config["tokens"] = [{"header": "Authorization"}, {"websocket_protocol": "bearer"}]
    return await make_proxy(config)


def token(keys: KeyRing, lifetime: float, **claims: Any) -> str:
    return mint(keys.rsa, {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time() + lifetime),
                           **claims})


async def test_closed_1008_at_exp_token_subprotocol_not_forwarded(
    ws_proxy: Proxy, keys: KeyRing, ws_upstream: Any
) -> None:
    tok = token(keys, 3)
    started = time.monotonic()
    async with ws_proxy.client.ws_connect(
        "/socket", protocols=[f"bearer.{tok}", "chat"]) as ws:
        assert ws.protocol == "chat", "the other subprotocol is the answer"
        await ws.send_str("hi")
        assert (await ws.receive()).data == "echo:hi"
        closing = await ws.receive(timeout=BOUND)
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert (closing.data, closing.extra) == (1008, "token expired")
    assert time.monotonic() - started >= 1.5, "not before exp"
    seen = ws_upstream[1][0]
    assert seen["Sec-WebSocket-Protocol"] == "chat"
    assert all(tok not in value for value in seen.values())
    assert await ws_proxy.metric("jwtproxy_auth_total", route="api", result="allowed",
                                 reason="ok") == 1


async def test_closed_1008_when_revoked_mid_connection(
    ws_proxy: Proxy, keys: KeyRing, tmp_path: Path
) -> None:
    tok = token(keys, 3600, sub="alice")
    async with ws_proxy.client.ws_connect(
        "/socket", headers={"Authorization": f"Bearer {tok}"}) as ws:
        await ws.send_str("one")
        assert (await ws.receive()).data == "echo:one"
        (tmp_path / "revoked.yaml").write_text(
            yaml.safe_dump([{"sub": "alice", "until": time.time() + 600}]))
        closing = await ws.receive(timeout=BOUND)
        assert (closing.type, closing.data, closing.extra) == (
            aiohttp.WSMsgType.CLOSE, 1008, "token revoked")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await ws_proxy.client.ws_connect("/socket", protocols=[f"bearer.{tok}", "chat"])
    assert refused.value.status == 401


@pytest.mark.parametrize(("protocols", "headers", "expected"), [
    (["bearer.a.b.c", "bearer.d.e.f", "chat"], {}, 400),  # two tokens
    (["bearer.TOKEN", "chat"], {"Authorization": "Bearer TOKEN"}, 400),  # two places
    (["bearer.", "chat"], {}, 401),  # empty
    (["bearer.not-a-jwt", "chat"], {}, 401),
    (["chat"], {}, 401),  # none
])
async def test_bad_token_subprotocols_are_refused(
    ws_proxy: Proxy, keys: KeyRing, protocols: list[str], headers: dict[str, str],
    expected: int, ws_upstream: Any,
) -> None:
    tok = token(keys, 60)
    protocols = [p.replace("TOKEN", tok) for p in protocols]
    headers = {k: v.replace("TOKEN", tok) for k, v in headers.items()}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await ws_proxy.client.ws_connect("/socket", protocols=protocols, headers=headers)
    assert refused.value.status == expected
    assert ws_upstream[1] == []


# -- a real browser ---------------------------------------------------------------------

PAGE = """<!doctype html><meta charset="utf-8"><title>ws</title><script>
const params = new URLSearchParams(location.hash.slice(1));
const log = [];
const ws = new WebSocket(params.get("url"), ["bearer." + params.get("token"), "chat"]);
ws.onopen = () => { log.push("open:" + ws.protocol); ws.send("hello"); };
ws.onmessage = (event) => {
  log.push("message:" + event.data);
  if (params.get("after") && log.length === 2) fetch("/opened", {method: "POST"});
};
ws.onclose = (event) => fetch("/report", {method: "POST", body: JSON.stringify(
  {log, code: event.code, reason: event.reason})});
</script>"""


@pytest.fixture(scope="session")
def chromium() -> str:
    found = ensure_debian_package("chromium", "chromium")
    if found is None:
        pytest.skip("chromium is not installed and apt-get could not install it "
                    "(Debian package `chromium`)")
    return found


class Browser:
    """A page server for the browser's reports, and one headless Chromium per page."""

    def __init__(self, binary: str, aiohttp_server: Any) -> None:
        self.binary = binary
        self.aiohttp_server = aiohttp_server
        self.reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.opened = asyncio.Event()
        self.base = ""

    async def start(self) -> None:
        async def page(_: web.Request) -> web.Response:
            return web.Response(text=PAGE, content_type="text/html")

        async def report(request: web.Request) -> web.Response:
            await self.reports.put(json.loads(await request.text()))
            return web.Response()

        async def opened(_: web.Request) -> web.Response:
            self.opened.set()
            return web.Response()

        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_post("/report", report)
        app.router.add_post("/opened", opened)
        server = await self.aiohttp_server(app)
        self.base = f"http://127.0.0.1:{server.port}/"

    @contextlib.asynccontextmanager
    async def open(self, fragment: str) -> AsyncIterator[subprocess.Popen[bytes]]:
        # the profile may still be written to by a dying renderer: its removal is best effort
        with tempfile.TemporaryDirectory(prefix="jwtproxy-chromium-",
                                         ignore_cleanup_errors=True) as profile:
            process = subprocess.Popen(
                [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--remote-debugging-port=0", self.base + "#" + fragment],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)  # its own process group: its children go with it
            try:
                yield process
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # the group this started
                process.wait(timeout=30)


@pytest.fixture
async def browser(chromium: str, aiohttp_server: Any) -> Browser:
    found = Browser(chromium, aiohttp_server)
    await found.start()
    return found


def fragment(proxy: Proxy, tok: str, **extra: str) -> str:
    url = f"ws://127.0.0.1:{proxy.client.server.port}/socket"
    return "&".join(f"{k}={v}" for k, v in {"url": url, "token": tok, **extra}.items())


async def test_chromium_websocket_with_bearer_subprotocol_closed_at_exp(
    ws_proxy: Proxy, keys: KeyRing, browser: Browser, ws_upstream: Any
) -> None:
    tok = token(keys, 4)
    async with browser.open(fragment(ws_proxy, tok)):
        report = await asyncio.wait_for(browser.reports.get(), BOUND * 2)
    assert report == {"log": ["open:chat", "message:echo:hello"], "code": 1008,
                      "reason": "token expired"}
    seen = ws_upstream[1][0]
    assert seen["Sec-WebSocket-Protocol"] == "chat"
    assert all(tok not in value for value in seen.values())


async def test_chromium_websocket_closed_when_revoked(
    ws_proxy: Proxy, keys: KeyRing, browser: Browser, tmp_path: Path
) -> None:
    tok = token(keys, 3600, jti="browser-1")
    async with browser.open(fragment(ws_proxy, tok, after="1")):
        await asyncio.wait_for(browser.opened.wait(), BOUND * 2)
        (tmp_path / "revoked.yaml").write_text(
            yaml.safe_dump([{"jti": "browser-1", "until": time.time() + 600}]))
        report = await asyncio.wait_for(browser.reports.get(), BOUND)
    assert report == {"log": ["open:chat", "message:echo:hello"], "code": 1008,
                      "reason": "token revoked"}
