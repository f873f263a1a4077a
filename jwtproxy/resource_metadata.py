"""RFC 9728 protected-resource metadata of a route: where its document is served, what it
says, and the `resource_metadata` URL that every 401 of the route carries (§5.1).

Compiled once per route; only the origin (scheme and host as the client saw them) is
filled in per request when `resource` is not configured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

from .config import Issuer, Route, TokenSource

WELL_KNOWN: Final = "/.well-known/oauth-protected-resource"
# What may stand in a URL we print: a host name or bracketed IP literal, an optional port.
HOST: Final = re.compile(r"(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def route_path(route: Route) -> str:
    """The path the route protects (`/` for a route on every path)."""
    return route.match.path or route.match.path_prefix or "/"


def document_path(route: Route) -> str:
    """RFC 9728 §3.1: the well-known string goes between host and path; the terminating
    slash of a bare host is removed first."""
    path = route_path(route)
    return WELL_KNOWN if path == "/" else WELL_KNOWN + path


def client_origin(
    scheme: str, host: str, headers: Mapping[str, str], trusted: bool,
) -> str | None:
    """`scheme://host` as the client saw it: `X-Forwarded-Proto`/`-Host` count only from a
    trusted proxy (the first, client-facing, value). None for a host we would not print."""
    if trusted:
        scheme = headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip().lower()
        host = headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    if scheme not in ("http", "https") or not HOST.fullmatch(host):
        return None
    return f"{scheme}://{host.lower()}"


class Metadata:
    """One route's document and challenge parameter."""

    def __init__(
        self, route: Route, issuers: Mapping[str, Issuer], tokens: Sequence[TokenSource],
    ) -> None:
        assert route.resource_metadata is not None and route.auth is not None
        configured = route.resource_metadata
        self.path = document_path(route)
        path = route_path(route)
        self.resource_path = "" if path == "/" else path
        self.resource = configured.resource
        self.origin: str | None = None
        if configured.resource is not None:
            parts = urlsplit(configured.resource)
            self.origin = f"{parts.scheme}://{parts.netloc}"
        used = [issuers[name] for name in route.auth.issuers]
        servers = configured.authorization_servers or tuple(
            dict.fromkeys(issuer.issuer for issuer in used))
        scopes = configured.scopes_supported
        if scopes is None:
            scopes = tuple(dict.fromkeys(route.auth.scopes + route.auth.any_scopes))
        static: dict[str, Any] = {"authorization_servers": list(servers)}
        if scopes:
            static["scopes_supported"] = list(scopes)
        # RFC 6750 §2 methods; a cookie or a custom header is none of them
        methods = ["header"] if any(
            source.kind == "header" and source.name.lower() == "authorization"
            for source in tokens) else []
        if any(source.kind == "query" for source in tokens):
            methods.append("query")
        static["bearer_methods_supported"] = methods
        dpop = [issuer.dpop for issuer in used
                if issuer.dpop is not None and issuer.dpop.mode != "off"]
        if dpop:  # RFC 9728 §2: only where DPoP applies (is configured)
            static["dpop_signing_alg_values_supported"] = list(dict.fromkeys(
                alg for settings in dpop for alg in settings.algorithms))
            static["dpop_bound_access_tokens_required"] = all(
                issuer.dpop_settings.mode == "required" for issuer in used)
        self.static = static

    def resource_for(self, origin: str | None) -> str | None:
        """The resource identifier (RFC 8707): configured, or the client's origin + path."""
        if self.resource is not None:
            return self.resource
        return None if origin is None else origin + self.resource_path

    def url(self, origin: str | None) -> str | None:
        """Where the document is, as an absolute URL for `resource_metadata=`."""
        base = self.origin or origin
        return None if base is None else base + self.path

    def document(self, origin: str | None) -> dict[str, Any] | None:
        resource = self.resource_for(origin)
        return None if resource is None else {"resource": resource, **self.static}
