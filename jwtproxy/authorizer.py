"""Route rules over verified claims: scopes (all / any) and required claim values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import Auth
from .errors import MissingClaim, MissingScope


def token_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from `scope` (RFC 8693 §4.2, space-separated) or `scp` (array or string)."""
    scopes: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(item for item in value if isinstance(item, str))
    return frozenset(scopes)


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by its full name (`cognito:groups`, URLs), else by dotted path."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _as_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    return None


def _claim_matches(actual: Any, expected: str) -> bool:
    if isinstance(actual, list):
        return any(_as_text(item) == expected for item in actual)
    return _as_text(actual) == expected


def authorize(rule: Auth, claims: Mapping[str, Any]) -> None:
    """Raise `MissingScope` / `MissingClaim` (403) unless the claims satisfy the rule."""
    if rule.scopes or rule.any_scopes:
        present = token_scopes(claims)
        missing = [scope for scope in rule.scopes if scope not in present]
        if missing:
            raise MissingScope(f"missing scope {' '.join(missing)}", " ".join(rule.scopes))
        if rule.any_scopes and present.isdisjoint(rule.any_scopes):
            raise MissingScope(
                f"needs one of the scopes {' '.join(rule.any_scopes)}", " ".join(rule.any_scopes))
    for name, expected in rule.claims:
        if not _claim_matches(claim_value(claims, name), expected):
            raise MissingClaim(f"claim {name} must contain {expected}")
