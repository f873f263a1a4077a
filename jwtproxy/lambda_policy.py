"""The Lambda door's output, compiled once per route: authorizer `context` values and IAM
policy documents, for one method ARN or (`policy_scope: routes`) a token's whole
permission set over an API stage."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .arn_patterns import UNNORMAL_PATHS, earlier_overlaps, iam_match, route_patterns
from .config import Route
from .headers import claim_header_value

ANONYMOUS: Final = "anonymous"  # principalId when no token names a subject (public route)
POLICY_VERSION: Final = "2012-10-17"
ContextValue = str | int | float | bool


def context_value(value: Any) -> ContextValue | None:
    """API Gateway's context takes strings, numbers and booleans: arrays are joined and
    objects written as compact JSON, as for claim headers."""
    if isinstance(value, str | int | float):  # bool is an int
        return value
    return claim_header_value(value) if isinstance(value, list | dict) else None


def claims_context(claims: Mapping[str, Any] | None, names: Iterable[str]
                   ) -> dict[str, ContextValue]:
    context: dict[str, ContextValue] = {}
    for name in names if claims else ():
        value = context_value(claims.get(name)) if claims else None
        if value is not None:
            context[name] = value
    return context


def principal(claims: Mapping[str, Any] | None) -> str:
    sub = (claims or {}).get("sub")
    return sub if isinstance(sub, str) and sub else ANONYMOUS


def policy(principal_id: str, allow: Sequence[str], deny: Sequence[str],
           context: dict[str, ContextValue]) -> dict[str, Any]:
    """The authorizer response: `principalId`, an IAM policy, and `context` if any."""
    statements = [
        {"Action": "execute-api:Invoke", "Effect": effect,
         "Resource": resources[0] if len(resources) == 1 else list(resources)}
        for effect, resources in (("Allow", allow), ("Deny", deny)) if resources]
    response: dict[str, Any] = {
        "principalId": principal_id,
        "policyDocument": {"Version": POLICY_VERSION, "Statement": statements}}
    if context:
        response["context"] = context
    return response


def allows(allow: Iterable[str], deny: Iterable[str], arn: str) -> bool:
    """IAM's verdict on `arn`: some Allow matches and no Deny does (explicit Deny wins)."""
    return (any(iam_match(pattern, arn) for pattern in allow)
            and not any(iam_match(pattern, arn) for pattern in deny))


@dataclass(frozen=True, slots=True)
class LambdaRoute:
    """A route's Lambda output: its context claims and its ARN patterns."""

    route: Route
    context_claims: tuple[str, ...]
    patterns: tuple[str, ...]
    overlapped_by: tuple[int, ...]  # earlier routes some request matches together with it


class RoutePolicies:
    """Every route's output, in file order."""

    def __init__(self, routes: Sequence[Route]) -> None:
        overlaps = earlier_overlaps(routes)
        self.routes = tuple(
            LambdaRoute(route, tuple(claim for claim, _ in route.forward.claims),
                        route_patterns(route), overlaps[index])
            for index, route in enumerate(routes))
        self.by_name = {compiled.route.name: compiled for compiled in self.routes}

    def permission_set(self, base: str, satisfied: Collection[int]
                       ) -> tuple[list[str], list[str]]:
        """(Allow, Deny) resources over the stage `base`: Allow the patterns of each route
        the token satisfies; Deny those of each other route unless an earlier satisfied
        route overlaps it, and paths the gate would read otherwise (`arn_patterns.problems`
        keeps the configs where this gives each ARN its first matching route's answer)."""
        allow = [f"{base}/{p}" for i in sorted(satisfied) for p in self.routes[i].patterns]
        deny = [f"{base}/{p}" for p in UNNORMAL_PATHS]
        for index, compiled in enumerate(self.routes):
            if index not in satisfied and not any(i in satisfied for i in compiled.overlapped_by):
                deny.extend(f"{base}/{p}" for p in compiled.patterns)
        return allow, deny

    def context_claims(self, satisfied: Collection[int]) -> list[str]:
        return [claim for i in sorted(satisfied) for claim in self.routes[i].context_claims]
