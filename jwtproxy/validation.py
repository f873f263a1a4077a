"""Plain config data and the line of each path → `Config`, with every problem at its path."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit

from . import arn_patterns
from .config import (
    HOP_BY_HOP,
    PROXY_SET_HEADERS,
    Admin,
    Auth,
    AwsLambda,
    Config,
    Forward,
    ForwardAuth,
    Issuer,
    Log,
    Match,
    ResourceMetadata,
    Route,
    Server,
    Tls,
    TokenSource,
    TokenSourceKind,
    is_loopback_host,
)
from .fields import HOST_NAME, build
from .issuer_validation import IssuerValidator
from .revocation_validation import revocation_settings

HEADER_NAME: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2 token
# Claim headers are stripped from every request on every route, then set: none of these
# may be one (hop-by-hop and framing fields, credentials, what the proxy itself sets).
NOT_FOR_CLAIMS: Final = HOP_BY_HOP | PROXY_SET_HEADERS | {
    "host", "content-length", "content-type", "content-encoding", "expect", "authorization",
    "cookie"}
TOKEN_SOURCE_KINDS: Final = ("header", "cookie", "query", "websocket_protocol")
METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


class Validator(IssuerValidator):
    """Validates plain data into `Config`, collecting every problem."""

    def __init__(self, lines: dict[str, int], base_dir: Path) -> None:
        super().__init__(lines, base_dir)
        self.token_headers: frozenset[str] = frozenset()

    def config(self, data: Any) -> Config | None:
        top = self.mapping("", data, {"server", "admin", "log", "issuers", "tokens", "routes",
                                      "forward_auth", "aws_lambda", "revocation"})
        server = self.server(top.get("server"))
        admin = self.admin(top.get("admin"))
        log = self.log(top.get("log"))
        issuers = self.issuers(top.get("issuers"))
        tokens = self.tokens(top.get("tokens"))
        routes = self.routes(top.get("routes"), issuers)
        forward_auth = self.forward_auth(top["forward_auth"]) if "forward_auth" in top else None
        revocation = (revocation_settings(self, top["revocation"]) if "revocation" in top
                      else None)
        if server.listen == admin.listen:
            self.problem("admin.listen", "must differ from server.listen")
        if forward_auth is not None and forward_auth.listen in (server.listen, admin.listen):
            self.problem("forward_auth.listen", "must differ from server.listen and admin.listen")
        aws_lambda = self.aws_lambda(top.get("aws_lambda"))
        if aws_lambda.policy_scope == "routes" and not self.problems:
            for path, message in arn_patterns.problems(routes):
                self.problem(path, message)
        if self.problems:
            return None
        return Config(issuers, routes, tokens, server, admin, log, forward_auth, aws_lambda,
                      revocation)

    def aws_lambda(self, value: Any) -> AwsLambda:
        raw = self.mapping("aws_lambda", value, {"response", "policy_scope"})
        kwargs: dict[str, Any] = {}
        if "response" in raw:
            kwargs["response"] = self.choice(
                "aws_lambda.response", raw["response"], ("policy", "simple"))
        if "policy_scope" in raw:
            kwargs["policy_scope"] = self.choice(
                "aws_lambda.policy_scope", raw["policy_scope"], ("request", "routes"))
        settings = build(AwsLambda, kwargs)
        if settings.response == "simple" and settings.policy_scope == "routes":
            self.problem("aws_lambda.policy_scope",
                         "routes needs response: policy (a simple response has no policy)")
        return settings

    def server(self, value: Any) -> Server:
        path = "server"
        raw = self.mapping(path, value, {
            "listen", "workers", "graceful_timeout", "keepalive_timeout", "max_token_bytes", "tls",
            "trusted_proxies", "upstream_idle_timeout", "upstream_max_idle",
        })
        kwargs: dict[str, Any] = {}
        if raw.get("listen") is not None:
            kwargs["listen"] = self.listen(f"{path}.listen", raw["listen"])
        if "workers" in raw:
            workers = raw["workers"]
            kwargs["workers"] = (
                os.cpu_count() or 1 if workers == "auto"
                else self.integer(f"{path}.workers", workers)
            )
        if "keepalive_timeout" in raw:
            kwargs["keepalive_timeout"] = self.duration(
                f"{path}.keepalive_timeout", raw["keepalive_timeout"])
            if kwargs["keepalive_timeout"] == 0:
                self.problem(f"{path}.keepalive_timeout", "must be more than 0")
                kwargs["keepalive_timeout"] = None
        if "upstream_idle_timeout" in raw:
            kwargs["upstream_idle_timeout"] = self.duration(
                f"{path}.upstream_idle_timeout", raw["upstream_idle_timeout"])
            if kwargs["upstream_idle_timeout"] == 0:
                self.problem(f"{path}.upstream_idle_timeout", "must be more than 0")
                kwargs["upstream_idle_timeout"] = None
        if "upstream_max_idle" in raw:
            kwargs["upstream_max_idle"] = self.integer(
                f"{path}.upstream_max_idle", raw["upstream_max_idle"], minimum=0)
        if "graceful_timeout" in raw:
            kwargs["graceful_timeout"] = self.duration(
                f"{path}.graceful_timeout", raw["graceful_timeout"])
        if "max_token_bytes" in raw:
            kwargs["max_token_bytes"] = self.integer(
                f"{path}.max_token_bytes", raw["max_token_bytes"], minimum=64)
        if "tls" in raw:
            tls = self.mapping(f"{path}.tls", raw["tls"], {"cert_file", "key_file"})
            cert = self.file(f"{path}.tls.cert_file", tls.get("cert_file"))
            key = self.file(f"{path}.tls.key_file", tls.get("key_file"))
            kwargs["tls"] = Tls(cert, key) if cert and key else None
        if "trusted_proxies" in raw:
            kwargs["trusted_proxies"] = self.networks(
                f"{path}.trusted_proxies", raw["trusted_proxies"])
        server = build(Server, kwargs)
        # `listen: null` turns the proxy door off (forward-auth or Lambda only)
        return replace(server, listen=None) if "listen" in raw and raw["listen"] is None \
            else server

    def networks(self, path: str, value: Any) -> tuple[str, ...]:
        networks = self.strings(path, value)
        for i, net in enumerate(networks):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                self.problem(f"{path}[{i}]", f"not an IP network: {net!r}")
        return networks

    def forward_auth(self, value: Any) -> ForwardAuth | None:
        path = "forward_auth"
        raw = self.mapping(path, value, {"listen", "trusted_proxies", "path_prefix",
                                         "convention"})
        if "listen" not in raw:
            self.problem(f"{path}.listen", "required: where the gateway asks (host:port)")
            return None
        listen = self.listen(f"{path}.listen", raw["listen"])
        kwargs: dict[str, Any] = {"listen": listen}
        if "trusted_proxies" in raw:
            kwargs["trusted_proxies"] = self.networks(
                f"{path}.trusted_proxies", raw["trusted_proxies"])
            if not kwargs["trusted_proxies"]:
                self.problem(f"{path}.trusted_proxies", "expected at least one network "
                             "(nobody could ask: every peer would get 403)")
        elif listen is not None and not is_loopback_host(listen.host):
            # the X-Forwarded-* / X-Original-* headers say which request is allowed: believe
            # them only from the gateway, never by default from the whole network
            self.problem(f"{path}.trusted_proxies", f"required when listen is not loopback "
                         f"({listen}): the gateway's addresses")
        if "path_prefix" in raw:
            prefix = self.string(f"{path}.path_prefix", raw["path_prefix"])
            if prefix is not None and (not prefix.startswith("/") or prefix.endswith("/")):
                self.problem(f"{path}.path_prefix", "must start with / and not end with /")
                prefix = None
            kwargs["path_prefix"] = prefix
        if "convention" in raw:
            kwargs["convention"] = self.choice(f"{path}.convention", raw["convention"],
                                               ("auto", "x-forwarded", "x-original", "request"))
        return build(ForwardAuth, kwargs) if listen is not None else None

    def admin(self, value: Any) -> Admin:
        raw = self.mapping("admin", value, {"listen"})
        kwargs = {"listen": self.listen("admin.listen", raw["listen"])} if "listen" in raw else {}
        return build(Admin, kwargs)

    def log(self, value: Any) -> Log:
        raw = self.mapping("log", value, {"level", "format"})
        kwargs: dict[str, Any] = {}
        if "level" in raw:
            kwargs["level"] = self.choice(
                "log.level", raw["level"], ("debug", "info", "warning", "error"))
        if "format" in raw:
            kwargs["format"] = self.choice("log.format", raw["format"], ("json", "text"))
        return build(Log, kwargs)

    def tokens(self, value: Any) -> tuple[TokenSource, ...]:
        if value is None:
            return (TokenSource("header", "Authorization"),)
        if not isinstance(value, list) or not value:
            self.problem("tokens", "expected a non-empty list")
            return ()
        out: list[TokenSource] = []
        for i, item in enumerate(value):
            path = f"tokens[{i}]"
            raw = self.mapping(path, item, set(TOKEN_SOURCE_KINDS))
            if len(raw) != 1:
                self.problem(path, f"expected exactly one of {', '.join(TOKEN_SOURCE_KINDS)}")
                continue
            ((kind, name),) = raw.items()
            if kind not in TOKEN_SOURCE_KINDS:
                continue  # reported as an unknown key
            checked = (self.string if kind == "query" else self.token_name)(
                f"{path}.{kind}", name)
            if checked is None:
                continue
            source = TokenSource(cast(TokenSourceKind, kind), checked)
            if any(seen.kind == kind and _same_name(seen, checked) for seen in out):
                # the same place twice would make every request carrying it ambiguous (400)
                self.problem(f"{path}.{kind}", f"duplicate token source {kind} {checked!r}")
                continue
            out.append(source)
        self.token_headers = frozenset(
            _header_key(source.name) for source in out if source.kind == "header")
        return tuple(out)

    def token_name(self, path: str, value: Any) -> str | None:
        """A header or cookie name: an RFC 9110 §5.6.2 token (RFC 6265 §4.1.1 cookie-name)."""
        name = self.string(path, value)
        if name is not None and not HEADER_NAME.match(name):
            self.problem(path, f"not a valid name: {name!r}")
            return None
        return name

    def header_name(self, path: str, value: Any) -> str | None:
        name = self.string(path, value)
        if name is not None and not HEADER_NAME.match(name):
            self.problem(path, f"not a valid header name: {name!r}")
            return None
        if name is not None and (
            _header_key(name) in NOT_FOR_CLAIMS | self.token_headers
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


def warnings(config: Config) -> list[str]:
    """What `jwtproxy check` reports without refusing the config."""
    out = []
    for i, route in enumerate(config.routes):
        if route.resource_metadata is not None and route.forward.authorization == "keep":
            out.append(f"routes[{i}].forward.authorization: keep passes the client's token "
                       "to the upstream; MCP forbids token passthrough (use strip)")
    return out


def _header_key(name: str) -> str:
    """As `headers.normalized_name`: the stripping is `_`/`-` and case-insensitive."""
    return name.lower().replace("_", "-")


def _same_name(source: TokenSource, name: str) -> bool:
    # header names are case-insensitive (RFC 9110 §5.1); cookie and query names are not
    return source.name.lower() == name.lower() if source.kind == "header" else (
        source.name == name)


def _claim_text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
