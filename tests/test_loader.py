"""Config loading: every problem reported with its path and line, all at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jwtproxy.config import Auth, Config, Listen, TokenSource
from jwtproxy.errors import ConfigError
from jwtproxy.loader import load_file, load_text

REPO = Path(__file__).resolve().parent.parent
SECRET = "0123456789abcdef0123456789abcdef"  # 32 bytes
RSA_ONLY = ("ES256, ES384, ES512, Ed25519, EdDSA, PS256, PS384, PS512, RS256, RS384, "
            "RS512")
NO_ROUTES = "routes: expected a non-empty list (no route means every request is answered 404)"


def cfg(issuer: str = "", route: str = "", more_routes: str = "", top: str = "") -> str:
    """A valid config; each argument is YAML inserted at its level (not indented)."""
    return (
        "issuers:\n"
        "  dev:\n"
        "    issuer: dev\n"
        f"    secret: {SECRET}\n"
        + textwrap.indent(textwrap.dedent(issuer), "    ")
        + "routes:\n"
        "  - name: api\n"
        "    upstream: http://127.0.0.1:8000\n"
        + textwrap.indent(textwrap.dedent(route), "    ")
        + textwrap.indent(textwrap.dedent(more_routes), "  ")
        + textwrap.dedent(top)
    )


def line_of(text: str, marker: str) -> int:
    """1-based number of the first line containing `marker`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in config")


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, environ or {})
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def load(text: str, environ: dict[str, str] | None = None) -> Config:
    return load_text(text, environ or {})


def test_base_config_loads() -> None:
    config = load(cfg())
    assert list(config.issuers) == ["dev"]
    assert config.issuers["dev"].secret == SECRET
    assert config.issuers["dev"].algorithms == ("HS256",)
    assert [route.name for route in config.routes] == ["api"]
    assert config.routes[0].upstream == "http://127.0.0.1:8000"


# -- one problem each: (config, problem without line, marker of the reported line) ------

