"""`jwtproxy explain`: run `Gate.decide` for one request and print every step.

The gate, verifier and key stores are the server's own; only the words are added, in
`explain_text`: each step's detail is restated with the values that matter (times as
dates, audiences and scopes expected vs present), and the answer is built by
`answers.error_response`, so the `WWW-Authenticate` header and body shown are the ones the
proxy would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, TextIO
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from .answers import error_response
from .config import NO_UPSTREAM, Config, ForwardAuth, Listen
from .errors import JwtProxyError, KeysUnavailable, NotFound
from .explain_text import Report, Words, marks_for, render
from .forward_auth import claim_headers, error_answer, reconstruct
from .gate import Decision, Gate, RequestView
from .headers import HeaderPlan, TrustedProxies
from .jwks import KeySet, KeyStore, build_stores
from .jws import parse
from .resource_metadata import client_origin
from .verifier import Verifier

EXIT_ALLOW: Final = 0
EXIT_DENY: Final = 1
FETCH_TIMEOUT: Final = 30.0
SOURCES: Final = {"x-forwarded": "X-Forwarded-Method / X-Forwarded-Uri",
                  "x-original": "X-Original-Method / X-Original-URI + Host",
                  "request": "the auth request itself"}


class OfflineStore(KeyStore):
    """`--offline`: the keys of a remote issuer are never fetched."""

    async def current(self) -> KeySet:
        raise KeysUnavailable(f"keys of issuer {self.issuer.name} are unavailable")

    async def refresh_for_unknown_kid(self) -> KeySet:
        return await self.current()



async def explain(
    config: Config, method: str, host: str, path: str, token: str, *,
    as_json: bool = False, offline: bool = False, out: TextIO | None = None,
    forward_auth: Sequence[tuple[str, str]] | None = None,
) -> int:
    """Print the decision for one request; 0 if it would be allowed, 1 if denied.

    `forward_auth` (the subrequest's extra headers, maybe none): the request is an auth
    subrequest to the forward-auth door, from a trusted gateway."""
    out = out or sys.stdout
    report = await build_report(config, method, host, path, token, offline=offline,
                                forward_auth=forward_auth)
    if as_json:
        out.write(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    else:
        out.write(render(report, marks_for(out)))
    out.flush()
    return EXIT_ALLOW if report.decision.allowed else EXIT_DENY


async def build_report(
    config: Config, method: str, host: str, path: str, token: str, *, offline: bool = False,
    forward_auth: Sequence[tuple[str, str]] | None = None,
) -> Report:
    """Decide with the server's Gate (fetching keys unless `offline`) and explain it."""
    method = method.upper()
    raw_path, _, query = path.partition("?")
    view, location = _view(config, method, host, raw_path, query, token)
    original: str | None = None
    refused: JwtProxyError | None = None
    if forward_auth is not None:
        headers = CIMultiDict(view.headers)
        for name, value in forward_auth:
            headers.add(name, value)
        settings = config.forward_auth or ForwardAuth(Listen("127.0.0.1", 0))
        try:
            rebuilt = reconstruct(method, host, "http", view.raw_path + (
                f"?{view.query_string}" if view.query_string else ""),
                CIMultiDictProxy(headers), settings)
        except JwtProxyError as err:
            refused, original = err, f"not reconstructed: {err.description}"
        else:
            view = rebuilt.view(CIMultiDictProxy(headers))
            original = (f"{rebuilt.method} {rebuilt.scheme}://{rebuilt.host}{rebuilt.target}"
                        f"  (from {SOURCES[rebuilt.source]})")
    with _quiet_logs():
        session = None if offline else aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
            cookie_jar=aiohttp.DummyCookieJar())
        stores = _stores(config, session)
        try:
            now = time.time()
            gate = Gate(config, Verifier(config.issuers, stores))
            decision = Decision(None, refused) if refused is not None else await gate.decide(
                view, trace=True)
        finally:
            await asyncio.gather(*(store.close() for store in stores.values()))
            if session is not None:
                await session.close()
    claims = decision.claims if decision.claims is not None else _unverified_claims(token)
    offline_stores = {name for name, store in stores.items() if isinstance(store, OfflineStore)}
    words = Words(config, view, decision, claims, token,
                  _unverified_header(token) if token else {}, stores, offline_stores, now,
                  location)
    report = Report(method, host, path, location if token else None, claims, decision,
                    words.steps(), original=original)
    words.notes(report)
    meta = gate.metadata.get(decision.route.route.name) if decision.route else None
    if meta is not None:
        origin = client_origin(view.scheme, view.host, view.headers, False)
        report.notes.append(f"protected-resource metadata (RFC 9728): {meta.url(origin)} "
                            f"(resource {meta.resource_for(origin)}; tokens need it in aud)")
    if forward_auth is None:
        _answer(report, view, token)
    else:
        _gateway_answer(report)
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


def _gateway_answer(report: Report) -> None:
    """What the forward-auth door answers the gateway."""
    decision = report.decision
    if decision.error is not None:
        response = error_answer(decision.error)
        report.status = response.status
        report.www_authenticate = response.headers.get("WWW-Authenticate")
        report.retry_after = response.headers.get("Retry-After")
        report.body = json.loads(response.text or "{}")
        return
    assert decision.route is not None
    report.forward_headers = claim_headers(decision.route.route, decision.claims)
    for claim, header in decision.route.route.forward.claims:
        if header not in report.forward_headers:
            report.not_forwarded[header] = _why_not(decision, claim)


def _answer(report: Report, view: RequestView, token: str) -> None:
    decision = report.decision
    if decision.route is not None and decision.route.route.upstream == NO_UPSTREAM:
        # as the proxy door: a route without upstream is not one of its routes
        report.notes.append(f"route {decision.route.route.name} has no upstream: the proxy "
                            "answers 404 (it is served by forward-auth and Lambda)")
        decision = report.decision = Decision(None, NotFound("no route matches"),
                                              steps=decision.steps)
    if decision.error is not None:
        response = error_response(decision.error, decision.challenge)
        challenges = response.headers.getall("WWW-Authenticate", [])
        report.www_authenticate = challenges[0] if challenges else None
        report.more_challenges = challenges[1:]
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
    plan = HeaderPlan(route, frozenset(), TrustedProxies(()))  # what it sets from claims
    wanted = [header for _, header in plan.claims]
    if plan.payload_header:
        wanted.append(plan.payload_header)
    sent = plan.request_headers(view.headers, decision.claims, None, "http", "explain")
    for name in wanted:
        if name in sent:
            report.forward_headers[name] = sent[name]
    for claim, header in plan.claims:
        if header not in sent:
            report.not_forwarded[header] = _why_not(decision, claim)


def _why_not(decision: Decision, claim: str) -> str:
    if decision.claims is None:
        return "no verified token, so no claims"
    if claim not in decision.claims:
        return f"the token has no {claim} claim"
    return f"claim {claim} is not a header-safe value"


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
