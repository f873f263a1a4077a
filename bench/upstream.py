#!/usr/bin/env python3
"""Tiny upstream for bench/run.sh (smoke mode, or UPSTREAM_IMPL=python): aiohttp, one process.

  GET /jwks.json  -> the file given with --jwks
  GET /whoami     -> the X-Auth-Subject request header (to check claim forwarding)
  anything else   -> 200 {"ok":true}\\n  (same body as the nginx upstream)

usage: upstream.py --port 18080 --jwks bench/run/keys/jwks.json   (binds 127.0.0.1 only)
"""
from __future__ import annotations

import argparse

from aiohttp import web

OK = b'{"ok":true}\n'


def make_app(jwks_path: str) -> web.Application:
    async def jwks(_: web.Request) -> web.Response:
        with open(jwks_path, "rb") as f:
            return web.Response(body=f.read(), content_type="application/json")

    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("X-Auth-Subject", "") + "\n")

    async def ok(_: web.Request) -> web.Response:
        return web.Response(body=OK, content_type="application/json")

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    app.router.add_get("/whoami", whoami)
    app.router.add_route("*", "/{tail:.*}", ok)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--jwks", required=True)
    a = ap.parse_args()
    try:
        import uvloop  # optional, as for jwtproxy itself

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(a.jwks), host="127.0.0.1", port=a.port, access_log=None,
                print=None, backlog=4096)


if __name__ == "__main__":
    main()