ONE_PROBLEM: list[tuple[str, str, str, str | None]] = [
    # unknown keys, at every level
    ("top", cfg(top="extra: 1\n"), "extra: unknown key", "extra:"),
    ("server", cfg(top="server:\n  listne: 1\n"), "server.listne: unknown key", "listne"),
    ("admin", cfg(top="admin: {port: 1}\n"), "admin.port: unknown key", "admin:"),
    ("log", cfg(top="log: {colour: red}\n"), "log.colour: unknown key", "log:"),
    ("issuer", cfg(issuer="audience: [x]\n"), "issuers.dev.audience: unknown key", "audience"),
    ("issuer.jwks", cfg(issuer="jwks: {ttl: 1s}\n"), "issuers.dev.jwks.ttl: unknown key",
     "jwks:"),
    ("route", cfg(route="upstreams: x\n"), "routes[0].upstreams: unknown key", "upstreams"),
    ("match", cfg(route="match: {prefix: /x}\n"), "routes[0].match.prefix: unknown key",
     "match:"),
    ("auth", cfg(route="auth: {scope: [a]}\n"), "routes[0].auth.scope: unknown key", "auth:"),
    ("forward", cfg(route="forward: {headers: {}}\n"),
     "routes[0].forward.headers: unknown key", "forward:"),
    ("timeouts", cfg(route="timeouts: {total: 1s}\n"),
     "routes[0].timeouts.total: unknown key", "timeouts:"),
    ("tokens", cfg(top="tokens: [{form: t}]\n"), "tokens[0].form: unknown key", "tokens:"),
    # wrong types and values
    ("workers word", cfg(top="server: {workers: many}\n"),
     "server.workers: expected a whole number >= 1", "server:"),
    ("workers zero", cfg(top="server: {workers: 0}\n"),
     "server.workers: expected a whole number >= 1", "server:"),
    ("workers bool", cfg(top="server: {workers: true}\n"),
     "server.workers: expected a whole number >= 1", "server:"),
    ("max_token_bytes", cfg(top="server: {max_token_bytes: 10}\n"),
     "server.max_token_bytes: expected a whole number >= 64", "server:"),
    ("trusted_proxies", cfg(top="server: {trusted_proxies: [10.0.0.0/8, nope]}\n"),
     "server.trusted_proxies[1]: not an IP network: 'nope'", "server:"),
    ("log level", cfg(top="log: {level: trace}\n"),
     "log.level: expected one of debug, info, warning, error, got 'trace'", "log:"),
    ("log format", cfg(top="log: {format: xml}\n"),
     "log.format: expected one of json, text, got 'xml'", "log:"),
    ("audiences", cfg(issuer="audiences: {a: b}\n"),
     "issuers.dev.audiences: expected a list of strings", "audiences"),
    ("insecure flag", cfg(issuer="allow_insecure_http: yes please\n"),
     "issuers.dev.allow_insecure_http: expected true or false", "allow_insecure_http"),
    ("token_use", cfg(issuer="token_use: refresh\n"),
     "issuers.dev.token_use: expected one of id, access, got 'refresh'", "token_use"),
    ("typ", cfg(issuer="typ: 5\n"), "issuers.dev.typ: expected a non-empty string", "typ:"),
    ("jwks settings", cfg(issuer="jwks: 5m\n"), "issuers.dev.jwks: expected a mapping",
     "jwks:"),
    ("scopes mapping", cfg(more_routes="""\
        - name: second
          upstream: http://127.0.0.1:8000
          auth:
            scopes: {a: 1}
        """), "routes[1].auth.scopes: expected a list of strings", "a: 1"),
    ("scope item", cfg(route="auth: {scopes: [a, 5]}\n"),
     "routes[0].auth.scopes[1]: expected a non-empty string", "auth:"),
    ("any_scopes item", cfg(route="auth: {any_scopes: ['']}\n"),
     "routes[0].auth.any_scopes[0]: expected a non-empty string", "auth:"),
    ("method", cfg(route="match: {methods: [GET, FETCH]}\n"),
     "routes[0].match.methods[1]: unknown method 'FETCH'", "match:"),
    ("path relative", cfg(route="match: {path: health}\n"),
     "routes[0].match.path: must start with /", "match:"),
    ("path and prefix", cfg(route="match: {path: /a, path_prefix: /b}\n"),
     "routes[0].match: use path or path_prefix, not both", "match:"),
    ("host with port", cfg(route="match: {host: 'api.example.com:8080'}\n"),
     "routes[0].match.host: expected a host name without port, or *.domain, "
     "got 'api.example.com:8080'", "match:"),
    ("host wildcard inside", cfg(route="match: {host: 'api.*.com'}\n"),
     "routes[0].match.host: expected a host name without port, or *.domain, "
     "got 'api.*.com'", "match:"),
    ("cors_preflight", cfg(route="cors_preflight: maybe\n"),
     "routes[0].cors_preflight: expected one of pass, authenticate, got 'maybe'",
     "cors_preflight"),
    ("authorization", cfg(route="forward: {authorization: drop}\n"),
     "routes[0].forward.authorization: expected one of keep, strip, got 'drop'", "forward"),
    ("claim header name", cfg(route="forward: {claims: {sub: X Auth}}\n"),
     "routes[0].forward.claims.sub: not a valid header name: 'X Auth'", "forward"),
    ("claim header hop", cfg(route="forward: {claims: {sub: Connection}}\n"),
     "routes[0].forward.claims.sub: Connection cannot carry claims (it would be stripped "
     "from every request)", "forward"),
    ("payload header", cfg(route="forward: {payload_header: 'a:b'}\n"),
     "routes[0].forward.payload_header: not a valid header name: 'a:b'", "forward"),
    ("forward claims list", cfg(route="forward: {claims: [sub]}\n"),
     "routes[0].forward.claims: expected a mapping", "forward"),
    ("auth claims list", cfg(route="auth: {claims: [{a: b}]}\n"),
     "routes[0].auth.claims: expected a mapping", "auth:"),
    ("auth claims number", cfg(route="auth: {claims: 5}\n"),
     "routes[0].auth.claims: expected a mapping", "auth:"),
    ("auth claim float", cfg(route="auth: {claims: {level: 1.5}}\n"),
     "routes[0].auth.claims.level: expected a string, number or bool", "auth:"),
    ("auth claim list value", cfg(route="auth: {claims: {groups: [a]}}\n"),
     "routes[0].auth.claims.groups: expected a string, number or bool", "auth:"),
    ("auth word", cfg(route="auth: always\n"),
     "routes[0].auth: expected `none` or a mapping, got 'always'", "auth:"),
    ("auth bool", cfg(route="auth: off\n"), "routes[0].auth: expected a mapping", "auth:"),
    ("auth None", cfg(route="auth: None\n"),
     "routes[0].auth: expected `none` or a mapping, got 'None'", "auth:"),
    ("auth mode", cfg(route="auth: {mode: strict}\n"),
     "routes[0].auth.mode: expected one of required, optional, report_only, got 'strict'",
     "auth:"),
    ("unknown issuer", cfg(route="auth: {issuers: [dev, nope]}\n"),
     "routes[0].auth.issuers[1]: unknown issuer 'nope'", "auth:"),
    ("duplicate route", cfg(more_routes="""\
        - name: api  # again
          upstream: http://127.0.0.1:8001
        """), "routes[1].name: duplicate route name 'api'", "again"),
    ("route name", cfg(more_routes="""\
        - name: 5
          upstream: http://127.0.0.1:8001
        """), "routes[1].name: expected a non-empty string", "name: 5"),
    ("upstream path", cfg(more_routes="""\
        - name: two
          upstream: http://127.0.0.1:8001/base
        """), "routes[1].upstream: expected scheme://host[:port] only: the request path is "
              "kept", "8001"),
    ("upstream scheme", cfg(more_routes="""\
        - name: two
          upstream: ftp://files.example.com
        """), "routes[1].upstream: expected an http(s):// URL, got 'ftp://files.example.com'",
     "ftp:"),
    ("tokens two kinds", cfg(top="tokens:\n  - {header: X-Token, cookie: token}\n"),
     "tokens[0]: expected exactly one of header, cookie, query, websocket_protocol", "X-Token"),
    ("tokens empty", cfg(top="tokens: []\n"), "tokens: expected a non-empty list", "tokens"),
    ("tokens duplicate", cfg(top="tokens:\n  - header: X-Token\n  - header: x-token\n"),
     "tokens[1].header: duplicate token source header 'x-token'", "x-token"),
    ("cookie name", cfg(top="tokens: [{cookie: 'a=b'}]\n"),
     "tokens[0].cookie: not a valid name: 'a=b'", "tokens"),
    ("listen clash", cfg(top="server: {listen: '127.0.0.1:9090'}\n"),
     "admin.listen: must differ from server.listen", None),  # no admin: section, no line
    # issuers
    ("issuer without key source", cfg().replace(f"    secret: {SECRET}\n", ""),
     "issuers.dev: no key source: set jwks_uri, jwks_file or secret, or make issuer an "
     "https:// URL for OIDC discovery", "issuer: dev"),
    ("two key sources", cfg(issuer="jwks_uri: https://idp.example.com/keys\n"),
     "issuers.dev: choose one key source, not jwks_uri and secret", "issuer: dev"),
    ("secret short", cfg().replace(SECRET, SECRET[:31]),
     "issuers.dev.secret: too short: use at least 32 bytes (RFC 7518 §3.2)", "secret"),
    ("secret not a string", cfg().replace(SECRET, "[a]"),
     "issuers.dev.secret: expected a non-empty string", "secret"),
    ("secret with RS256", cfg(issuer="algorithms: [HS256, RS256]\n"),
     "issuers.dev.algorithms[1]: 'RS256' not allowed here: a secret verifies only "
     "HS256/HS384/HS512", "algorithms"),
    ("secret with none", cfg(issuer="algorithms: [none]\n"),
     "issuers.dev.algorithms[0]: 'none' not allowed here: a secret verifies only "
     "HS256/HS384/HS512", "algorithms"),
    ("algorithms empty", cfg(issuer="algorithms: []\n"),
     "issuers.dev.algorithms: must not be empty", "algorithms"),
    ("leeway", cfg(issuer="leeway: 5x\n"),
     "issuers.dev.leeway: bad duration '5x': use e.g. 500ms, 30s, 10m, 1h", "leeway"),
    ("jwks_file missing", cfg().replace(f"secret: {SECRET}", "jwks_file: nope.json"),
     "issuers.dev.jwks_file: file not found: nope.json", "jwks_file"),
    ("issuer plain http", cfg().replace(f"    secret: {SECRET}\n", "").replace(
        "issuer: dev", "issuer: http://idp.example.com/"),
     "issuers.dev.issuer: plain http:// is allowed only to a loopback host (set "
     "allow_insecure_http: true to override)", "issuer: http"),
]


