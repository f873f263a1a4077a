"""`jwtproxy explain`: run `Gate.decide` for one request and print every step.

The gate, verifier and key stores are the server's own; only the words are added here:
each step's detail is restated with the values that matter (times as dates, audiences
and scopes expected vs present), and the answer is built by `app.error_response`, so the
`WWW-Authenticate` header and body shown are the ones the proxy would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TextIO
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from .app import error_response
from .authorizer import claim_value, token_scopes
from .config import Config, Route
from .errors import JwtProxyError, KeysUnavailable
from .gate import Decision, Gate, RequestView
from .jwks import KeySet, KeyStore, build_stores
from .jws import parse
from .verifier import Step, Verifier

EXIT_ALLOW: Final = 0
EXIT_DENY: Final = 1
FETCH_TIMEOUT: Final = 30.0
SHOWN_CLAIMS: Final = ("iss", "sub", "aud", "client_id", "scope", "scp", "token_use", "exp")


class OfflineStore(KeyStore):
    """`--offline`: the keys of a remote issuer are never fetched."""

    async def current(self) -> KeySet:
        raise KeysUnavailable(f"keys of issuer {self.issuer.name} are unavailable")

    async def refresh_for_unknown_kid(self) -> KeySet:
        return await self.current()


@dataclass(slots=True)
class Report:
    """Everything `explain` prints; `as_dict` is the `--json` form."""

    method: str
    host: str
    path: str
    token_location: str | None
    claims: Mapping[str, Any] | None
    decision: Decision
    steps: list[Step]
    notes: list[str] = field(default_factory=list)
    www_authenticate: str | None = None
    retry_after: str | None = None
    body: dict[str, Any] | None = None
    upstream_url: str | None = None
    forward_headers: dict[str, str] = field(default_factory=dict)
    not_forwarded: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        route = self.decision.route
        return {
            "request": {"method": self.method, "host": self.host, "path": self.path},
            "route": route.route.name if route else None,
            "issuer": self.decision.issuer,
            "token_location": self.token_location,
            "claims": dict(self.claims) if self.claims is not None else None,
            "claims_verified": self.decision.claims is not None,
            "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in self.steps],
            "allowed": self.decision.allowed,
            "status": self.decision.status,
            "reason": self.decision.auth_reason if self.decision.error is None
            else self.decision.error.reason,
            "www_authenticate": self.www_authenticate,
            "retry_after": self.retry_after,
            "body": self.body,
            "upstream_url": self.upstream_url,
            "forward_headers": self.forward_headers,
            "not_forwarded": self.not_forwarded,
            "notes": self.notes,
        }


async def explain(
    config: Config, method: str, host: str, path: str, token: str, *,
    as_json: bool = False, offline: bool = False, out: TextIO | None = None,
) -> int:
    """Print the decision for one request; 0 if it would be allowed, 1 if denied."""
    out = out or sys.stdout
    report = await build_report(config, method, host, path, token, offline=offline)
    if as_json:
        out.write(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    else:
        out.write(render(report, _marks(out)))
    out.flush()
    return EXIT_ALLOW if report.decision.allowed else EXIT_DENY


async def build_report(
    config: Config, method: str, host: str, path: str, token: str, *, offline: bool = False,
) -> Report:
    """Decide with the server's Gate (fetching keys unless `offline`) and explain it."""
    method = method.upper()
    raw_path, _, query = path.partition("?")
    view, location = _view(config, method, host, raw_path, query, token)
    with _quiet_logs():
        session = None if offline else aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
            cookie_jar=aiohttp.DummyCookieJar())
        stores = _stores(config, session)
        try:
            now = time.time()
            decision = await Gate(config, Verifier(config.issuers, stores)).decide(
                view, trace=True)
        finally:
            await asyncio.gather(*(store.close() for store in stores.values()))
            if session is not None:
                await session.close()
    claims = decision.claims if decision.claims is not None else _unverified_claims(token)
    words = _Words(config, view, decision, claims, token, stores, now, location)
    report = Report(method, host, path, location if token else None, claims, decision,
                    words.steps())
    words.notes(report)
    _answer(report, view, token)
    return report


def _stores(config: Config, session: aiohttp.ClientSession | None) -> dict[str, KeyStore]:
    if session is not None:
        return build_stores(config.issuers.values(), session)
    return {
        name: (OfflineStore(issuer, None)
               if issuer.secret is None and issuer.jwks_file is None
               else KeyStore(issuer, None))
        for name, issuer in config.issuers.items()
    }


