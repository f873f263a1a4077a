"""The decision pipeline: match → extract → verify → authorize.

Both the proxy and `jwtproxy explain` run `Gate.decide`; nothing else decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from multidict import CIMultiDictProxy

from .authorizer import authorize, token_scopes
from .config import Config, Route
from .errors import (
    Forbidden,
    InvalidRequest,
    InvalidToken,
    JwtProxyError,
    KeysUnavailable,
    MissingToken,
    NotFound,
)
from .extractor import TokenExtractor
from .headers import HeaderPlan, TrustedProxies
from .matcher import RouteTable, normalize_path, target_refusal
from .verifier import Step, Trace, Verifier

PATH_SAFE: Final = "/:@!$&'()*+,=~"  # no `;`: a decoded `%3B` must not become a parameter
AUTH_ERRORS: Final = (InvalidToken, Forbidden, KeysUnavailable)


@dataclass(frozen=True, slots=True)
class RequestView:
    """The request a door asks about. `rewrites_path`: the door forwards the path it was
    matched on (the proxy door); a door that cannot (forward-auth: the gateway sends the
    client's target on) gets a path that normalising would change refused instead."""

    method: str
    host: str
    raw_path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    rewrites_path: bool = True


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    route: Route
    plan: HeaderPlan


@dataclass(slots=True)
class Decision:
    """What to do with a request. `error` set = answer it with the error; `auth_reason`
    is None when no authentication applied (public route, preflight, 404)."""

    route: CompiledRoute | None
    error: JwtProxyError | None = None
    issuer: str | None = None
    claims: Mapping[str, Any] | None = None
    auth_reason: str | None = None
    auth_denied: bool = False
    cache_hit: bool | None = None
    upstream_path: str = "/"
    steps: Trace | None = None

    @property
    def allowed(self) -> bool:
        return self.error is None

    @property
    def status(self) -> int:
        return 200 if self.error is None else self.error.status


class Gate:
    """Built once per config; `decide` constructs nothing but the Decision."""

    def __init__(self, config: Config, verifier: Verifier) -> None:
        self.config = config
        self.verifier = verifier
        self.table = RouteTable(config.routes)
        self.extractor = TokenExtractor(config.tokens, config.server.max_token_bytes)
        trusted = TrustedProxies(config.server.trusted_proxies)
        stripped = config.claim_header_names()
        self.compiled = {
            route.name: CompiledRoute(route, HeaderPlan(route, stripped, trusted))
            for route in config.routes
        }

    async def decide(self, view: RequestView, trace: bool = False) -> Decision:
        steps: Trace | None = [] if trace else None
        refusal = target_refusal(view.raw_path, view.query_string)
        if refusal is not None:
            _note(steps, "request", False, f"request target {view.raw_path[:80]!r}: {refusal}")
            return Decision(None, InvalidRequest(refusal), steps=steps)
        normalized = normalize_path(view.raw_path)
        if normalized.changed and not view.rewrites_path:
            # the upstream would get the path as sent (`/admin/%2e%2e/public` to a router
            # that does not resolve it) while the route was chosen for the normalised one
            detail = "path must be sent normalised: this door cannot forward the matched one"
            _note(steps, "request", False, f"request target {view.raw_path[:80]!r}: {detail}")
            return Decision(None, InvalidRequest(detail), steps=steps)
        route = self.table.match(view.method, view.host, normalized.path)
        if steps is not None:
            steps.append(Step("route", route is not None,
                              f"{view.method} {view.host}{normalized.path} -> "
                              + (route.name if route else "no route matches")))
        if route is None:
            return Decision(None, NotFound("no route matches"), steps=steps)
        decision = Decision(self.compiled[route.name], steps=steps)
        decision.upstream_path = (
            quote(normalized.path, safe=PATH_SAFE) if normalized.changed else view.raw_path)
        auth = route.auth
        if auth is None:
            _note(steps, "auth", True, "route is public (auth: none)")
            return decision
        if (route.cors_preflight == "pass" and view.method == "OPTIONS"
                and "Origin" in view.headers
                and "Access-Control-Request-Method" in view.headers):
            _note(steps, "auth", True, "CORS preflight passes unauthenticated")
            return decision
        try:
            token = self.extractor.extract(view.headers, view.query_string)
        except JwtProxyError as err:
            _note(steps, "token", False, err.description)
            decision.auth_reason, decision.auth_denied = err.reason, True
            if auth.mode != "report_only":
                decision.error = err
            return decision
        if token is None:
            _note(steps, "token", auth.mode != "required", f"no token (mode {auth.mode})")
            decision.auth_reason = "missing"
            # report_only counts what `required` would deny; optional lets it through
            decision.auth_denied = auth.mode != "optional"
            if auth.mode == "required":
                decision.error = MissingToken("no token")
            return decision
        _note(steps, "token", True, f"found ({len(token)} bytes)")
        try:
            verified = await self.verifier.verify(token, auth.issuers, steps)
            decision.issuer, decision.cache_hit = verified.issuer, verified.cache_hit
            authorize(auth, verified.claims)
        except AUTH_ERRORS as err:
            _note(steps, err.reason, False, err.description)
            decision.auth_reason, decision.auth_denied = err.reason, True
            decision.issuer = err.issuer or decision.issuer
            if err.cache_hit is not None:
                decision.cache_hit = err.cache_hit
            if auth.mode != "report_only":
                decision.error = err
            return decision
        if steps is not None and (auth.scopes or auth.any_scopes or auth.claims):
            scopes = " ".join(sorted(token_scopes(verified.claims))) or "(none)"
            steps.append(Step("authorize", True, f"scopes present: {scopes}"))
        decision.claims, decision.auth_reason = verified.claims, "ok"
        return decision


def _note(steps: Trace | None, name: str, ok: bool, detail: str) -> None:
    if steps is not None:
        steps.append(Step(name, ok, detail))