@pytest.mark.parametrize(("text", "expected", "marker"),
                         [case[1:] for case in ONE_PROBLEM], ids=[c[0] for c in ONE_PROBLEM])
def test_one_problem_with_path_and_line(text: str, expected: str, marker: str | None) -> None:
    where = f" (line {line_of(text, marker)})" if marker else ""
    assert problems(text) == [expected + where]


def test_missing_sections_have_no_line() -> None:
    assert problems("") == [NO_ROUTES]
    assert problems("issuers: {}\n") == [NO_ROUTES]


def test_every_problem_reported_at_once() -> None:
    text = cfg(
        issuer="leeway: -1s\nalgorithms: [HS256, none]\n",
        route="auth: {issuers: [dev, ghost], scopes: {a: b}}\n",
        more_routes="""\
            - name: api
              upstream: http://127.0.0.1:8000
              bogus: 1
            """,
        top="server:\n  workers: 0\n  graceful_timeout: 1d\n",
    )
    found = problems(text)
    assert [p.split(":", 1)[0] for p in found] == [
        "server.workers", "server.graceful_timeout", "issuers.dev.algorithms[1]",
        "issuers.dev.leeway", "routes[0].auth.issuers[1]", "routes[0].auth.scopes",
        "routes[1].bogus", "routes[1].name",
    ]
    assert all(p.endswith(")") and "(line " in p for p in found)
    assert f"issuers.dev.leeway: bad duration '-1s': use e.g. 500ms, 30s, 10m, 1h (line " \
           f"{line_of(text, 'leeway')})" in found
    assert f"routes[1].bogus: unknown key (line {line_of(text, 'bogus')})" in found


