"""The `routes:` section of the config → `Route` values (match, upstream, auth, forward,
resource_metadata), every problem at its path; `validation.Validator` builds on it."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Final
from urllib.parse import urlsplit

from .config import (
    HOP_BY_HOP,
    PROXY_SET_HEADERS,
    Auth,
    Forward,
    Issuer,
    Match,
    ResourceMetadata,
    Route,
)
from .fields import HOST_NAME, FieldChecker, build

HEADER_NAME: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2 token
# Claim headers are stripped from every request on every route, then set: none of these
# may be one (hop-by-hop and framing fields, credentials, what the proxy itself sets).
NOT_FOR_CLAIMS: Final = HOP_BY_HOP | PROXY_SET_HEADERS | {
    "host", "content-length", "content-type", "content-encoding", "expect", "authorization",
    "cookie"}
METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


class RouteValidator(FieldChecker):
    """The route checks of `Validator` (which sets `token_headers` from `tokens:`)."""

    token_headers: frozenset[str] = frozenset()

    def header_name(self, path: str, value: Any) -> str | None:
        name = self.string(path, value)
        if name is not None and not HEADER_NAME.match(name):
            self.problem(path, f"not a valid header name: {name!r}")
            return None
        if name is not None and (
            header_key(name) in NOT_FOR_CLAIMS | self.token_headers
        ):
            self.problem(path, f"{name} cannot carry claims (it would be stripped from "
                         "every request)")
            return None
        return name

    def routes(self, value: Any, issuers: dict[str, Issuer]) -> tuple[Route, ...]:
        if not isinstance(value, list) or not value:
            self.problem("routes", "expected a non-empty list (no route means every request "
                         "is answered 404)")
            return ()
        out: list[Route] = []
        seen: set[str] = set()
        for i, item in enumerate(value):
            route = self.route(f"routes[{i}]", item, issuers)
            if route is None:
                continue
            if route.name in seen:
                self.problem(f"routes[{i}].name", f"duplicate route name {route.name!r}")
            seen.add(route.name)
            out.append(route)
        return tuple(out)

    def route(self, path: str, value: Any, issuers: dict[str, Issuer]) -> Route | None:
        raw = self.mapping(path, value, {
            "name", "match", "upstream", "auth", "forward", "cors_preflight", "timeouts",
            "ca_file", "resource_metadata"})
        kwargs: dict[str, Any] = {
            "name": self.string(f"{path}.name", raw.get("name")),
            "match": self.match(f"{path}.match", raw.get("match")),
        }
        if "upstream" in raw:  # none: served by forward-auth and Lambda only
            kwargs["upstream"] = self.upstream(f"{path}.upstream", raw["upstream"])
        public = raw.get("auth") == "none"
        if not public:
            kwargs["auth"] = self.auth(f"{path}.auth", raw.get("auth"), issuers)
        if "forward" in raw:
            kwargs["forward"] = self.forward(f"{path}.forward", raw["forward"])
        if "cors_preflight" in raw:
            kwargs["cors_preflight"] = self.choice(
                f"{path}.cors_preflight", raw["cors_preflight"], ("pass", "authenticate"))
        if "timeouts" in raw:
            timeouts = self.mapping(f"{path}.timeouts", raw["timeouts"], {"connect", "read"})
            if "connect" in timeouts:
                kwargs["connect_timeout"] = self.duration(
                    f"{path}.timeouts.connect", timeouts["connect"])
            if "read" in timeouts:
                kwargs["read_timeout"] = self.duration(f"{path}.timeouts.read", timeouts["read"])
        if "ca_file" in raw:
            kwargs["ca_file"] = self.file(f"{path}.ca_file", raw["ca_file"])
        if "resource_metadata" in raw:
            if public:
                self.problem(f"{path}.resource_metadata", "a public route (auth: none) has "
                             "no protected-resource metadata")
            kwargs["resource_metadata"] = self.resource_metadata(
                f"{path}.resource_metadata", raw["resource_metadata"])
        if kwargs["name"] is None or ("upstream" in raw and kwargs["upstream"] is None):
            return None
        route = build(Route, kwargs)
        return replace(route, auth=None) if public else route

    def resource_metadata(self, path: str, value: Any) -> ResourceMetadata:
        """RFC 9728 §2: `resource` an https URL without fragment (plain http on loopback)."""
        raw = self.mapping(path, value, {"resource", "authorization_servers",
                                         "scopes_supported"})
        kwargs: dict[str, Any] = {}
        if "resource" in raw:
            resource = self.url(f"{path}.resource", raw["resource"], insecure_ok=False)
            if resource is not None and ("#" in resource or "?" in resource):
                self.problem(f"{path}.resource", "must have no query or fragment "
                             "(RFC 8707 §2)")
                resource = None
            kwargs["resource"] = resource
        if "authorization_servers" in raw:
            servers = self.strings(f"{path}.authorization_servers",
                                   raw["authorization_servers"])
            for i, server in enumerate(servers):
                self.url(f"{path}.authorization_servers[{i}]", server, insecure_ok=False)
            kwargs["authorization_servers"] = servers
        if "scopes_supported" in raw:
            kwargs["scopes_supported"] = self.strings(
                f"{path}.scopes_supported", raw["scopes_supported"])
        return build(ResourceMetadata, kwargs)

    def upstream(self, path: str, value: Any) -> str | None:
        url = self.url(path, value, insecure_ok=True)
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            self.problem(path, "expected scheme://host[:port] only: the request path is kept")
            return None
        return f"{parts.scheme}://{parts.netloc}"

    def match(self, path: str, value: Any) -> Match:
        raw = self.mapping(path, value, {"host", "path", "path_prefix", "methods"})
        kwargs: dict[str, Any] = {}
        if "host" in raw:
            host = self.string(f"{path}.host", raw["host"])
            name = host[2:] if host and host.startswith("*.") else host
            if name is not None and not HOST_NAME.fullmatch(name):
                self.problem(f"{path}.host", f"expected a host name without port, or "
                             f"*.domain, got {host!r}")
                host = None
            kwargs["host"] = host.lower().rstrip(".") if host else None
        for key in ("path", "path_prefix"):
            if key in raw:
                text = self.string(f"{path}.{key}", raw[key])
                if text is not None and not text.startswith("/"):
                    self.problem(f"{path}.{key}", "must start with /")
                kwargs[key] = text
        if "path" in raw and "path_prefix" in raw:
            self.problem(path, "use path or path_prefix, not both")
        if "methods" in raw:
            methods = [m.upper() for m in self.strings(f"{path}.methods", raw["methods"])]
            for i, method in enumerate(methods):
                if method not in METHODS:
                    self.problem(f"{path}.methods[{i}]", f"unknown method {method!r}")
            kwargs["methods"] = frozenset(methods)
        return build(Match, kwargs)

    def auth(self, path: str, value: Any, issuers: dict[str, Issuer]) -> Auth:
        if isinstance(value, str):
            self.problem(path, f"expected `none` or a mapping, got {value!r}")
            return Auth()
        raw = self.mapping(path, value, {"mode", "issuers", "scopes", "any_scopes", "claims"})
        kwargs: dict[str, Any] = {}
        if "mode" in raw:
            kwargs["mode"] = self.choice(
                f"{path}.mode", raw["mode"], ("required", "optional", "report_only"))
        names = self.strings(f"{path}.issuers", raw["issuers"]) if "issuers" in raw else ()
        for i, name in enumerate(names):
            if name not in issuers:
                self.problem(f"{path}.issuers[{i}]", f"unknown issuer {name!r}")
        if not issuers:
            self.problem(path, "a protected route needs at least one issuer under `issuers:`")
        kwargs["issuers"] = names or tuple(issuers)
        for key in ("scopes", "any_scopes"):
            if key in raw:
                kwargs[key] = self.strings(f"{path}.{key}", raw[key])
        if "claims" in raw:
            claims = self.mapping(f"{path}.claims", raw["claims"], None)
            pairs = []
            for claim, expected in claims.items():
                if not isinstance(expected, str | int | bool):
                    self.problem(f"{path}.claims.{claim}", "expected a string, number or bool")
                    continue
                pairs.append((claim, _claim_text(expected)))
            kwargs["claims"] = tuple(pairs)
        return build(Auth, kwargs)

    def forward(self, path: str, value: Any) -> Forward:
        raw = self.mapping(path, value, {"claims", "payload_header", "authorization"})
        kwargs: dict[str, Any] = {}
        if "claims" in raw:
            claims = self.mapping(f"{path}.claims", raw["claims"], None)
            pairs = []
            for claim, header in claims.items():
                name = self.header_name(f"{path}.claims.{claim}", header)
                if name:
                    pairs.append((claim, name))
            kwargs["claims"] = tuple(pairs)
        if "payload_header" in raw:
            kwargs["payload_header"] = self.header_name(
                f"{path}.payload_header", raw["payload_header"])
        if "authorization" in raw:
            kwargs["authorization"] = self.choice(
                f"{path}.authorization", raw["authorization"], ("keep", "strip"))
        return build(Forward, kwargs)


def header_key(name: str) -> str:
    """As `headers.normalized_name`: the stripping is `_`/`-` and case-insensitive."""
    return name.lower().replace("_", "-")


def _claim_text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
