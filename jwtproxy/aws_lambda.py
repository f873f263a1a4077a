"""The AWS Lambda authorizer door: `jwtproxy.aws_lambda.handler(event, context)`.

An API Gateway authorizer event becomes a `RequestView` (`lambda_events`), `Gate.decide`
decides, and the Decision becomes the answer shared/DESIGN.md gives this door: an IAM policy
(or `{"isAuthorized": …}`) that Allows, with `principalId` = `sub` and the route's forwarded
claims as `context`; a Deny for scope, claim and no route; `Unauthorized` (API Gateway's
401) for a missing or invalid token or a bad event; an error (500) when keys cannot be had.

The config, one event loop, one key session and the verified-token cache live as long as
the execution environment; the handler builds nothing per event but the answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp

from .arn_patterns import unnormal
from .authorizer import authorize
from .config import Config
from .errors import Forbidden, InvalidToken, JwtProxyError, KeysUnavailable
from .gate import Decision, Gate
from .jwks import build_stores
from .lambda_events import AuthorizerEvent, BadEvent, parse_event
from .lambda_policy import RoutePolicies, allows, claims_context, policy, principal
from .loader import load_file
from .log import setup_logging
from .verifier import Verifier

log = logging.getLogger("jwtproxy.aws_lambda")

CONFIG_ENV: Final = "JWTPROXY_CONFIG"
CONFIG_NAME: Final = "jwtproxy.yaml"
DEFAULT_BUDGET: Final = 5.0  # seconds for one decision when the context gives no deadline
DEADLINE_MARGIN: Final = 0.5  # seconds kept to answer before the function times out
MIN_BUDGET: Final = 0.05
EMF_NAMESPACE: Final = "jwtproxy"
NO_ROUTE: Final = "(none)"  # as metrics.NO_ROUTE (that module would bring prometheus-client)
Answer = Literal["allow", "deny", "unauthorized", "error"]


class Unauthorized(Exception):
    """API Gateway answers 401 for an authorizer error whose message is `Unauthorized`."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


class AuthorizerFailure(Exception):
    """Any other error: API Gateway answers 500 and caches nothing."""


@dataclass(slots=True)
class Outcome:
    answer: Answer
    reason: str
    decision: Decision | None = None
    response: dict[str, Any] | None = None
    claims: Mapping[str, Any] | None = None