def _view(
    config: Config, method: str, host: str, raw_path: str, query: str, token: str,
) -> tuple[RequestView, str]:
    """The request as the proxy would see it, with the token where the config looks first."""
    headers: CIMultiDict[str] = CIMultiDict(Host=host)
    source = config.tokens[0]
    if source.kind == "header":
        location = f"{source.name} header"
        if token:
            headers[source.name] = f"Bearer {token}"
    elif source.kind == "cookie":
        location = f"cookie {source.name}"
        if token:
            headers["Cookie"] = f"{source.name}={token}"
    else:
        location = f"query parameter {source.name}"
        if token:
            query = f"{query}&" if query else ""
            query += f"{quote(source.name)}={quote(token, safe='')}"
    return RequestView(method, host, raw_path, query, CIMultiDictProxy(headers)), location


def _unverified_claims(token: str) -> Mapping[str, Any] | None:
    if not token:
        return None
    try:
        return parse(token).claims
    except JwtProxyError:
        return None


def _unverified_header(token: str) -> Mapping[str, Any]:
    try:
        return parse(token).header
    except JwtProxyError:
        return {}


def _answer(report: Report, view: RequestView, token: str) -> None:
    decision = report.decision
    if decision.error is not None:
        response = error_response(decision.error)
        report.www_authenticate = response.headers.get("WWW-Authenticate")
        report.retry_after = response.headers.get("Retry-After")
        report.body = json.loads(response.text or "{}")
        return
    if decision.route is None:
        return
    route = decision.route.route
    query = view.query_string  # forwarded as is; the token itself is never printed
    if token:
        query = query.replace(quote(token, safe=""), "<token>")
    report.upstream_url = route.upstream + decision.upstream_path + (f"?{query}" if query else "")
    plan = decision.route.plan
    wanted = [header for _, header in plan.claims]
    if plan.payload_header:
        wanted.append(plan.payload_header)
    sent = plan.request_headers(view.headers, decision.claims, None, "http", "explain")
    for name in wanted:
        if name in sent:
            report.forward_headers[name] = sent[name]
    for claim, header in plan.claims:
        if header in sent:
            continue
        if decision.claims is None:
            report.not_forwarded[header] = "no verified token, so no claims"
        elif claim not in decision.claims:
            report.not_forwarded[header] = f"the token has no {claim} claim"
        else:
            report.not_forwarded[header] = f"claim {claim} is not a header-safe value"