def test_issuer_missing() -> None:
    text = cfg().replace("    issuer: dev\n", "")
    assert problems(text) == [
        "issuers.dev.issuer: required (or use the cognito: shorthand) (line 3)",
        # the issuer is left out, so the route has none to accept
        "routes[0].auth: a protected route needs at least one issuer under `issuers:` "
        "(line 5)",
    ]


def test_route_without_issuers_and_issuers_not_a_mapping() -> None:
    text = "issuers: [a]\nroutes:\n  - {name: r, upstream: 'http://127.0.0.1:1'}\n"
    assert problems(text) == [
        "issuers: expected a mapping of issuer names (line 1)",
        "routes[0].auth: a protected route needs at least one issuer under `issuers:` "
        "(line 3)",
    ]


def test_alg_none_and_hs_without_secret() -> None:
    text = cfg().replace(f"secret: {SECRET}", "jwks_uri: https://idp.example.com/keys") \
        .replace("    issuer: dev\n", "    issuer: dev\n    algorithms: [RS256, none, HS256]\n")
    line = line_of(text, "algorithms")
    assert problems(text) == [
        f"issuers.dev.algorithms[1]: 'none' not allowed here: supported: {RSA_ONLY} "
        f"(line {line})",
        f"issuers.dev.algorithms[2]: 'HS256' not allowed here: HS* needs `secret` "
        f"(line {line})",
    ]


@pytest.mark.parametrize(("secret", "ok"), [
    (SECRET, True), (SECRET[:31], False), ("é" * 16, True), ("é" * 15 + "e", False),
])
def test_secret_length_counts_bytes(secret: str, ok: bool) -> None:
    text = cfg().replace(SECRET, f"'{secret}'")
    if ok:
        assert load(text).issuers["dev"].secret == secret
    else:
        assert problems(text)[0].startswith("issuers.dev.secret: too short")


def test_default_algorithms_follow_the_key_source() -> None:
    jwks = cfg().replace(f"secret: {SECRET}", "jwks_uri: https://idp.example.com/keys")
    assert load(jwks).issuers["dev"].algorithms == ("RS256",)
    assert load(cfg()).issuers["dev"].algorithms == ("HS256",)
    assert load(cfg(issuer="algorithms: [HS384, HS512]\n")).issuers["dev"].algorithms == (
        "HS384", "HS512")


# -- durations ---------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "seconds"), [
    ("500ms", 0.5), ("30s", 30.0), ("10m", 600.0), ("1h", 3600.0), ("1m30s", 90.0),
    ("1h1m1s", 3661.0), ("1.5s", 1.5), ("0s", 0.0), ("45", 45.0), ("2.5", 2.5),
    ("1s500ms", 1.5),
])
def test_durations(value: str, seconds: float) -> None:
    config = load(cfg(issuer=f"leeway: {value}\n", route=f"timeouts: {{read: {value}}}\n",
                      top=f"server: {{graceful_timeout: {value}}}\n"))
    assert config.issuers["dev"].leeway == seconds
    assert config.routes[0].read_timeout == seconds
    assert config.server.graceful_timeout == seconds


@pytest.mark.parametrize("value", [
    "5x", "-1s", "1d", "'1m 30s'", "s", "1s1", ".inf", "-1", "true", "''", "1S", "[1s]",
])
def test_bad_durations(value: str) -> None:
    text = cfg(issuer=f"jwks: {{cache_ttl: {value}}}\n")
    (problem,) = problems(text)
    assert problem.startswith("issuers.dev.jwks.cache_ttl: bad duration ")
    assert problem.endswith(f": use e.g. 500ms, 30s, 10m, 1h (line {line_of(text, 'jwks')})")


def test_duration_problem_quotes_the_value() -> None:
    assert problems(cfg(route="timeouts: {connect: 1d}\n"))[0].startswith(
        "routes[0].timeouts.connect: bad duration '1d': ")


# -- listen addresses and URLs ----------------------------------------------------------------

@pytest.mark.parametrize(("value", "listen"), [
    ("'0.0.0.0:8080'", Listen("0.0.0.0", 8080)),
    ("'[::1]:9000'", Listen("::1", 9000)),
    ("':8081'", Listen("0.0.0.0", 8081)),
    ("localhost:80", Listen("localhost", 80)),
    ("8082", Listen("0.0.0.0", 8082)),
])
def test_listen(value: str, listen: Listen) -> None:
    assert load(cfg(top=f"server: {{listen: {value}}}\n")).server.listen == listen


