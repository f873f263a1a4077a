"""API Gateway method ARNs, and routes written as IAM resource patterns.

`aws_lambda.policy_scope: routes` answers with a policy that API Gateway may cache for the
token and apply to later requests: it must give every method ARN the answer a fresh call
would. IAM matches `*` (any run of characters, `/` included) and `?` (one character), has no
order, and an explicit Deny wins; `problems` names the configs that cannot be written so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Final

from .config import Route

# The methods API Gateway routes (its ANY means these). A route without `methods` lists
# them all: `*` would also match across the `/` after the method.
GATEWAY_METHODS: Final = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
# ARN paths the gate would read differently from IAM (it decodes `%`, turns `\` into `/`,
# merges `//` and removes dot segments, also `..;x`): a cached policy never allows them,
# so under `policy_scope: routes` a fresh call denies them too.
UNNORMAL_PATHS: Final = (
    "*%*", "*\\*", "*//*", "*/./*", "*/../*", "*/.", "*/..", "*/.;*", "*/..;*")
IAM_WILDCARDS: Final = frozenset("*?")
METHOD_ARN: Final = re.compile(
    r"(?P<base>arn:aws[a-z-]*:execute-api:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9]+/[A-Za-z0-9_$*-]+)"
    r"/(?P<method>[A-Z]+)(?:/(?P<path>[\x21-\x7e]*))?")


@dataclass(frozen=True, slots=True)
class MethodArn:
    """`arn:aws:execute-api:{region}:{account}:{api}/{stage}/{method}/{path}`, split."""

    arn: str
    base: str  # up to and with the stage
    method: str
    path: str  # with its leading `/`

    @property
    def resource(self) -> str:
        """The part after the stage, as patterns are written: `GET/orders/1`."""
        return f"{self.method}{self.path}"


def parse_arn(text: str) -> MethodArn | None:
    match = METHOD_ARN.fullmatch(text)
    if match is None:
        return None
    return MethodArn(text, match["base"], match["method"], "/" + (match["path"] or ""))


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern),
        re.DOTALL)


def iam_match(pattern: str, text: str) -> bool:
    """IAM's resource matching: `*` any run of characters, `?` exactly one, case-sensitive."""
    return _regex(pattern).fullmatch(text) is not None


def unnormal(resource: str) -> bool:
    return any(iam_match(pattern, resource) for pattern in UNNORMAL_PATHS)


def route_patterns(route: Route) -> tuple[str, ...]:
    """The route as patterns over `METHOD/path` (what follows `{api}/{stage}/`)."""
    match = route.match
    methods = sorted(match.methods) if match.methods is not None else GATEWAY_METHODS
    if match.methods is None and match.path is None and not (match.path_prefix or "").strip("/"):
        return ("*",)  # every method and path (the only place a bare `*` is exact)
    if match.path is not None:
        paths: tuple[str, ...] = (match.path,)
    else:
        key = (match.path_prefix or "").rstrip("/")
        paths = (key, f"{key}/*") if key else ("/*",)
    return tuple(f"{method}{path}" for method in methods for path in paths)


def _region(route: Route) -> tuple[bool, str]:
    """(exact, path) — a prefix route as its segment prefix without the trailing `/`."""
    if route.match.path is not None:
        return True, route.match.path
    return False, (route.match.path_prefix or "").rstrip("/")


def _under(path: str, key: str) -> bool:
    return key == "" or path == key or path.startswith(key + "/")


def overlap(a: Route, b: Route) -> bool:
    """Whether some request (method and normalised path) matches both routes."""
    if (a.match.methods is not None and b.match.methods is not None
            and a.match.methods.isdisjoint(b.match.methods)):
        return False
    (a_exact, a_path), (b_exact, b_path) = _region(a), _region(b)
    if a_exact and b_exact:
        return a_path == b_path
    if a_exact:
        return _under(a_path, b_path)
    if b_exact:
        return _under(b_path, a_path)
    return _under(a_path, b_path) or _under(b_path, a_path)


def implies(a: Route, b: Route) -> bool:
    """Conservatively: every token that route `a` lets through, route `b` lets through."""
    if b.auth is None or b.auth.mode == "report_only":
        return True
    if a.auth is None or a.auth.mode == "report_only":
        return False
    first, then = a.auth, b.auth
    if not (first.mode == then.mode or (first.mode, then.mode) == ("required", "optional")):
        return False
    any_ok = (not then.any_scopes or not set(then.any_scopes).isdisjoint(first.scopes)
              or (bool(first.any_scopes) and set(first.any_scopes) <= set(then.any_scopes)))
    return (set(first.issuers) <= set(then.issuers) and set(then.scopes) <= set(first.scopes)
            and set(then.claims) <= set(first.claims) and any_ok)


def earlier_overlaps(routes: Sequence[Route]) -> tuple[tuple[int, ...], ...]:
    """For each route, the earlier routes that some request matches together with it."""
    return tuple(tuple(i for i in range(j) if overlap(routes[i], routes[j]))
                 for j in range(len(routes)))


def problems(routes: Sequence[Route]) -> list[tuple[str, str]]:
    """Why these routes cannot be one cacheable policy, as (config path, message).

    The policy Allows the patterns of the routes a token satisfies and Denies those of a
    route it does not satisfy unless an earlier, satisfied route overlaps it. That gives
    each ARN the answer of its first matching route, except when a route `j` overlaps an
    earlier route `i` and a later route `k`, and a token can satisfy `i` and `k` but not
    `j`: then no set of patterns says it, and `check` refuses the config.
    """
    found: list[tuple[str, str]] = []
    for index, route in enumerate(routes):
        path = f"routes[{index}]"
        if route.match.host is not None:
            found.append((f"{path}.match.host", "policy_scope: routes cannot express a host "
                          "match (API Gateway method ARNs carry no host)"))
        if route.cors_preflight == "pass":
            found.append((f"{path}.cors_preflight", "policy_scope: routes cannot express "
                          "`pass` (it depends on request headers a cached policy never sees)"))
        text = route.match.path or route.match.path_prefix or ""
        if IAM_WILDCARDS & set(text):
            found.append((f"{path}.match", f"{text!r}: `*` and `?` are IAM wildcards and "
                          "cannot be matched literally"))
    before = earlier_overlaps(routes)
    for j, route in enumerate(routes):
        later = [k for k in range(j + 1, len(routes)) if j in before[k]]
        for i in before[j]:
            bad = [k for k in later
                   if not (implies(routes[i], route) or implies(routes[k], route))]
            if bad:
                k = bad[0]
                found.append((f"routes[{j}]", (
                    f"policy_scope: routes: {route.name!r} overlaps the earlier route "
                    f"{routes[i].name!r} and the later route {routes[k].name!r}; a token "
                    f"allowed on both but not on {route.name!r} cannot be written as IAM "
                    "patterns (no order, explicit Deny wins): make the routes disjoint, "
                    "or use policy_scope: request")))
                break
    return found