class Authorizer:
    """One per execution environment: the config and everything built from it."""

    def __init__(self, config: Config, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.routes_scope = config.aws_lambda.policy_scope == "routes"
        self.simple = config.aws_lambda.response == "simple"
        self.emf = config.log.format == "json"
        self.loop = asyncio.new_event_loop()
        self.session = self.loop.run_until_complete(_open_session())
        self.stores = build_stores(config.issuers.values(), self.session)
        self.verifier = Verifier(config.issuers, self.stores, wall_clock=wall_clock)
        self.gate = Gate(config, self.verifier)
        self.token_header = next(
            (source.name for source in config.tokens if source.kind == "header"),
            "Authorization")
        self.policies = RoutePolicies(config.routes)

    def close(self) -> None:
        async def close() -> None:
            await asyncio.gather(*(store.close() for store in self.stores.values()))
            await self.session.close()

        self.loop.run_until_complete(close())
        self.loop.close()

    def handle(self, event: Any, context: Any = None) -> dict[str, Any]:
        """Answer one event; raises `Unauthorized` (401) or `AuthorizerFailure` (500)."""
        started = time.perf_counter()
        try:
            parsed = parse_event(event, self.token_header, self.routes_scope)
        except BadEvent as err:
            log.error("lambda_bad_event", extra={"detail": str(err)})
            self._record(None, Outcome("unauthorized", "bad_event"), started)
            raise Unauthorized from None
        try:
            outcome = self.loop.run_until_complete(
                asyncio.wait_for(self._decide(parsed), _budget(context)))
        except TimeoutError:
            outcome = Outcome("error", KeysUnavailable.reason)
        except Exception:
            log.exception("lambda_internal_error")
            outcome = Outcome("error", "internal")
        self._record(parsed, outcome, started)
        if outcome.answer == "unauthorized":
            raise Unauthorized
        if outcome.answer == "error" or outcome.response is None:
            raise AuthorizerFailure(outcome.reason)
        return outcome.response

    async def _decide(self, parsed: AuthorizerEvent) -> Outcome:
        decision = await self.gate.decide(parsed.view)
        error = decision.error
        reason = decision.auth_reason or (
            "not_found" if decision.route is None else "public")
        if error is not None and error.status in (400, 401):
            return Outcome("unauthorized", reason, decision)
        if error is not None and error.status not in (403, 404):
            return Outcome("error", reason, decision)
        if self.routes_scope:
            try:
                return await self._routes_answer(parsed, decision, reason)
            except KeysUnavailable:
                return Outcome("error", KeysUnavailable.reason, decision)
        claims = decision.claims or await self._denied_claims(parsed, decision)
        route = self.policies.by_name[decision.route.route.name] if decision.route else None
        context = claims_context(claims, route.context_claims if route and error is None else ())
        allowed = error is None
        if self.simple and parsed.shape == "http_v2":
            response: dict[str, Any] = {"isAuthorized": allowed}
            if context:
                response["context"] = context
        else:
            response = policy(principal(claims), [parsed.arn.arn] if allowed else [],
                              [] if allowed else [parsed.arn.arn], context)
        return Outcome("allow" if allowed else "deny", reason, decision, response, claims)

    async def _denied_claims(
        self, parsed: AuthorizerEvent, decision: Decision,
    ) -> Mapping[str, Any] | None:
        """A token refused for scope or claim was verified: its claims name the principal
        and the log line (the verifier's cache answers)."""
        route = decision.route.route if decision.route else None
        if not isinstance(decision.error, Forbidden) or route is None or route.auth is None:
            return None
        try:
            token = self.gate.extractor.extract(parsed.view.headers, parsed.view.query_string)
            if token is None:
                return None
            return (await self.verifier.verify(token, route.auth.issuers)).claims
        except JwtProxyError:
            return None

    async def _routes_answer(
        self, parsed: AuthorizerEvent, decision: Decision, reason: str,
    ) -> Outcome:
        """The token's whole permission set over the API stage (`RoutePolicies`)."""
        satisfied, claims = await self._satisfied(parsed)
        claims = decision.claims or claims
        allow, deny = self.policies.permission_set(parsed.arn.base, satisfied)
        context = claims_context(claims, self.policies.context_claims(satisfied))
        response = policy(principal(claims), allow, deny, context)
        allowed = allows(allow, deny, parsed.arn.arn)
        fresh = decision.error is None and not unnormal(parsed.arn.resource)
        if allowed != fresh:  # only a config that bypassed `check` gets here: fail closed
            log.error("lambda_policy_mismatch", extra={"route": _route_name(decision)})
            return Outcome("error", "internal", decision)
        if decision.error is None and not fresh:
            reason = "path"
        return Outcome("allow" if allowed else "deny", reason, decision, response, claims)

    async def _satisfied(self, parsed: AuthorizerEvent) -> tuple[set[int], Mapping[str, Any]]:
        """Which routes the event's token passes, by the gate's own rules per mode (a check
        added to `Gate.decide` belongs here too; `_routes_answer` fails closed on any
        disagreement with the gate for the event's own route)."""
        view = parsed.view
        try:
            token = self.gate.extractor.extract(view.headers, view.query_string)
            usable = True
        except JwtProxyError:
            token, usable = None, False
        found: set[int] = set()
        claims: Mapping[str, Any] = {}
        for index, compiled in enumerate(self.policies.routes):
            auth = compiled.route.auth
            if auth is None or auth.mode == "report_only":
                found.add(index)
            elif token is None:
                if usable and auth.mode == "optional":
                    found.add(index)
            else:
                try:
                    verified = await self.verifier.verify(token, auth.issuers)
                    authorize(auth, verified.claims)
                except (InvalidToken, Forbidden):
                    continue
                found.add(index)
                claims = claims or verified.claims
        return found, claims

    def _record(self, parsed: AuthorizerEvent | None, outcome: Outcome, started: float) -> None:
        """One JSON line per decision; with `log.format: json` it is also a CloudWatch
        embedded-metric-format document (`auth` by route/result/reason, as
        jwtproxy_auth_total; `decisions` and `latency_ms` by route/answer)."""
        if not log.isEnabledFor(logging.INFO):
            return
        decision = outcome.decision
        latency = round((time.perf_counter() - started) * 1000, 3)
        fields: dict[str, Any] = {
            "shape": parsed.shape if parsed else None, "route": _route_name(decision),
            "answer": outcome.answer, "reason": outcome.reason, "latency_ms": latency,
            "decisions": 1,
            "result": "allowed" if outcome.answer == "allow" else "denied",
        }
        if decision is not None:
            fields["issuer"] = decision.issuer
            fields["cache"] = (None if decision.cache_hit is None
                               else "hit" if decision.cache_hit else "miss")
        claims = outcome.claims or {}
        for claim in ("sub", "jti"):
            if isinstance(claims.get(claim), str):
                fields[claim] = claims[claim][:128]
        # `auth` counts as jwtproxy_auth_total does: decisions that authenticated, with the
        # gate's result (report_only lets a denied token through) and its reason
        counted = decision is not None and decision.auth_reason is not None and (
            outcome.reason == decision.auth_reason)
        if counted:
            assert decision is not None
            fields["result"] = "denied" if decision.auth_denied else "allowed"
            fields["auth"] = 1
        if self.emf:
            fields["_aws"] = _emf(counted)
        log.info("lambda_decision", extra=fields)


def _emf(counted: bool) -> dict[str, Any]:
    directives: list[dict[str, Any]] = [{
        "Namespace": EMF_NAMESPACE, "Dimensions": [["route", "answer"]],
        "Metrics": [{"Name": "decisions", "Unit": "Count"},
                    {"Name": "latency_ms", "Unit": "Milliseconds"}]}]
    if counted:
        directives.append({
            "Namespace": EMF_NAMESPACE, "Dimensions": [["route", "result", "reason"]],
            "Metrics": [{"Name": "auth", "Unit": "Count"}]})
    return {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": directives}


def _route_name(decision: Decision | None) -> str:
    return decision.route.route.name if decision is not None and decision.route else NO_ROUTE


def _budget(context: Any) -> float:
    """The time one decision may take: a slow IdP must not eat the authorizer's timeout."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(remaining):
        return DEFAULT_BUDGET
    return max(MIN_BUDGET, float(remaining()) / 1000 - DEADLINE_MARGIN)


async def _open_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


def config_path(environ: Mapping[str, str]) -> Path:
    """`JWTPROXY_CONFIG`, else `jwtproxy.yaml` in the task root (beside the package)."""
    named = environ.get(CONFIG_ENV)
    if named:
        return Path(named)
    root = environ.get("LAMBDA_TASK_ROOT")
    return (Path(root) if root else Path(__file__).resolve().parent.parent) / CONFIG_NAME


def load(environ: Mapping[str, str] = os.environ) -> Authorizer:
    """Read the config (a `ConfigError` fails the invocation: API Gateway answers 500)."""
    config = load_file(config_path(environ), environ)
    setup_logging(config.log.level, config.log.format)
    return Authorizer(config)


class _Environment:
    """What outlives one invocation: the Lambda runtime keeps the module loaded."""

    authorizer: Authorizer | None = None


_ENVIRONMENT: Final = _Environment()


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda entry point; the first call of an execution environment loads it."""
    if _ENVIRONMENT.authorizer is None:
        _ENVIRONMENT.authorizer = load()
    return _ENVIRONMENT.authorizer.handle(event, context)
