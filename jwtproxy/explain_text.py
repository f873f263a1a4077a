"""The words of `jwtproxy explain`: each step restated, and the report printed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from .authorizer import claim_value, token_scopes
from .config import Config, Route
from .gate import Decision, RequestView
from .jwks import KeyStore
from .verifier import Step

SHOWN_CLAIMS: Final = ("iss", "sub", "aud", "client_id", "scope", "scp", "token_use", "exp")


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
    www_authenticate: str | None = None  # the first challenge: the one with the error
    more_challenges: list[str] = field(default_factory=list)  # other schemes offered
    retry_after: str | None = None
    body: dict[str, Any] | None = None
    upstream_url: str | None = None
    forward_headers: dict[str, str] = field(default_factory=dict)
    not_forwarded: dict[str, str] = field(default_factory=dict)
    original: str | None = None  # forward-auth: the original request, as reconstructed
    status: int | None = None  # when the door answers otherwise than the decision's status

    def as_dict(self) -> dict[str, Any]:
        route = self.decision.route
        return {
            "request": {"method": self.method, "host": self.host, "path": self.path},
            "door": "forward_auth" if self.original is not None else "proxy",
            "original_request": self.original,
            "route": route.route.name if route else None,
            "issuer": self.decision.issuer,
            "token_location": self.token_location,
            "claims": dict(self.claims) if self.claims is not None else None,
            "claims_verified": self.decision.claims is not None,
            "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in self.steps],
            "allowed": self.decision.allowed,
            "status": self.status or self.decision.status,
            "reason": self.decision.auth_reason if self.decision.error is None
            else self.decision.error.reason,
            "www_authenticate": self.www_authenticate,
            "more_challenges": self.more_challenges,
            "retry_after": self.retry_after,
            "body": self.body,
            "upstream_url": self.upstream_url,
            "forward_headers": self.forward_headers,
            "not_forwarded": self.not_forwarded,
            "notes": self.notes,
        }


class Words:
    """Restates each step of the trace with the values an operator needs."""

    def __init__(
        self, config: Config, view: RequestView, decision: Decision,
        claims: Mapping[str, Any] | None, token: str, header: Mapping[str, Any],
        stores: Mapping[str, KeyStore], offline: Collection[str], now: float, location: str,
    ) -> None:
        self.config, self.view, self.decision = config, view, decision
        self.claims: Mapping[str, Any] = claims or {}
        self.header = header  # the token's, unverified: only for the words
        self.stores, self.now, self.location, self.token = stores, now, location, token
        self.offline = offline  # issuers whose keys --offline does not fetch
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
        if store is not None and store.issuer.name in self.offline:
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

def marks_for(out: TextIO) -> tuple[str, str]:
    """The allow and deny marks, as words if `out` cannot encode the symbols."""
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
    if report.original is not None:
        lines.append(f"original  {report.original}")
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
    if decision.error is None and report.original is not None:
        lines.append(f"{marks[0]} ALLOW: 200 to the gateway, empty body")
        if report.forward_headers or report.not_forwarded:
            lines.append("  claim headers for the gateway to copy upstream:")
            lines += [f"    {name}: {value}" for name, value in report.forward_headers.items()]
            lines += [f"    {name}: (not sent: {why})"
                      for name, why in report.not_forwarded.items()]
    elif decision.error is None:
        lines.append(f"{marks[0]} ALLOW: {report.method} forwarded to {report.upstream_url}")
        if report.forward_headers or report.not_forwarded:
            lines.append("  headers set from claims (copies sent by the client are removed):")
            lines += [f"    {name}: {value}" for name, value in report.forward_headers.items()]
            lines += [f"    {name}: (not sent: {why})"
                      for name, why in report.not_forwarded.items()]
        if decision.route is not None and decision.route.route.forward.authorization == "strip":
            lines.append("  Authorization: removed (forward.authorization: strip)")
    else:
        err = decision.error
        lines.append(f"{marks[1]} DENY: {report.status or err.status} ({err.reason}) "
                     f"{err.description}")
        if report.www_authenticate:
            lines.append(f"  WWW-Authenticate: {report.www_authenticate}")
        lines += [f"  WWW-Authenticate: {more}" for more in report.more_challenges]
        if report.retry_after:
            lines.append(f"  Retry-After: {report.retry_after}")
        lines.append(f"  body: {json.dumps(report.body)}")
    return "\n".join(lines) + "\n"


def _claim_text(name: str, value: Any) -> str:
    if name == "exp" and isinstance(value, int | float):
        return f"{value} ({_date(value)})"
    return repr(value)
