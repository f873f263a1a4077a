"""The forward-auth door: a gateway's auth subrequest → the original request's view →
`Gate.decide` → `200` with the route's claim headers, or the proxy door's error answer.

The original request is read, first match wins, from `X-Forwarded-Method` + `-Uri`
(+ `-Host`, `-Proto`: Traefik `forwardAuth`, Caddy `forward_auth`), from `X-Original-Method`
+ `X-Original-URI` (+ `Host`: nginx `auth_request`), or from the auth request itself (Envoy
`ext_authz` HTTP, Istio `CUSTOM`; `forward_auth.path_prefix` removed from its path). Those
headers say which request is being allowed, so they are believed only from
`forward_auth.trusted_proxies`; any other peer is refused `403` whatever it sends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiohttp import web
from multidict import CIMultiDictProxy

from .answers import error_response
from .app import ProxyApp, decision_fields, head_size, peer_address, record_auth
from .config import Config, ForwardAuth, Route
from .errors import HeaderSectionTooLarge, InvalidRequest, JwtProxyError, NotFound
from .gate import Challenge, Decision, RequestView
from .headers import TrustedProxies, claim_header_value, encoded_claims
from .log import AccessLog
from .metrics import NO_ROUTE

log = logging.getLogger("jwtproxy.forward_auth")
access_log = AccessLog()

DOOR: Final = "forward_auth"
# nginx `auth_request` turns any status but 2xx/401/403 into a 500: "no route" is a 403
NO_ROUTE_STATUS: Final = 403
UNTRUSTED_BODY: Final = {"error": "access_denied",
                         "error_description": "peer is not in forward_auth.trusted_proxies"}

Source = Literal["x-forwarded", "x-original", "request"]


@dataclass(frozen=True, slots=True)
class Original:
    """The original request, as the gateway described it."""

    source: Source
    method: str
    host: str
    scheme: str
    target: str  # path and query, as sent by the client

    def view(self, headers: CIMultiDictProxy[str]) -> RequestView:
        path, _, query = self.target.partition("?")
        # scheme and host are already the client's (from the trusted gateway): no peer, so
        # the gate reads no X-Forwarded-* again (DPoP htu, RFC 9728 defaults)
        return RequestView(self.method, self.host, path, query, headers, self.scheme,
                           rewrites_path=False)


def _single(headers: CIMultiDictProxy[str], name: str) -> str | None:
    values = headers.getall(name, [])
    if len(values) > 1:  # two descriptions of one request: believe neither
        raise InvalidRequest(f"more than one {name} header")
    return values[0].strip() if values else None


def reconstruct(
    method: str, host: str, scheme: str, target: str, headers: CIMultiDictProxy[str],
    settings: ForwardAuth,
) -> Original:
    """The original request of one auth subrequest (from a trusted peer).

    Raises `InvalidRequest` for a half, doubled or ambiguous description, and `NotFound`
    for a request-itself path outside `path_prefix`."""
    forwarded = _pair(headers, "X-Forwarded-Method", "X-Forwarded-Uri")
    original = _pair(headers, "X-Original-Method", "X-Original-URI")
    convention = settings.convention
    if convention == "auto":
        if forwarded and original:
            # one of them came from the client: neither says which request is allowed
            raise InvalidRequest("both X-Forwarded-Uri and X-Original-URI describe the request")
        convention = "x-forwarded" if forwarded else "x-original" if original else "request"
    if convention == "x-forwarded":
        forwarded_method, forwarded_uri = _required(forwarded, "X-Forwarded")
        return Original("x-forwarded", forwarded_method,
                        _single(headers, "X-Forwarded-Host") or host,
                        _single(headers, "X-Forwarded-Proto") or scheme, forwarded_uri)
    if convention == "x-original":
        original_method, original_uri = _required(original, "X-Original")
        return Original("x-original", original_method, host, scheme, original_uri)
    prefix = settings.path_prefix
    if prefix:
        rest = target[len(prefix):]
        if not target.startswith(prefix) or (rest and rest[0] not in "/?"):
            raise NotFound(f"auth request path is outside path_prefix {prefix}")
        target = rest if rest.startswith("/") else "/" + rest
    return Original("request", method, host, scheme, target)


def _pair(headers: CIMultiDictProxy[str], method: str, uri: str) -> tuple[str, str] | None:
    """A method and URI header pair; None when neither is there."""
    method_value, uri_value = _single(headers, method), _single(headers, uri)
    if method_value is None and uri_value is None:
        return None
    # no default method: a GET-only public route must not answer for a POST
    if not method_value or not uri_value:
        raise InvalidRequest(f"{method} and {uri} go together")
    return method_value.upper(), uri_value


def _required(pair: tuple[str, str] | None, prefix: str) -> tuple[str, str]:
    if pair is None:
        raise InvalidRequest(f"no {prefix}-Method / {prefix}-URI (forward_auth.convention)")
    return pair


@dataclass(frozen=True, slots=True)
class _Compiled:
    """Built once per config: who may ask, and where."""

    config: Config
    settings: ForwardAuth
    trusted: TrustedProxies


class ForwardAuthDoor:
    """Answers auth subrequests from the `ProxyApp`'s current State (reloads included)."""

    def __init__(self, proxy: ProxyApp, settings: ForwardAuth) -> None:
        self.proxy = proxy
        self.settings = settings  # the listener's; trusted_proxies follow reloads
        self._compiled: _Compiled | None = None

    def _current(self, config: Config) -> _Compiled:
        compiled = self._compiled
        if compiled is None or compiled.config is not config:
            settings = config.forward_auth or self.settings
            compiled = self._compiled = _Compiled(
                config, settings, TrustedProxies(settings.trusted_proxies))
        return compiled

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        state = self.proxy.state
        assert state is not None
        compiled = self._current(state.config)
        decision: Decision | None = None
        original: Original | None = None
        peer = peer_address(request)
        try:
            if peer not in compiled.trusted:
                response: web.StreamResponse = web.json_response(UNTRUSTED_BODY, status=403)
            else:
                if head_size(request) > state.head_limit:
                    raise HeaderSectionTooLarge("request header section too large")
                original = reconstruct(  # no Host is "" (not aiohttp's FQDN lookup)
                    request.method, request.headers.get("Host", ""), request.scheme,
                    request.raw_path, request.headers, compiled.settings)
                decision = await state.gate.decide(original.view(request.headers))
                record_auth(self.proxy.metrics, decision)
                response = self._answer(decision)
        except JwtProxyError as err:
            response = error_answer(err)
        route = decision.route.route.name if decision and decision.route else NO_ROUTE
        self.proxy.metrics.observe_forward_auth(route, response.status)
        if access_log.enabled():
            access_log.write(_access_fields(
                request, peer, original, route, response.status,
                time.perf_counter() - started, decision))
        return response

    @staticmethod
    def _answer(decision: Decision) -> web.Response:
        if decision.error is not None:
            return error_answer(decision.error, decision.challenge)
        assert decision.route is not None
        return web.Response(status=200, headers=claim_headers(
            decision.route.route, decision.claims))


