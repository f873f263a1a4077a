"""One serving process: start, reload on SIGHUP (or file change with --watch), drain on
SIGTERM/SIGINT within `graceful_timeout`, exit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
from pathlib import Path
from typing import Final

from aiohttp import web

from .app import ProxyApp
from .config import Config
from .errors import ConfigError
from .forward_auth import ForwardAuthDoor
from .loader import load_file
from .metrics import Metrics
from .server import admin_app, door_server, proxy_server, server_ssl_context

log = logging.getLogger("jwtproxy.serve")

WATCH_INTERVAL: Final = 1.0
CUT_GRACE: Final = 0.05  # seconds a cut request's task gets to unwind after its cancel


async def serve(config_path: Path, config: Config, watch: bool = False) -> None:
    # The imported modules live as long as the process: the collector's full passes need
    # not walk their ~48k objects (~14 ms a pass, a pause that lands in the latency tail
    # when cache churn triggers them). Frozen before any config state is built, so the
    # state an old config leaves after a reload is still collected.
    gc.collect()
    gc.freeze()
    metrics = Metrics()
    proxy = ProxyApp(config, metrics)
    await proxy.start()
    reuse_port = config.server.workers > 1
    # the drains are ours (`_drain`): aiohttp's own waits up to twice its shutdown_timeout
    proxy_runner = web.ServerRunner(proxy_server(proxy, config), shutdown_timeout=CUT_GRACE)
    admin_runner = web.AppRunner(admin_app(proxy), access_log=None, shutdown_timeout=1.0)
    forward_auth = config.forward_auth
    forward_runner = None if forward_auth is None else web.ServerRunner(
        door_server(ForwardAuthDoor(proxy, forward_auth).handle, config),
        shutdown_timeout=CUT_GRACE)
    await proxy_runner.setup()
    await admin_runner.setup()
    if forward_runner is not None:
        await forward_runner.setup()
    tls_context = server_ssl_context(config)
    stop = asyncio.Event()
    reloading = asyncio.Lock()
    loop = asyncio.get_running_loop()

    async def reload(reason: str) -> None:
        async with reloading:
            try:
                new = load_file(config_path)
            except ConfigError as err:
                metrics.config_reloads.labels("error").inc()
                log.error("config_reload_refused", extra={"reason": reason,
                                                          "problems": err.problems})
                return
            old = proxy.state.config if proxy.state else None
            if old is not None and (new.server != old.server or new.admin != old.admin or (
                    new.forward_auth and new.forward_auth.listen) != (
                    old.forward_auth and old.forward_auth.listen)):
                log.warning("config_reload_partial", extra={
                    "detail": "server, admin and forward_auth.listen settings take effect on "
                              "restart"})
            if tls_context is not None and new.server.tls is not None:
                try:  # new handshakes use the re-read certificate; the listener stays
                    tls_context.load_cert_chain(new.server.tls.cert_file, new.server.tls.key_file)
                except (OSError, ssl.SSLError) as err:
                    metrics.config_reloads.labels("error").inc()
                    log.error("config_reload_refused", extra={
                        "reason": reason, "problems": [f"server.tls: {err}"]})
                    return
            await proxy.reload(new)
            metrics.config_reloads.labels("ok").inc()
            log.info("config_reloaded", extra={"reason": reason, "routes": len(new.routes)})

    drain_deadline = float("inf")

    def on_stop() -> None:
        nonlocal drain_deadline
        if not stop.is_set():  # the clock starts at the first signal
            drain_deadline = loop.time() + config.server.graceful_timeout
            proxy.draining = True  # /readyz answers 503 from now on
            stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_stop)
    loop.add_signal_handler(signal.SIGINT, on_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload("SIGHUP")))
    watcher = asyncio.create_task(_watch(config_path, reload)) if watch else None
    try:
        listen, admin = config.server.listen, config.admin.listen
        if listen is not None:  # `server.listen: null`: the proxy door is off
            await web.TCPSite(proxy_runner, listen.host, listen.port,
                              ssl_context=tls_context,
                              reuse_port=reuse_port, backlog=1024).start()
        if forward_runner is not None and forward_auth is not None:
            await web.TCPSite(forward_runner, forward_auth.listen.host, forward_auth.listen.port,
                              reuse_port=reuse_port, backlog=1024).start()
        await web.TCPSite(admin_runner, admin.host, admin.port, reuse_port=reuse_port).start()
        log.info("listening", extra={
            "proxy": str(listen) if listen else None, "admin": str(admin),
            "forward_auth": str(forward_auth.listen) if forward_auth else None,
            "routes": len(config.routes)})
        await stop.wait()
        log.info("draining", extra={"graceful_timeout": config.server.graceful_timeout})
    finally:
        if watcher is not None:
            watcher.cancel()
        if not stop.is_set():
            drain_deadline = loop.time()  # an error exit, no signal: cut at once
        await asyncio.gather(*(_drain(runner, drain_deadline)
                               for runner in (proxy_runner, forward_runner) if runner))
        await proxy_runner.cleanup()
        if forward_runner is not None:
            await forward_runner.cleanup()
        await admin_runner.cleanup()
        await proxy.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    log.info("stopped")


async def _drain(runner: web.ServerRunner, deadline: float) -> None:
    """Stop accepting, close idle connections, give in-flight requests until `deadline`
    (`graceful_timeout` after the signal), then cut what is left."""
    for site in list(runner.sites):
        await site.stop()
    server = runner.server
    if server is None:
        return
    server.pre_shutdown()  # idle keep-alive connections close now, busy ones after a response
    connections = server.connections
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.gather(*(conn.shutdown(None) for conn in connections))
    except TimeoutError:
        left = server.connections
        log.warning("drain_cut", extra={"connections": len(left)})
        # a tiny timeout: RequestHandler.shutdown then cancels the handler and closes
        await asyncio.gather(*(conn.shutdown(CUT_GRACE) for conn in left))


async def _watch(path: Path, reload: object) -> None:
    """Poll the file's mtime: portable, and cheap at one stat per second."""
    assert callable(reload)

    def stamp() -> tuple[float, int] | None:
        try:
            info = path.stat()
        except OSError:
            return None
        return info.st_mtime, info.st_size

    last = stamp()
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        current = stamp()
        if current is not None and current != last:
            last = current
            await reload("watch")