class _Words:
    """Restates each step of the trace with the values an operator needs."""

    def __init__(
        self, config: Config, view: RequestView, decision: Decision,
        claims: Mapping[str, Any] | None, token: str, stores: Mapping[str, KeyStore],
        now: float, location: str,
    ) -> None:
        self.config, self.view, self.decision = config, view, decision
        self.claims: Mapping[str, Any] = claims or {}
        self.header = _unverified_header(token) if token else {}
        self.stores, self.now, self.location, self.token = stores, now, location, token
        self.route = decision.route.route if decision.route else None
        self.issuer = config.issuers.get(decision.issuer) if decision.issuer else None

    def steps(self) -> list[Step]:
        trace = list(self.decision.steps or [])
        if not trace and self.decision.error is not None:
            trace = [Step("request", False, self.decision.error.description)]
        # The verifier records the failing check, then the gate records the error it
        # raised: keep the check (it has the values), the error shows in the result.
        if len(trace) >= 2 and not trace[-1].ok and not trace[-2].ok:
            trace.pop()
        handlers: dict[str, Callable[[Step], str | None]] = {
            "route": self._route, "token": self._token, "issuer": self._issuer,
            "alg": self._alg, "unknown_kid": self._unknown_kid, "malformed": self._malformed,
            "keys_unavailable": self._keys_unavailable, "bad_signature": self._bad_signature,
            "typ": self._typ, "exp": self._exp, "nbf": self._not_before,
            "iat": self._not_before, "audience": self._audience, "token_use": self._token_use,
            "authorize": self._authorize, "scope": self._scope, "claim": self._claim,
        }
        out = []
        for step in trace:
            handler = handlers.get(step.name)
            detail = handler(step) if handler else None
            out.append(Step(step.name, step.ok, detail or step.detail))
        return out

    def notes(self, report: Report) -> None:
        decision = self.decision
        if decision.error is None and decision.auth_denied:
            report.notes.append(f"auth mode report_only: the proxy would forward this request "
                                f"and count it as denied ({decision.auth_reason})")
        if self.issuer is not None and not self.issuer.audiences:
            report.notes.append(f"issuer {self.issuer.name} has no `audiences`: tokens meant "
                                "for any other API of this issuer are accepted too")

    # -- one method per step name; None keeps the gate's own wording ------------------

    def _route(self, step: Step) -> str | None:
        request = step.detail.split(" -> ")[0]
        if self.route is not None:
            return f"{request} -> route {self.route.name} ({_describe(self.route)})"
        routes = "; ".join(f"{r.name}: {_describe(r)}" for r in self.config.routes)
        return f"no route matches {request} (routes, first match wins: {routes})"

    def _token(self, step: Step) -> str | None:
        if step.detail.startswith("found"):
            return f"found in the {self.location} ({len(self.token)} bytes)"
        if not step.detail.startswith("no token"):
            return None
        sources = ", ".join(f"{s.kind} {s.name}" for s in self.config.tokens)
        mode = self.route.auth.mode if self.route and self.route.auth else "required"
        verdict = ("the route requires one" if mode == "required"
                   else f"auth mode {mode}: the request goes on without claims")
        return f"no token (looked in: {sources}); {verdict}"

    def _issuer(self, step: Step) -> str | None:
        if step.ok:
            return None
        iss = self.claims.get("iss")
        allowed = self.route.auth.issuers if self.route and self.route.auth else ()
        expected = ", ".join(f"{n} ({self.config.issuers[n].issuer!r})" for n in allowed)
        owners = [n for n, i in self.config.issuers.items() if i.issuer == iss]
        if owners:
            return (f"token iss {iss!r} is issuer {owners[0]}, which route "
                    f"{self.route.name if self.route else '?'} does not accept; it accepts "
                    f"{expected}")
        hint = ""
        if isinstance(iss, str) and any(
                self.config.issuers[n].issuer.rstrip("/") == iss.rstrip("/") for n in allowed):
            hint = " (a trailing slash differs: iss must match exactly)"
        return f"token iss {iss!r} is not one of {expected}{hint}"

    def _alg(self, step: Step) -> str | None:
        if self.issuer is None:
            return None
        return (f"{step.detail}: token alg {self.header.get('alg')!r}, issuer "
                f"{self.issuer.name} allows {list(self.issuer.algorithms)}")

    def _unknown_kid(self, step: Step) -> str | None:
        store = self.stores.get(self.issuer.name) if self.issuer else None
        if store is None or store.key_set is None:
            return None
        kids = [key.kid for key in store.key_set.keys]
        return (f"{step.detail}: token kid {self.header.get('kid')!r}, issuer "
                f"{store.issuer.name} has {kids} (after one refresh of its keys)")

    def _keys_unavailable(self, step: Step) -> str | None:
        store = self.stores.get(self.issuer.name) if self.issuer else None
        if isinstance(store, OfflineStore):
            source = store.issuer.jwks_uri or store.issuer.discovery_uri
            return f"{step.detail}: --offline does not fetch them from {source}"
        if store is not None and store.last_error:
            return f"{step.detail}: {store.last_error}"
        return None

    def _malformed(self, step: Step) -> str | None:
        return f"token is malformed: {step.detail}"

    def _bad_signature(self, step: Step) -> str | None:
        return (f"{step.detail} with the key kid={self.header.get('kid')!r}: the token was "
                "signed by another key, or altered")

    def _typ(self, step: Step) -> str | None:
        typ = self.header.get("typ")
        if self.issuer is not None and self.issuer.typ is not None:
            verb = "matches" if step.ok else "does not match"
            return f"typ {typ!r} {verb} the required {self.issuer.typ!r}"
        if typ is None:
            return "no typ header (accepted)"
        if step.ok:
            return f"typ {typ!r} is an access-token type"
        return f"typ {typ!r} is not an access-token type (accepted: none, JWT, at+jwt)"

    def _exp(self, step: Step) -> str | None:
        exp, leeway = self.claims.get("exp"), self._leeway()
        if not isinstance(exp, int | float):
            return None
        if step.ok:
            return f"expires {_date(exp)} (in {_span(exp - self.now)}; leeway {leeway:g}s)"
        return f"expired at {_date(exp)}, {_span(self.now - exp)} ago (leeway {leeway:g}s)"

    def _not_before(self, step: Step) -> str | None:
        value, leeway = self.claims.get(step.name), self._leeway()
        if not isinstance(value, int | float):
            return None
        when = (f"{_span(self.now - value)} ago" if value <= self.now
                else f"in {_span(value - self.now)}")
        if step.ok:
            return f"{step.name} {_date(value)} ({when})"
        return (f"{step.name} {_date(value)} is {when}, beyond the leeway of {leeway:g}s: "
                "the token is not valid yet (or this clock is behind)")

    def _audience(self, step: Step) -> str | None:
        if self.issuer is None:
            return None
        accepted = list(self.issuer.audiences)
        verb = "is one of" if step.ok else "is not one of"
        if "aud" in self.claims:
            return f"token aud {self.claims['aud']!r} {verb} {accepted}"
        return f"no aud; token client_id {self.claims.get('client_id')!r} {verb} {accepted}"

    def _token_use(self, step: Step) -> str | None:
        if self.issuer is None:
            return None
        actual = self.claims.get("token_use")
        if step.ok:
            return f"token_use {actual!r} as required"
        return (f"token_use {actual!r}, issuer {self.issuer.name} requires "
                f"{self.issuer.token_use!r}")

    def _authorize(self, step: Step) -> str | None:
        auth = self.route.auth if self.route else None
        if auth is None:
            return None
        parts = [f"scopes present: {_scopes(self.claims)}"]
        if auth.scopes:
            parts.append(f"required all of {list(auth.scopes)}")
        if auth.any_scopes:
            parts.append(f"required one of {list(auth.any_scopes)}")
        parts += [f"{name} {claim_value(self.claims, name)!r} contains {expected!r}"
                  for name, expected in auth.claims]
        return "; ".join(parts)

    def _scope(self, step: Step) -> str | None:
        auth = self.route.auth if self.route else None
        if auth is None:
            return None
        present = token_scopes(self.claims)
        missing = [scope for scope in auth.scopes if scope not in present]
        if missing:
            return (f"missing scope {' '.join(missing)}: the route requires all of "
                    f"{list(auth.scopes)}; token has {_scopes(self.claims)}")
        return (f"route requires one of {list(auth.any_scopes)}; token has "
                f"{_scopes(self.claims)}")

    def _claim(self, step: Step) -> str | None:
        auth = self.route.auth if self.route else None
        for name, expected in auth.claims if auth else ():
            if step.detail == f"claim {name} must contain {expected}":
                actual = claim_value(self.claims, name)
                return (f"claim {name} must equal or contain {expected!r}; token has "
                        f"{actual!r}" + (" (claim absent)" if actual is None else ""))
        return None

    def _leeway(self) -> float:
        return self.issuer.leeway if self.issuer else 0.0


