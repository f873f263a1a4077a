"""Plain config data and the line of each path → `Config`, with every problem at its path."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, cast

from . import arn_patterns
from .config import (
    Admin,
    AwsLambda,
    Config,
    ForwardAuth,
    Log,
    Server,
    Tls,
    TokenSource,
    TokenSourceKind,
    is_loopback_host,
)
from .fields import build
from .issuer_validation import IssuerValidator
from .revocation_validation import revocation_settings
from .route_validation import HEADER_NAME, RouteValidator, header_key

TOKEN_SOURCE_KINDS: Final = ("header", "cookie", "query", "websocket_protocol")


class Validator(IssuerValidator, RouteValidator):
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
            header_key(source.name) for source in out if source.kind == "header")
        return tuple(out)

    def token_name(self, path: str, value: Any) -> str | None:
        """A header or cookie name: an RFC 9110 §5.6.2 token (RFC 6265 §4.1.1 cookie-name)."""
        name = self.string(path, value)
        if name is not None and not HEADER_NAME.match(name):
            self.problem(path, f"not a valid name: {name!r}")
            return None
        return name

def warnings(config: Config) -> list[str]:
    """What `jwtproxy check` reports without refusing the config."""
    out = []
    for i, route in enumerate(config.routes):
        if route.resource_metadata is not None and route.forward.authorization == "keep":
            out.append(f"routes[{i}].forward.authorization: keep passes the client's token "
                       "to the upstream; MCP forbids token passthrough (use strip)")
    return out


def _same_name(source: TokenSource, name: str) -> bool:
    # header names are case-insensitive (RFC 9110 §5.1); cookie and query names are not
    return source.name.lower() == name.lower() if source.kind == "header" else (
        source.name == name)
