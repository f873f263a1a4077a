"""The config as frozen value objects, with the defaults as named constants.

`loader` reads YAML and `validation` builds these, reporting every problem with its path;
everything downstream receives only a valid `Config`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit

# where prometheus-client's multiprocess mode keeps the workers' figures (the supervisor
# sets it; here so that the supervisor need not import prometheus-client to name it)
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_LISTEN: Final = ("0.0.0.0", 8080)
DEFAULT_ADMIN_LISTEN: Final = ("127.0.0.1", 9090)
# forward_auth: whose X-Forwarded-* / X-Original-* describe the original request
DEFAULT_FORWARD_AUTH_TRUSTED: Final = ("127.0.0.0/8", "::1/128")
DEFAULT_GRACEFUL_TIMEOUT: Final = 30.0
DEFAULT_KEEPALIVE_TIMEOUT: Final = 60.0
DEFAULT_MAX_TOKEN_BYTES: Final = 8192
DEFAULT_LEEWAY: Final = 60.0
DEFAULT_CACHE_TTL: Final = 600.0
DEFAULT_REFRESH_MIN_INTERVAL: Final = 30.0
DEFAULT_STALE_IF_ERROR: Final = 86400.0
DEFAULT_FETCH_TIMEOUT: Final = 5.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_READ_TIMEOUT: Final = 60.0
# Idle upstream connections are closed before the upstream's own keep-alive timeout could
# (Node's, uvicorn's and Apache's is 5 s), so a reused one is rarely found dead.
DEFAULT_UPSTREAM_IDLE_TIMEOUT: Final = 4.0
DEFAULT_UPSTREAM_MAX_IDLE: Final = 128  # idle connections kept per upstream
DEFAULT_SYNC_INTERVAL: Final = 30.0
DEFAULT_MAX_TOKEN_LIFETIME: Final = 86400.0  # Cognito's longest access / ID token lifetime
DEFAULT_KEY_PREFIX: Final = "jwtproxy:"
DEFAULT_ASYMMETRIC_ALGORITHMS: Final = ("RS256",)
DEFAULT_SYMMETRIC_ALGORITHMS: Final = ("HS256",)
DEFAULT_DPOP_MAX_AGE: Final = 300.0
DEFAULT_DPOP_ALGORITHMS: Final = ("ES256", "EdDSA", "Ed25519", "RS256", "PS256")
COGNITO_HOST_TEMPLATE: Final = "https://cognito-idp.{region}.amazonaws.com"
LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain"})
# RFC 9110 §7.6.1 hop-by-hop fields, plus the non-standard ones proxies still see.
HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
# What the proxy sets on every forwarded request (client copies never pass).
PROXY_SET_HEADERS: Final = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-request-id"})

ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
     "EdDSA", "Ed25519"}
)
SYMMETRIC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})

NO_UPSTREAM: Final = ""

AuthMode = Literal["required", "optional", "report_only"]
TokenUse = Literal["id", "access"]
TokenSourceKind = Literal["header", "cookie", "query", "websocket_protocol"]
ForwardConvention = Literal["auto", "x-forwarded", "x-original", "request"]
LambdaResponse = Literal["policy", "simple"]
PolicyScope = Literal["request", "routes"]
DpopMode = Literal["allowed", "required", "off"]


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Tls:
    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class Server:
    listen: Listen | None = Listen(*DEFAULT_LISTEN)  # None: the proxy door is off
    workers: int = 1
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES
    tls: Tls | None = None
    trusted_proxies: tuple[str, ...] = ()
    upstream_idle_timeout: float = DEFAULT_UPSTREAM_IDLE_TIMEOUT
    upstream_max_idle: int = DEFAULT_UPSTREAM_MAX_IDLE


@dataclass(frozen=True, slots=True)
class Admin:
    listen: Listen = Listen(*DEFAULT_ADMIN_LISTEN)


@dataclass(frozen=True, slots=True)
class Log:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


@dataclass(frozen=True, slots=True)
class JwksSettings:
    cache_ttl: float = DEFAULT_CACHE_TTL
    refresh_min_interval: float = DEFAULT_REFRESH_MIN_INTERVAL
    stale_if_error: float = DEFAULT_STALE_IF_ERROR
    timeout: float = DEFAULT_FETCH_TIMEOUT


@dataclass(frozen=True, slots=True)
class Dpop:
    """RFC 9449 for one issuer: `allowed` (a token with `cnf.jkt` needs a proof, one
    without is a bearer token), `required` (bearer tokens refused) or `off`."""

    mode: DpopMode = "allowed"
    max_age: float = DEFAULT_DPOP_MAX_AGE
    algorithms: tuple[str, ...] = DEFAULT_DPOP_ALGORITHMS


DEFAULT_DPOP: Final = Dpop()


@dataclass(frozen=True, slots=True)
class Issuer:
    """One trusted token issuer and where its keys come from.

    Exactly one key source is set: `jwks_uri`, `discovery_uri`, `jwks_file` or `secret`.
    """

    name: str
    issuer: str
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ASYMMETRIC_ALGORITHMS
    leeway: float = DEFAULT_LEEWAY
    token_use: TokenUse | None = None
    typ: str | None = None
    jwks_uri: str | None = None
    discovery_uri: str | None = None
    jwks_file: str | None = None
    secret: str | None = None
    jwks: JwksSettings = JwksSettings()
    ca_file: str | None = None
    allow_insecure_http: bool = False
    # None: no `dpop:` in the config. Bound tokens still need their proof (the defaults of
    # `Dpop`), but DPoP is not advertised in challenges or metadata until configured.
    dpop: Dpop | None = None

    @property
    def dpop_settings(self) -> Dpop:
        return self.dpop if self.dpop is not None else DEFAULT_DPOP


@dataclass(frozen=True, slots=True)
class TokenSource:
    kind: TokenSourceKind
    name: str


@dataclass(frozen=True, slots=True)
class Match:
    host: str | None = None
    path: str | None = None
    path_prefix: str | None = None
    methods: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Auth:
    mode: AuthMode = "required"
    issuers: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    any_scopes: tuple[str, ...] = ()
    claims: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Forward:
    claims: tuple[tuple[str, str], ...] = ()
    payload_header: str | None = None
    authorization: Literal["keep", "strip"] = "keep"


@dataclass(frozen=True, slots=True)
class ResourceMetadata:
    """RFC 9728 protected-resource metadata of a route; None/empty = derived (DESIGN)."""

    resource: str | None = None  # default: scheme://host + the route's path
    authorization_servers: tuple[str, ...] = ()  # default: the route's issuers
    scopes_supported: tuple[str, ...] | None = None  # default: the route's scopes


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    upstream: str = NO_UPSTREAM  # none: forward-auth and Lambda only (the proxy answers 404)
    match: Match = Match()
    auth: Auth | None = field(default_factory=Auth)  # None = `auth: none`
    forward: Forward = Forward()
    cors_preflight: Literal["pass", "authenticate"] = "authenticate"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    ca_file: str | None = None
    resource_metadata: ResourceMetadata | None = None


@dataclass(frozen=True, slots=True)
class ForwardAuth:
    """The forward-auth door: a gateway's auth subrequests, answered from the same policy."""

    listen: Listen
    trusted_proxies: tuple[str, ...] = DEFAULT_FORWARD_AUTH_TRUSTED
    path_prefix: str = ""  # Envoy ext_authz `path_prefix`, removed from the request's path
    convention: ForwardConvention = "auto"  # which headers describe the original request


