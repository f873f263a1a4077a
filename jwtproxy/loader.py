"""YAML → `Config`: `${VAR}` substitution, then every check, each problem reported with
its path (`routes[2].auth.scopes`) and line, all at once."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TypeVar, cast
from urllib.parse import urlsplit

import yaml

from .config import (
    ASYMMETRIC_ALGORITHMS,
    COGNITO_HOST_TEMPLATE,
    DEFAULT_ASYMMETRIC_ALGORITHMS,
    DEFAULT_SYMMETRIC_ALGORITHMS,
    SYMMETRIC_ALGORITHMS,
    Admin,
    Auth,
    Config,
    Forward,
    Issuer,
    JwksSettings,
    Listen,
    Log,
    Match,
    Route,
    Server,
    Tls,
    TokenSource,
    TokenSourceKind,
    url_allowed,
)
from .errors import ConfigError

T = TypeVar("T")

MAX_NODES: Final = 100_000
MAX_DEPTH: Final = 32  # the schema nests 5 deep; more is a mistake or an attack
MIN_HMAC_SECRET_BYTES: Final = 32  # RFC 7518 §3.2: a key at least as long as the hash
ENV_PATTERN: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
PARENT_PATH: Final = re.compile(r"(\.[^.\[]*|\[\d+\])$")
DURATION_PATTERN: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
HEADER_NAME: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2 token
HOST_LABEL: Final = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
HOST_NAME: Final = re.compile(rf"{HOST_LABEL}(\.{HOST_LABEL})*")
# Claim headers are stripped from every request on every route, then set: none of these
# may be one (hop-by-hop and framing fields, credentials, what the proxy itself sets).
NOT_FOR_CLAIMS: Final = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
     "trailer", "transfer-encoding", "upgrade", "host", "content-length", "proxy-connection",
     "content-type", "content-encoding", "expect", "authorization", "cookie",
     "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-request-id"}
)
METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


def load_file(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise `ConfigError` listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"{path}: cannot read: {err}"]) from None
    return load_text(text, environ, base_dir=Path(path).resolve().parent)


def load_text(
    text: str, environ: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Config:
    environ = os.environ if environ is None else environ
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError([f"<config>: not valid YAML: {err}"]) from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError(["<config>: not valid YAML: nested too deeply"]) from None
    reader = _Reader(environ)
    data = reader.value(root, "") if root is not None else {}
    if reader.problems:
        raise ConfigError(reader.problems)
    checker = _Checker(reader.lines, base_dir or Path.cwd())
    config = checker.config(data)
    if checker.problems or config is None:
        raise ConfigError(checker.problems)
    return config


class _Reader:
    """Turns YAML nodes into plain values, remembering each path's line."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.lines: dict[str, int] = {}
        self.problems: list[str] = []
        self.nodes = 0
        self.constructor = yaml.constructor.SafeConstructor()
        self.resolver = yaml.resolver.Resolver()

    def value(self, node: yaml.Node, path: str, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ConfigError([f"{path or '<config>'}: too many YAML nodes (aliases?)"])
        if depth > MAX_DEPTH:  # also ends a self-referencing alias (`a: &x {b: *x}`)
            raise ConfigError([f"{path or '<config>'}: nested too deeply (aliases?)"])
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, f"{path}[{i}]", depth + 1)
                    for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[str, Any]:
        try:
            self.constructor.flatten_mapping(node)  # `<<:` merge keys
        except yaml.YAMLError as err:
            self.problem(path, node, f"bad merge key: {getattr(err, 'problem', err)}")
            return {}
        except RecursionError:
            raise ConfigError([f"{path or '<config>'}: merge key refers to itself"]) from None
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(path, key_node, "keys must be strings")
                continue
            key = self.scalar(key_node, path)
            child = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                self.problem(child, key_node, "keys must be strings")
                continue
            if key in result:
                self.problem(child, key_node, "duplicate key")
                continue
            result[key] = self.value(value_node, child, depth + 1)
        return result

    def scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(path, node, "expected a plain value")
            return None
        text = node.value
        if "${" in text:
            text = self.substitute(text, path, node)
            if node.style is None:  # plain scalar: give it the type its new text has
                tag = self.resolver.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
                node = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark)
            else:
                return text
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as err:
            self.problem(path, node, f"bad value: {err}")
            return None

    def substitute(self, text: str, path: str, node: yaml.Node) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = self.environ.get(name)
            if default is not None and not value:  # `:-` as in sh: unset or empty
                return default
            if value is not None:
                return value
            self.problem(path, node, f"environment variable {name} is not set")
            return ""

        return ENV_PATTERN.sub(replace, text)

    def problem(self, path: str, node: yaml.Node, message: str) -> None:
        self.problems.append(f"{path or '<config>'}: {message} (line {node.start_mark.line + 1})")


