"""Real HTTP servers the tests control: a JWKS endpoint and an echo upstream."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class JwksEndpoint:
    """Serves `document` at /jwks.json; `status`, `body`, `delay` inject faults."""

    document: dict[str, Any]
    status: int = 200
    body: bytes | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)  # fault injection: a slow issuer
        body = self.body if self.body is not None else json.dumps(self.document).encode()
        return web.Response(status=self.status, body=body, headers=self.headers,
                            content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        return app


class HeaderLookup:
    """Case-insensitive lookups over a message's header list, as it was on the wire."""

    headers: list[tuple[str, str]]

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        """The first value of `name`, if any."""
        values = self.header_all(name)
        return values[0] if values else None


@dataclass
class Received(HeaderLookup):
    method: str
    path_qs: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class EchoUpstream:
    """Records every request exactly as received and answers with a JSON summary."""

    received: list[Received] = field(default_factory=list)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.content.read()  # no client_max_size: bodies can be large
        entry = Received(request.method, request.raw_path, _raw_headers(request),
                         body)
        self.received.append(entry)
        return web.json_response({"path": request.raw_path, "bytes": len(body)},
                                 headers={"X-Upstream": "echo"})


def _raw_headers(request: web.BaseRequest) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