@pytest.mark.parametrize(("value", "reason"), [
    ("8080x", "expected host:port"), ("host:0", "expected host:port"),
    ("host:65536", "expected host:port"), ("localhost", "expected host:port"),
    ("'[::1]'", "expected host:port"), ("'a b:80'", "'a b' is not an IP address or host name"),
    ("'h!:80'", "'h!' is not an IP address or host name"),
])
def test_bad_listen(value: str, reason: str) -> None:
    text = cfg(top=f"admin: {{listen: {value}}}\n")
    shown = value.strip("'")
    assert problems(text) == [
        f"admin.listen: bad listen address {shown!r}: {reason} (line {line_of(text, 'admin')})"]


def test_listen_not_a_scalar() -> None:
    assert problems(cfg(top="server: {listen: [a]}\n"))[0].startswith(
        "server.listen: expected host:port")


@pytest.mark.parametrize(("uri", "insecure", "problem"), [
    ("https://idp.example.com/keys", False, None),
    ("http://127.0.0.1:9000/keys", False, None),
    ("http://localhost/keys", False, None),
    ("'http://[::1]:9000/keys'", False, None),
    ("http://idp.example.com/keys", True, None),
    ("http://idp.example.com/keys", False,
     "plain http:// is allowed only to a loopback host (set allow_insecure_http: true to "
     "override)"),
    ("http://10.0.0.1/keys", False, "plain http:// is allowed only to a loopback host"),
    ("ftp://idp.example.com/keys", False,
     "expected an http(s):// URL, got 'ftp://idp.example.com/keys'"),
    ("not-a-url", False, "expected an http(s):// URL, got 'not-a-url'"),
    ("https://idp.example.com:99999/keys", False,
     "bad URL 'https://idp.example.com:99999/keys'"),
    ("https://idp.example.com:x/keys", False, "bad URL 'https://idp.example.com:x/keys'"),
    ("'https://[::1/keys'", False, "bad URL 'https://[::1/keys'"),
])
def test_jwks_uri(uri: str, insecure: bool, problem: str | None) -> None:
    text = cfg().replace(f"secret: {SECRET}", f"jwks_uri: {uri}")
    if insecure:
        text = text.replace("    issuer: dev\n", "    issuer: dev\n    allow_insecure_http: true\n")
    if problem is None:
        assert load(text).issuers["dev"].jwks_uri == uri.strip("'")
        return
    (found,) = problems(text)
    assert found.startswith(f"issuers.dev.jwks_uri: {problem}")
    assert found.endswith(f"(line {line_of(text, 'jwks_uri')})")


def test_issuer_url_means_discovery() -> None:
    text = cfg().replace(f"    secret: {SECRET}\n", "").replace(
        "issuer: dev", "issuer: https://idp.example.com/")
    issuer = load(text).issuers["dev"]
    assert issuer.discovery_uri == "https://idp.example.com/.well-known/openid-configuration"
    assert issuer.jwks_uri is None
    assert issuer.algorithms == ("RS256",)


def test_plain_http_upstream_is_allowed_anywhere() -> None:
    text = cfg().replace("http://127.0.0.1:8000", "http://orders.internal:8000/")
    assert load(text).routes[0].upstream == "http://orders.internal:8000"


def test_jwks_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text('{"keys": []}')
    path = tmp_path / "jwtproxy.yaml"
    path.write_text(cfg().replace(f"secret: {SECRET}", "jwks_file: keys.json"))
    assert load_file(path, {}).issuers["dev"].jwks_file == str(tmp_path / "keys.json")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_file(tmp_path / "missing.yaml", {})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{tmp_path / 'missing.yaml'}: cannot read: ")


# -- Cognito shorthand -------------------------------------------------------------------------

COGNITO_ISS = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEf"


def cognito(body: str) -> str:
    return cfg().replace(f"    issuer: dev\n    secret: {SECRET}\n", textwrap.indent(body, "    "))


def test_cognito_derives_issuer_and_jwks_uri() -> None:
    issuer = load(cognito("cognito: {region: us-east-1, user_pool_id: us-east-1_AbCdEf}\n"
                          "token_use: access\naudiences: [client]\n")).issuers["dev"]
    assert issuer.issuer == COGNITO_ISS
    assert issuer.jwks_uri == COGNITO_ISS + "/.well-known/jwks.json"
    assert issuer.discovery_uri is None
    assert issuer.token_use == "access"
    assert issuer.audiences == ("client",)


def test_cognito_endpoint_changes_only_the_key_url() -> None:
    issuer = load(cognito(
        "cognito: {region: us-east-1, user_pool_id: us-east-1_AbCdEf, "
        "endpoint: 'http://localhost:5000/'}\n")).issuers["dev"]
    assert issuer.issuer == COGNITO_ISS
    assert issuer.jwks_uri == "http://localhost:5000/us-east-1_AbCdEf/.well-known/jwks.json"


