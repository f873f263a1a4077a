"""The decision pipeline: match → extract → verify → authorize.

Both the proxy and `jwtproxy explain` run `Gate.decide`; nothing else decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, NamedTuple
from urllib.parse import quote

from multidict import CIMultiDictProxy

from .authorizer import authorize, token_scopes
from .config import Config, Route
from .dpop import BEARER, Presentation
from .errors import (
    Forbidden,
    InvalidRequest,
    InvalidToken,
    JwtProxyError,
    KeysUnavailable,
    MissingToken,
    NotFound,
    WrongAudience,
)
from .extractor import TokenExtractor
from .headers import TrustedProxies
from .matcher import RouteTable, normalize_path, target_refusal
from .resource_metadata import Metadata, client_origin
from .verifier import Step, Trace, Verifier

PATH_SAFE: Final = "/:@!$&'()*+,=~"  # no `;`: a decoded `%3B` must not become a parameter
AUTH_ERRORS: Final = (InvalidToken, Forbidden, KeysUnavailable)
DOCUMENT_METHODS: Final = frozenset({"GET", "HEAD"})


class RequestView(NamedTuple):
    """The request a door asks about. `rewrites_path`: the door forwards the path it was
    matched on (the proxy door); a door that cannot (forward-auth: the gateway sends the
    client's target on) gets a path that normalising would change refused instead."""

    method: str
    host: str
    raw_path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    scheme: str = "http"  # of the connection; X-Forwarded-Proto counts only from a proxy
    peer: str | None = None
    rewrites_path: bool = True  # False: a door that forwards the target as sent
    # (a NamedTuple, not a frozen dataclass: built for every request, in a third of the time)


@dataclass(frozen=True, slots=True)
class Challenge:
    """What the `WWW-Authenticate` of a refused request offers: Bearer and/or DPoP (with
    its algs), the scheme the client used first, and RFC 9728's `resource_metadata`."""

    bearer: bool = True
    dpop_algs: str | None = None  # of the issuers that accept proofs
    advertise_dpop: bool = False  # an issuer has a `dpop:` setting that accepts proofs
    used: str = "Bearer"
    resource_metadata: str | None = None


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route as the gate decides it; each door compiles its own output (the proxy's
    header plan, forward-auth's claim headers, the Lambda context) from `route`."""

    route: Route


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
    challenge: Challenge | None = None
    document: dict[str, Any] | None = None  # an RFC 9728 document to answer with

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
        self.compiled = {route.name: CompiledRoute(route) for route in config.routes}
        self.trusted = trusted
        self.metadata = {
            route.name: Metadata(route, config.issuers, config.tokens)
            for route in config.routes if route.resource_metadata and route.auth}
        # the documents are matched like routes (host, GET/HEAD, exact path), before them
        self.documents = RouteTable([
            replace(route, match=replace(route.match, path=meta.path, path_prefix=None,
                                         methods=DOCUMENT_METHODS))
            for route in config.routes if (meta := self.metadata.get(route.name))])
        self.challenges = {route.name: _challenge(config, route) for route in config.routes}

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
        if self.metadata and (
                document := self.documents.match(view.method, view.host, normalized.path)):
            meta = self.metadata[document.name]
            _note(steps, "route", True, f"RFC 9728 metadata of route {document.name}")
            found = meta.document(self._origin(view))
            if found is None:
                return Decision(None, InvalidRequest("request host is not a valid host"),
                                steps=steps)
            return Decision(self.compiled[document.name], document=found, steps=steps)
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
                decision.challenge = self._challenge(route, view, False, err)
            return decision
        if token is None:
            _note(steps, "token", auth.mode != "required", f"no token (mode {auth.mode})")
            decision.auth_reason = "missing"
            # report_only counts what `required` would deny; optional lets it through
            decision.auth_denied = auth.mode != "optional"
            if auth.mode == "required":
                decision.error = MissingToken("no token")
                decision.challenge = self._challenge(route, view, False, decision.error)
            return decision
        if steps is not None:
            steps.append(Step("token", True, f"found ({len(token)} bytes)"))
        dpop = self.extractor.presented_as_dpop(view.headers)
        route_meta = self.metadata.get(route.name)
        try:
            presentation = Presentation(
                "dpop", tuple(view.headers.getall("DPoP", [])), view.method,
                (self._origin(view) or "") + view.raw_path) if dpop else BEARER
            verified = await self.verifier.verify(token, auth.issuers, steps, presentation)
            decision.issuer, decision.cache_hit = verified.issuer, verified.cache_hit
            if route_meta is not None:
                _check_resource(route_meta.resource_for(self._origin(view)), verified.claims, steps)
            authorize(auth, verified.claims)
        except AUTH_ERRORS as err:
            _note(steps, err.reason, False, err.description)
            decision.auth_reason, decision.auth_denied = err.reason, True
            decision.issuer = err.issuer or decision.issuer
            if err.cache_hit is not None:
                decision.cache_hit = err.cache_hit
            if auth.mode != "report_only":
                decision.error = err
                decision.challenge = self._challenge(route, view, dpop, err)
            return decision
        if steps is not None and (auth.scopes or auth.any_scopes or auth.claims):
            scopes = " ".join(sorted(token_scopes(verified.claims))) or "(none)"
            steps.append(Step("authorize", True, f"scopes present: {scopes}"))
        decision.claims, decision.auth_reason = verified.claims, "ok"
        return decision

    def _origin(self, view: RequestView) -> str | None:
        return client_origin(view.scheme, view.host, view.headers, view.peer in self.trusted)

    def _challenge(
        self, route: Route, view: RequestView, dpop: bool, err: JwtProxyError,
    ) -> Challenge:
        """The route's compiled challenge, with the scheme used and, on a 401 of a route
        with metadata, RFC 9728 §5.1's `resource_metadata`."""
        challenge = self.challenges[route.name]
        used = ("DPoP" if dpop or err.error == "invalid_dpop_proof" or not challenge.bearer
                else "Bearer")
        meta = self.metadata.get(route.name)
        url = meta.url(self._origin(view)) if meta is not None and err.status == 401 else None
        return Challenge(challenge.bearer, challenge.dpop_algs, challenge.advertise_dpop, used,
                         url)  # not dataclasses.replace(): ~2 µs per refusal


def _challenge(config: Config, route: Route) -> Challenge:
    if route.auth is None:
        return Challenge()
    issuers = [config.issuers[name] for name in route.auth.issuers]
    used = [issuer.dpop_settings for issuer in issuers]
    algs = " ".join(dict.fromkeys(
        alg for dpop in used if dpop.mode != "off" for alg in dpop.algorithms))
    return Challenge(bearer=any(dpop.mode != "required" for dpop in used),
                     dpop_algs=algs or None,
                     advertise_dpop=any(issuer.dpop is not None and issuer.dpop.mode != "off"
                                        for issuer in issuers))


def _check_resource(resource: str | None, claims: Mapping[str, Any], steps: Trace | None) -> None:
    """RFC 8707 / RFC 9728: a route with metadata takes only tokens meant for it."""
    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    ok = resource is not None and resource in values
    _note(steps, "resource", ok, f"aud {aud!r} vs resource {resource!r}")
    if not ok:
        raise WrongAudience("token audience does not include this resource")


def _note(steps: Trace | None, name: str, ok: bool, detail: str) -> None:
    if steps is not None:
        steps.append(Step(name, ok, detail))