def _describe(route: Route) -> str:
    match = route.match
    parts = []
    if match.host:
        parts.append(f"host {match.host}")
    if match.path:
        parts.append(f"path {match.path}")
    if match.path_prefix:
        parts.append(f"path_prefix {match.path_prefix}")
    if match.methods:
        parts.append("methods " + ",".join(sorted(match.methods)))
    auth = "auth: none" if route.auth is None else f"auth: {route.auth.mode}"
    return f"{' '.join(parts) or 'any request'}, {auth}"


def _scopes(claims: Mapping[str, Any]) -> str:
    present = sorted(token_scopes(claims))
    return repr(present) if present else "none"


def _date(stamp: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
    except (OverflowError, OSError, ValueError):
        return str(stamp)


def _span(seconds: float) -> str:
    seconds = int(abs(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Key fetch warnings would repeat what the steps say, less precisely."""
    logger = logging.getLogger("jwtproxy")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _marks(out: TextIO) -> tuple[str, str]:
    try:
        "✓✗".encode(out.encoding or "utf-8")  # no encoding: a text buffer (StringIO)
    except (LookupError, UnicodeEncodeError):
        return "ok", "FAIL"
    return "✓", "✗"


def render(report: Report, marks: tuple[str, str] = ("✓", "✗")) -> str:
    """The human-readable explanation."""
    decision = report.decision
    lines = [f"request   {report.method} {report.host}{report.path}"
             + (f"  (token in the {report.token_location})" if report.token_location
                else "  (no token)")]
    if report.claims:
        shown = ", ".join(f"{name} {_claim_text(name, report.claims[name])}"
                          for name in SHOWN_CLAIMS if name in report.claims)
        verified = "verified" if decision.claims is not None else "decoded, not verified"
        lines.append(f"claims    {shown}  [{verified}]")
    lines.append("")
    width = max((len(step.name) for step in report.steps), default=0)
    for step in report.steps:
        lines.append(f"  {marks[0] if step.ok else marks[1]} {step.name:<{width}}  {step.detail}")
    lines.append("")
    lines += [f"note: {note}" for note in report.notes]
    if decision.error is None:
        lines.append(f"{marks[0]} ALLOW: {report.method} forwarded to {report.upstream_url}")
        if report.forward_headers or report.not_forwarded:
            lines.append("  headers set from claims (copies sent by the client are removed):")
            lines += [f"    {name}: {value}" for name, value in report.forward_headers.items()]
            lines += [f"    {name}: (not sent: {why})"
                      for name, why in report.not_forwarded.items()]
        if decision.route is not None and decision.route.plan.strip_authorization:
            lines.append("  Authorization: removed (forward.authorization: strip)")
    else:
        err = decision.error
        lines.append(f"{marks[1]} DENY: {err.status} ({err.reason}) {err.description}")
        if report.www_authenticate:
            lines.append(f"  WWW-Authenticate: {report.www_authenticate}")
        if report.retry_after:
            lines.append(f"  Retry-After: {report.retry_after}")
        lines.append(f"  body: {json.dumps(report.body)}")
    return "\n".join(lines) + "\n"


def _claim_text(name: str, value: Any) -> str:
    if name == "exp" and isinstance(value, int | float):
        return f"{value} ({_date(value)})"
    return repr(value)