@pytest.mark.parametrize(("body", "expected"), [
    ("cognito: {region: us-east-1, user_pool_id: us-east-1_AbCdEf, endpoint: "
     "'http://moto:5000'}\n",
     ["issuers.dev.cognito.endpoint: plain http:// is allowed only to a loopback host (set "
      "allow_insecure_http: true to override)"]),
    ("cognito: {region: US, user_pool_id: 'pool id'}\n",
     ["issuers.dev.cognito.region: not an AWS region: 'US'",
      "issuers.dev.cognito.user_pool_id: not a user pool id: 'pool id'"]),
    ("cognito: {region: eu-west-1, user_pool_id: us-east-1_AbCdEf}\n",
     ["issuers.dev.cognito.user_pool_id: 'us-east-1_AbCdEf' is a pool of region "
      "'us-east-1', not of 'eu-west-1'"]),
    ("cognito: {region: us-east-1, user_pool_id: us-east-1_AbCdEf, pool: x}\n",
     ["issuers.dev.cognito.pool: unknown key"]),
    ("cognito: {region: us-east-1, user_pool_id: us-east-1_AbCdEf}\nissuer: x\n",
     ["issuers.dev.issuer: not allowed with cognito: it is derived"]),
    ("cognito: {region: us-east-1, user_pool_id: us-east-1_AbCdEf}\n"
     "jwks_uri: https://x.example/k\n",
     ["issuers.dev: choose one key source, not jwks_uri and cognito"]),
])
def test_cognito_problems(body: str, expected: list[str]) -> None:
    text = cognito(body)
    assert [p.rsplit(" (line ", 1)[0] for p in problems(text)] == expected


def test_cognito_endpoint_insecure_allowed_when_asked() -> None:
    issuer = load(cognito(
        "allow_insecure_http: true\ncognito: {region: eu-west-1, user_pool_id: eu-west-1_x1, "
        "endpoint: 'http://moto:5000'}\n")).issuers["dev"]
    assert issuer.issuer == "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_x1"
    assert issuer.jwks_uri == "http://moto:5000/eu-west-1_x1/.well-known/jwks.json"


# -- environment substitution -------------------------------------------------------------------

def test_env_substitution_and_default() -> None:
    text = cfg(top="server:\n  listen: ${LISTEN:-0.0.0.0:8181}\n"
                   "log:\n  level: ${LEVEL}\n").replace(SECRET, "${HS_SECRET}")
    config = load(text, {"HS_SECRET": SECRET + "-more", "LEVEL": "debug"})
    assert config.issuers["dev"].secret == SECRET + "-more"
    assert config.server.listen == Listen("0.0.0.0", 8181)
    assert config.log.level == "debug"
    assert load(text, {"HS_SECRET": SECRET, "LEVEL": "info", "LISTEN": "127.0.0.1:7000"}) \
        .server.listen == Listen("127.0.0.1", 7000)
    # `:-` takes the default also when the variable is set but empty (as in sh)
    assert load(text, {"HS_SECRET": SECRET, "LEVEL": "info", "LISTEN": ""}) \
        .server.listen == Listen("0.0.0.0", 8181)


def test_env_substitution_is_typed_for_plain_scalars() -> None:
    text = cfg(top="server:\n  workers: ${W}\n  max_token_bytes: ${MAX:-4096}\n")
    config = load(text, {"W": "4"})
    assert config.server.workers == 4
    assert isinstance(config.server.workers, int)
    assert config.server.max_token_bytes == 4096
    quoted = cfg(top="server:\n  workers: '${W}'\n")
    assert problems(quoted, {"W": "4"}) == [
        f"server.workers: expected a whole number >= 1 (line {line_of(quoted, 'workers')})"]


def test_env_value_is_not_parsed_as_yaml() -> None:
    value = "a: [b, # not yaml " + "x" * 20
    config = load(cfg().replace(SECRET, "${S}"), {"S": value})
    assert config.issuers["dev"].secret == value


def test_missing_variables_are_each_named() -> None:
    text = cfg(top="server:\n  workers: ${WORKERS}\nlog:\n  level: ${LEVEL}\n")
    assert problems(text) == [
        f"server.workers: environment variable WORKERS is not set "
        f"(line {line_of(text, 'WORKERS')})",
        f"log.level: environment variable LEVEL is not set (line {line_of(text, 'LEVEL')})",
    ]


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWTPROXY_TEST_SECRET", SECRET + "!")
    assert load_text(cfg().replace(SECRET, "${JWTPROXY_TEST_SECRET}")).issuers["dev"] \
        .secret == SECRET + "!"


# -- YAML itself -----------------------------------------------------------------------------------