class _Checker:
    """Validates plain data into `Config`, collecting every problem."""

    def __init__(self, lines: dict[str, int], base_dir: Path) -> None:
        self.lines = lines
        self.base_dir = base_dir
        self.problems: list[str] = []
        self.token_headers: frozenset[str] = frozenset()

    def problem(self, path: str, message: str) -> None:
        line = None
        probe = path
        while line is None and probe:
            line = self.lines.get(probe)
            parent = PARENT_PATH.sub("", probe)
            probe = parent if parent != probe else ""  # a top-level key has no parent
        where = f" (line {line})" if line else ""
        self.problems.append(f"{path or '<config>'}: {message}{where}")

    # -- primitives ---------------------------------------------------------------

    def mapping(self, path: str, value: Any, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, "expected a mapping")
            return {}
        for key in value:
            if key not in allowed:
                self.problem(f"{path}.{key}" if path else key, "unknown key")
        return value

    def free_mapping(self, path: str, value: Any) -> dict[str, Any]:
        """A mapping whose keys are the user's (claim names), not part of the schema."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, "expected a mapping")
            return {}
        return value

    def string(self, path: str, value: Any) -> str | None:
        if isinstance(value, str) and value:
            return value
        self.problem(path, "expected a non-empty string")
        return None

    def strings(self, path: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problem(path, "expected a list of strings")
            return ()
        out = [self.string(f"{path}[{i}]", item) for i, item in enumerate(value)]
        return tuple(item for item in out if item is not None)

    def boolean(self, path: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        self.problem(path, "expected true or false")
        return False

    def integer(self, path: str, value: Any, minimum: int = 1) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        self.problem(path, f"expected a whole number >= {minimum}")
        return None

    def duration(self, path: str, value: Any) -> float | None:
        if (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
                and math.isfinite(value)):
            return float(value)
        if isinstance(value, str) and value and DURATION_PATTERN.sub("", value) == "":
            return sum(
                float(n) * DURATION_UNITS[u] for n, u in DURATION_PATTERN.findall(value)
            )
        self.problem(path, f"bad duration {value!r}: use e.g. 500ms, 30s, 10m, 1h")
        return None

    def choice(self, path: str, value: Any, options: tuple[str, ...]) -> str | None:
        if value in options:
            return str(value)
        self.problem(path, f"expected one of {', '.join(options)}, got {value!r}")
        return None

    def listen(self, path: str, value: Any) -> Listen | None:
        if not isinstance(value, str | int):
            self.problem(path, "expected host:port")
            return None
        host, _, port = str(value).rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            self.problem(path, f"bad listen address {value!r}: expected host:port")
            return None
        if not _is_host(host):
            self.problem(path, f"bad listen address {value!r}: {host!r} is not an IP address "
                         "or host name")
            return None
        return Listen(host, int(port))

    def file(self, path: str, value: Any) -> str | None:
        name = self.string(path, value)
        if name is None:
            return None
        full = (self.base_dir / name) if not Path(name).is_absolute() else Path(name)
        if not full.is_file():
            self.problem(path, f"file not found: {name}")
            return None
        return str(full)

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

    def url(self, path: str, value: Any, insecure_ok: bool = False) -> str | None:
        """An http(s) URL; plain http only to loopback unless `insecure_ok`."""
        text = self.string(path, value)
        if text is None:
            return None
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError as err:
            self.problem(path, f"bad URL {text!r}: {err}")
            return None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(path, f"expected an http(s):// URL, got {text!r}")
            return None
        if not url_allowed(text, insecure_ok):
            self.problem(
                path, "plain http:// is allowed only to a loopback host "
                "(set allow_insecure_http: true to override)"
            )
            return None
        return text

    # -- sections -------------------------------------------------------------------

    def config(self, data: Any) -> Config | None:
        top = self.mapping("", data, {"server", "admin", "log", "issuers", "tokens", "routes"})
        server = self.server(top.get("server"))
        admin = self.admin(top.get("admin"))
        log = self.log(top.get("log"))
        issuers = self.issuers(top.get("issuers"))
        tokens = self.tokens(top.get("tokens"))
        routes = self.routes(top.get("routes"), issuers)
        if server.listen == admin.listen:
            self.problem("admin.listen", "must differ from server.listen")
        if self.problems:
            return None
        return Config(issuers, routes, tokens, server, admin, log)

    def server(self, value: Any) -> Server:
        path = "server"
        raw = self.mapping(path, value, {
            "listen", "workers", "graceful_timeout", "keepalive_timeout", "max_token_bytes", "tls",
            "trusted_proxies",
        })
        kwargs: dict[str, Any] = {}
        if "listen" in raw:
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
            networks = self.strings(f"{path}.trusted_proxies", raw["trusted_proxies"])
            for i, net in enumerate(networks):
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    self.problem(f"{path}.trusted_proxies[{i}]", f"not an IP network: {net!r}")
            kwargs["trusted_proxies"] = networks
        return _build(Server, kwargs)

    def admin(self, value: Any) -> Admin:
        raw = self.mapping("admin", value, {"listen"})
        kwargs = {"listen": self.listen("admin.listen", raw["listen"])} if "listen" in raw else {}
        return _build(Admin, kwargs)

    def log(self, value: Any) -> Log:
        raw = self.mapping("log", value, {"level", "format"})
        kwargs: dict[str, Any] = {}
        if "level" in raw:
            kwargs["level"] = self.choice(
                "log.level", raw["level"], ("debug", "info", "warning", "error"))
        if "format" in raw:
            kwargs["format"] = self.choice("log.format", raw["format"], ("json", "text"))
        return _build(Log, kwargs)

    def issuers(self, value: Any) -> dict[str, Issuer]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem("issuers", "expected a mapping of issuer names")
            return {}
        out = {}
        for name, raw in value.items():
            issuer = self.issuer(f"issuers.{name}", name, raw)
            if issuer is not None:
                out[name] = issuer
        return out

    def issuer(self, path: str, name: str, value: Any) -> Issuer | None:
        raw = self.mapping(path, value, {
            "issuer", "jwks_uri", "jwks_file", "secret", "cognito", "audiences", "token_use",
            "algorithms", "leeway", "jwks", "typ", "ca_file", "allow_insecure_http",
        })
        if not isinstance(value, dict):
            if value is None:
                self.problem(path, "expected a mapping")
            return None
        kwargs: dict[str, Any] = {"name": name}
        insecure = self.boolean(f"{path}.allow_insecure_http", raw.get("allow_insecure_http",
                                                                       False))
        kwargs["allow_insecure_http"] = insecure
        sources = [key for key in ("jwks_uri", "jwks_file", "secret", "cognito") if key in raw]
        if len(sources) > 1:
            self.problem(path, f"choose one key source, not {' and '.join(sources)}")
        if "cognito" in raw:
            if "issuer" in raw:
                self.problem(f"{path}.issuer", "not allowed with cognito: it is derived")
            kwargs.update(self.cognito(f"{path}.cognito", raw["cognito"], insecure))
        elif "issuer" not in raw:
            self.problem(f"{path}.issuer", "required (or use the cognito: shorthand)")
        else:
            kwargs["issuer"] = self.string(f"{path}.issuer", raw["issuer"])
        if "jwks_uri" in raw:
            kwargs["jwks_uri"] = self.url(f"{path}.jwks_uri", raw["jwks_uri"], insecure)
        if "jwks_file" in raw:
            kwargs["jwks_file"] = self.file(f"{path}.jwks_file", raw["jwks_file"])
        if "secret" in raw:
            secret = self.string(f"{path}.secret", raw["secret"])
            if secret is not None and len(secret.encode()) < MIN_HMAC_SECRET_BYTES:
                self.problem(f"{path}.secret", f"too short: use at least "
                             f"{MIN_HMAC_SECRET_BYTES} bytes (RFC 7518 §3.2)")
            kwargs["secret"] = secret
        if not sources and isinstance(kwargs.get("issuer"), str):
            issuer_url = kwargs["issuer"]
            if urlsplit(issuer_url).scheme in ("http", "https"):
                if self.url(f"{path}.issuer", issuer_url, insecure):
                    kwargs["discovery_uri"] = (
                        issuer_url.rstrip("/") + "/.well-known/openid-configuration")
            else:
                self.problem(path, "no key source: set jwks_uri, jwks_file or secret, "
                             "or make issuer an https:// URL for OIDC discovery")
        kwargs["algorithms"] = self.algorithms(path, raw, symmetric="secret" in raw)
        if "audiences" in raw:
            kwargs["audiences"] = self.strings(f"{path}.audiences", raw["audiences"])
        if "token_use" in raw:
            kwargs["token_use"] = self.choice(f"{path}.token_use", raw["token_use"],
                                              ("id", "access"))
        if "typ" in raw:
            kwargs["typ"] = self.string(f"{path}.typ", raw["typ"])
        if "leeway" in raw:
            kwargs["leeway"] = self.duration(f"{path}.leeway", raw["leeway"])
        if "jwks" in raw:
            kwargs["jwks"] = self.jwks_settings(f"{path}.jwks", raw["jwks"])
        if "ca_file" in raw:
            kwargs["ca_file"] = self.file(f"{path}.ca_file", raw["ca_file"])
        if kwargs.get("issuer") is None:
            return None
        return _build(Issuer, kwargs)

    def cognito(self, path: str, value: Any, insecure: bool) -> dict[str, Any]:
        raw = self.mapping(path, value, {"region", "user_pool_id", "endpoint"})
        region = self.string(f"{path}.region", raw.get("region"))
        pool = self.string(f"{path}.user_pool_id", raw.get("user_pool_id"))
        if region and not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
            self.problem(f"{path}.region", f"not an AWS region: {region!r}")
        if pool and not re.fullmatch(r"[\w-]+_[0-9a-zA-Z]+", pool):
            self.problem(f"{path}.user_pool_id", f"not a user pool id: {pool!r}")
        if not region or not pool:
            return {}
        base = COGNITO_HOST_TEMPLATE.format(region=region)
        if "endpoint" in raw:
            endpoint = self.url(f"{path}.endpoint", raw["endpoint"], insecure)
            key_base = endpoint.rstrip("/") if endpoint else base
        else:
            key_base = base
        return {"issuer": f"{base}/{pool}", "jwks_uri": f"{key_base}/{pool}/.well-known/jwks.json"}

    def algorithms(self, path: str, raw: dict[str, Any], symmetric: bool) -> tuple[str, ...]:
        if "algorithms" not in raw:
            return DEFAULT_SYMMETRIC_ALGORITHMS if symmetric else DEFAULT_ASYMMETRIC_ALGORITHMS
        names = self.strings(f"{path}.algorithms", raw["algorithms"])
        allowed = SYMMETRIC_ALGORITHMS if symmetric else ASYMMETRIC_ALGORITHMS
        for i, name in enumerate(names):
            if name not in allowed:
                hint = ("a secret verifies only HS256/HS384/HS512" if symmetric else
                        "HS* needs `secret`" if name in SYMMETRIC_ALGORITHMS else
                        f"supported: {', '.join(sorted(allowed))}")
                self.problem(f"{path}.algorithms[{i}]", f"{name!r} not allowed here: {hint}")
        if not names:
            self.problem(f"{path}.algorithms", "must not be empty")
        return names

    def jwks_settings(self, path: str, value: Any) -> JwksSettings:
        known = {"cache_ttl", "refresh_min_interval", "stale_if_error", "timeout"}
        raw = self.mapping(path, value, known)
        kwargs = {key: self.duration(f"{path}.{key}", raw[key]) for key in raw if key in known}
        return _build(JwksSettings, kwargs)

    def tokens(self, value: Any) -> tuple[TokenSource, ...]:
        if value is None:
            return (TokenSource("header", "Authorization"),)
        if not isinstance(value, list) or not value:
            self.problem("tokens", "expected a non-empty list")
            return ()
        out: list[TokenSource] = []
        for i, item in enumerate(value):
            path = f"tokens[{i}]"
            raw = self.mapping(path, item, {"header", "cookie", "query"})
            if len(raw) != 1:
                self.problem(path, "expected exactly one of header, cookie, query")
                continue
            ((kind, name),) = raw.items()
            if kind not in ("header", "cookie", "query"):
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
            "ca_file"})
        kwargs: dict[str, Any] = {
            "name": self.string(f"{path}.name", raw.get("name")),
            "upstream": self.upstream(f"{path}.upstream", raw.get("upstream")),
            "match": self.match(f"{path}.match", raw.get("match")),
        }
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
        if kwargs["name"] is None or kwargs["upstream"] is None:
            return None
        route = _build(Route, kwargs)
        return replace(route, auth=None) if public else route

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
        return _build(Match, kwargs)

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
            claims = self.free_mapping(f"{path}.claims", raw["claims"])
            pairs = []
            for claim, expected in claims.items():
                if not isinstance(expected, str | int | bool):
                    self.problem(f"{path}.claims.{claim}", "expected a string, number or bool")
                    continue
                pairs.append((claim, _claim_text(expected)))
            kwargs["claims"] = tuple(pairs)
        return _build(Auth, kwargs)

    def forward(self, path: str, value: Any) -> Forward:
        raw = self.mapping(path, value, {"claims", "payload_header", "authorization"})
        kwargs: dict[str, Any] = {}
        if "claims" in raw:
            claims = self.free_mapping(f"{path}.claims", raw["claims"])
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
        return _build(Forward, kwargs)


def _header_key(name: str) -> str:
    """As `headers.normalized_name`: the stripping is `_`/`-` and case-insensitive."""
    return name.lower().replace("_", "-")


def _same_name(source: TokenSource, name: str) -> bool:
    # header names are case-insensitive (RFC 9110 §5.1); cookie and query names are not
    return source.name.lower() == name.lower() if source.kind == "header" else (
        source.name == name)


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return HOST_NAME.fullmatch(host) is not None
    return True


def _claim_text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)



def _build(cls: Callable[..., T], kwargs: dict[str, Any]) -> T:
    """Construct with the checked values; a None (already reported) takes the default."""
    return cls(**{key: value for key, value in kwargs.items() if value is not None})