def claim_headers(route: Route, claims: Mapping[str, Any] | None) -> dict[str, str]:
    """The headers of an allowed answer: the route's `forward.claims` and `payload_header`
    (already compiled to name pairs by the config), valued as the proxy door values them;
    none without verified claims."""
    if claims is None:
        return {}
    out: dict[str, str] = {}
    for claim, header in route.forward.claims:
        text = claim_header_value(claims.get(claim))
        if text is not None:
            out[header] = text
    if route.forward.payload_header:
        out[route.forward.payload_header] = encoded_claims(claims)
    return out


def error_answer(err: JwtProxyError, offer: Challenge | None = None) -> web.Response:
    """The proxy door's answer; only "no route" differs (403, body `not_found`)."""
    response = error_response(err, offer)
    if isinstance(err, NotFound):
        response.set_status(NO_ROUTE_STATUS)
    return response


def _access_fields(
    request: web.BaseRequest, peer: str | None, original: Original | None, route: str,
    status: int, elapsed: float, decision: Decision | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "door": DOOR, "route": route, "status": status, "peer": peer,
        "duration_ms": round(elapsed * 1000, 3),
    }
    if original is not None:
        fields.update(source=original.source, method=original.method, host=original.host,
                      path=original.target.partition("?")[0])
    else:
        fields.update(method=request.method, path=request.path)
    # gateways pass the original request's headers (traceparent too) on
    fields.update(decision_fields(request.headers, decision))
    return fields