def test_duplicate_yaml_keys() -> None:
    text = cfg(issuer="issuer: other\n", route="name: again\n")
    assert problems(text) == [
        f"issuers.dev.issuer: duplicate key (line {line_of(text, 'issuer: other')})",
        f"routes[0].name: duplicate key (line {line_of(text, 'again')})",
    ]


def test_invalid_yaml() -> None:
    (problem,) = problems("routes: [a\nissuers: {")
    assert problem.startswith("<config>: not valid YAML: ")


@pytest.mark.parametrize("text", ["5\n", "[1, 2]\n", "just text\n"])
def test_top_level_not_a_mapping(text: str) -> None:
    assert problems(text) == ["<config>: expected a mapping", NO_ROUTES]


def test_keys_must_be_strings() -> None:
    assert problems(cfg(top="1: one\n"))[0] == f"1: keys must be strings (line {7 + 1})"
    assert problems("? [a]\n: b\n") == ["<config>: keys must be strings (line 1)"]


def test_unknown_tags_refused() -> None:
    (problem,) = problems(cfg(top="log: {level: !!python/name:os.system x}\n"))
    assert problem.startswith("log.level: bad value: could not determine a constructor")


def test_alias_bomb_is_bounded() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    started = time.monotonic()
    (problem,) = problems("\n".join(lines) + "\n")
    assert time.monotonic() - started < 2
    assert problem.endswith(": too many YAML nodes (aliases?)")


@pytest.mark.parametrize("text", ["a: &x {b: *x}\n", "a: &x [*x]\n",
                                  "a: " + "{b: " * 40 + "1" + "}" * 40 + "\n",
                                  "a: " + "[" * 2000 + "]" * 2000 + "\n"])
def test_deep_or_recursive_yaml_is_bounded(text: str) -> None:
    (problem,) = problems(text)
    assert "nested too deeply" in problem


def test_bad_merge_key() -> None:
    assert problems("<<: 5\n") == [
        "<config>: bad merge key: expected a mapping or list of mappings for merging, but "
        "found scalar (line 1)"]


def test_merge_keys_work() -> None:
    text = cfg(top="") + textwrap.dedent("""\
        x-defaults: &defaults
          upstream: http://127.0.0.1:9000
        """)
    assert problems(text)[0].startswith("x-defaults: unknown key")
    text = cfg(more_routes="""\
        - name: merged
          <<: {upstream: 'http://127.0.0.1:9000', auth: none}
        """)
    route = load(text).routes[1]
    assert (route.upstream, route.auth) == ("http://127.0.0.1:9000", None)


# -- auth, routes, tokens --------------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    "Authorization", "authorization", "Cookie", "X-Forwarded-For", "x_forwarded_proto",
    "Forwarded", "X-Request-Id", "Host", "Content-Length", "Transfer-Encoding", "Upgrade",
])
def test_headers_that_cannot_carry_claims(header: str) -> None:
    for forward in (f"forward: {{claims: {{sub: {header}}}}}\n",
                    f"forward: {{payload_header: {header}}}\n"):
        text = cfg(route=forward)
        (problem,) = problems(text)
        assert problem.endswith(f"{header} cannot carry claims (it would be stripped from "
                                f"every request) (line {line_of(text, 'forward')})")


def test_token_header_cannot_carry_claims() -> None:
    text = cfg(route="forward: {claims: {sub: X_Token}}\n", top="tokens: [{header: X-Token}]\n")
    assert problems(text) == [
        f"routes[0].forward.claims.sub: X_Token cannot carry claims (it would be stripped "
        f"from every request) (line {line_of(text, 'forward')})"]
    assert load(cfg(route="forward: {claims: {sub: X-Token}}\n")).routes[0].forward.claims \
        == (("sub", "X-Token"),)


def test_auth_none_and_default_auth() -> None:
    text = cfg(issuer="", more_routes="""\
        - name: public
          upstream: http://127.0.0.1:8000
          auth: none
        """).replace("routes:\n", "  other:\n    issuer: https://idp.example.com/\nroutes:\n")
    config = load(text)
    assert config.routes[0].auth == Auth(mode="required", issuers=("dev", "other"))
    assert config.routes[1].auth is None


def test_auth_rule_values() -> None:
    route = load(cfg(route="""\
        auth:
          mode: report_only
          issuers: dev
          scopes: orders/read
          any_scopes: [a, b]
          claims: {"cognito:groups": admin, email_verified: true, level: 3}
        """)).routes[0]
    assert route.auth == Auth(
        mode="report_only", issuers=("dev",), scopes=("orders/read",), any_scopes=("a", "b"),
        claims=(("cognito:groups", "admin"), ("email_verified", "true"), ("level", "3")))