@dataclass(frozen=True, slots=True)
class AwsLambda:
    """The Lambda authorizer door: what it answers with, and what its policy covers."""

    response: LambdaResponse = "policy"  # simple: HTTP API 2.0 enableSimpleResponses
    policy_scope: PolicyScope = "request"  # routes: every route's patterns (authorizer cache)


@dataclass(frozen=True, slots=True)
class RedisStore:
    url: str
    key_prefix: str = DEFAULT_KEY_PREFIX


@dataclass(frozen=True, slots=True)
class Revocation:
    """The deny-list's store: a YAML `file`, or `redis` shared by every replica."""

    file: str | None = None
    redis: RedisStore | None = None
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    max_token_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME


@dataclass(frozen=True, slots=True)
class Config:
    issuers: dict[str, Issuer]
    routes: tuple[Route, ...]
    tokens: tuple[TokenSource, ...] = (TokenSource("header", "Authorization"),)
    server: Server = Server()
    admin: Admin = Admin()
    log: Log = Log()
    forward_auth: ForwardAuth | None = None
    aws_lambda: AwsLambda = AwsLambda()
    revocation: Revocation | None = None

    def claim_header_names(self) -> frozenset[str]:
        """Every header name any route fills from claims: stripped from every request."""
        names: set[str] = set()
        for route in self.routes:
            names.update(header for _, header in route.forward.claims)
            if route.forward.payload_header:
                names.add(route.forward.payload_header)
        return frozenset(names)


def is_loopback_host(host: str) -> bool:
    """True for names and addresses that stay on this machine (plain http is allowed there)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_allowed(url: str, insecure_ok: bool) -> bool:
    """https:// anywhere; plain http:// only to loopback unless `insecure_ok`."""
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return False
    return parts.scheme == "https" or insecure_ok or is_loopback_host(parts.hostname)