def test_route_settings() -> None:
    route = load(cfg(route="""\
        match: {host: '*.Example.COM', path_prefix: /orders, methods: [get, POST]}
        forward:
          claims: {sub: X-Auth-Subject, "cognito:groups": X-Auth-Groups}
          payload_header: X-Auth-Claims
          authorization: strip
        cors_preflight: pass
        timeouts: {connect: 2s, read: 1m}
        """)).routes[0]
    assert route.match.host == "*.example.com"
    assert route.match.path_prefix == "/orders"
    assert route.match.methods == frozenset({"GET", "POST"})
    assert route.forward.claims == (("sub", "X-Auth-Subject"),
                                    ("cognito:groups", "X-Auth-Groups"))
    assert route.forward.payload_header == "X-Auth-Claims"
    assert route.forward.authorization == "strip"
    assert route.cors_preflight == "pass"
    assert (route.connect_timeout, route.read_timeout) == (2.0, 60.0)


def test_token_sources() -> None:
    assert load(cfg()).tokens == (TokenSource("header", "Authorization"),)
    config = load(cfg(top="tokens:\n  - header: X-Token\n  - cookie: access_token\n"
                          "  - query: access_token\n"))
    assert config.tokens == (TokenSource("header", "X-Token"),
                             TokenSource("cookie", "access_token"),
                             TokenSource("query", "access_token"))


def test_defaults() -> None:
    config = load(cfg())
    assert config.server.listen == Listen("0.0.0.0", 8080)
    assert config.admin.listen == Listen("127.0.0.1", 9090)
    assert (config.server.workers, config.server.max_token_bytes) == (1, 8192)
    assert (config.log.level, config.log.format) == ("info", "json")
    assert config.issuers["dev"].leeway == 60.0
    assert config.routes[0].auth == Auth(issuers=("dev",))


def test_workers_auto() -> None:
    assert load(cfg(top="server: {workers: auto}\n")).server.workers == (os.cpu_count() or 1)


def test_example_config_loads() -> None:
    config = load_file(REPO / "config.example.yaml", {})
    assert set(config.issuers) == {"cognito", "partner", "local-dev"}
    assert config.issuers["cognito"].jwks_uri == (
        "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEf/.well-known/jwks.json")
    assert [route.name for route in config.routes] == ["health", "orders", "billing", "dev", "mcp"]
    assert config.routes[2].upstream == ""  # forward-auth only
    assert config.forward_auth is not None
    assert config.routes[0].auth is None
    assert config.issuers["partner"].dpop.mode == "allowed"
    metadata = config.routes[4].resource_metadata
    assert metadata is not None and metadata.resource == "https://api.example.com/mcp"
    assert config.tokens[1] == TokenSource("cookie", "access_token")


# -- the CLI ------------------------------------------------------------------------------------

def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JWTPROXY")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "jwtproxy", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=60)


BAD = cfg(issuer="leeway: 1d\n", route="auth: {scopes: {a: b}}\n")


def test_cli_check_ok(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(cfg())
    done = cli("check", "-c", str(path))
    assert (done.returncode, done.stdout.strip()) == (0, f"{path}: ok (1 issuers, 1 routes)")
    assert cli("check", "-c", str(REPO / "config.example.yaml")).returncode == 0


def test_cli_check_bad_prints_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    done = cli("check", "-c", str(path))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"{path}: invalid config",
        f"  issuers.dev.leeway: bad duration '1d': use e.g. 500ms, 30s, 10m, 1h "
        f"(line {line_of(BAD, 'leeway')})",
        f"  routes[0].auth.scopes: expected a list of strings (line {line_of(BAD, 'scopes')})",
    ]


@pytest.mark.parametrize("args", [("run", "-c"), ("-c",)])
def test_cli_run_bad_config_exits_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    done = cli(*args, str(path))
    assert done.returncode == 2
    assert "routes[0].auth.scopes" in done.stderr


def test_cli_missing_file_and_usage(tmp_path: Path) -> None:
    done = cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2
    assert "cannot read" in done.stderr
    assert cli().returncode == 2
    assert cli("check").returncode == 2  # -c is required


def test_problem_lines_point_into_the_file() -> None:
    text = cfg(route="match:\n  path_prefix: orders\n")
    (problem,) = problems(text)
    assert problem == f"routes[0].match.path_prefix: must start with / " \
                      f"(line {line_of(text, 'path_prefix')})"


def test_upstream_pool_settings() -> None:
    config = load(cfg(top="server: {upstream_idle_timeout: 30s, upstream_max_idle: 8}\n"))
    assert (config.server.upstream_idle_timeout, config.server.upstream_max_idle) == (30.0, 8)
    defaults = load(cfg()).server
    assert (defaults.upstream_idle_timeout, defaults.upstream_max_idle) == (4.0, 128)
    found = problems(cfg(top="server: {upstream_idle_timeout: 0s, upstream_max_idle: -1}\n"))
    assert [p.split(":", 1)[0] for p in found] == [
        "server.upstream_idle_timeout", "server.upstream_max_idle"]
