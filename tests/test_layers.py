"""The module map of shared/STYLE.md, enforced: imports only point down, and each
third-party library stays with the modules that own it."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Final

import pytest

PACKAGE: Final = Path(__file__).resolve().parent.parent / "jwtproxy"

LAYERS: Final = {
    "__init__": 0, "errors": 0,
    "config": 1, "arn_patterns": 1, "fields": 1, "issuer_validation": 1, "validation": 1,
    "loader": 1, "revocation_validation": 1, "route_validation": 1,
    "matcher": 2, "extractor": 2, "authorizer": 2, "headers": 2, "metrics": 2, "log": 2,
    "jwks": 2, "pool": 2, "connection": 2, "jws": 2, "algorithms": 2, "expiring": 2,
    "resource_metadata": 2,
    "verifier": 3, "dpop": 3, "mint": 3,  # mint: the verifier's inverse, for `jwtproxy token`
    "revocation": 3, "revocation_file": 3, "revocation_redis": 3, "revocation_sync": 3,
    "dpop_replay": 3,
    "gate": 4, "forwarder": 4, "lean": 4, "answers": 4, "ws_relay": 4,
    "app": 5, "aws_lambda": 5, "forward_auth": 5, "lambda_events": 5, "lambda_policy": 5,
    "explain": 5, "revoke": 5, "explain_text": 5, "serve": 5, "server": 5,
    "cli": 6, "demo": 6, "supervisor": 6, "healthcheck": 6, "__main__": 6,
}

# Imports within one layer: each one deliberate, listed here.
SAME_LAYER: Final = {
    ("pool", "connection"),               # the pool holds connections, each its own exchange
    ("forwarder", "lean"),                # relays answers to a lean request too
    ("forwarder", "ws_relay"),            # an accepted WebSocket's frames
    ("answers", "gate"),                  # a refusal's challenge is the gate's Challenge
    ("fields", "config"),                 # a listen address becomes a `Listen`; url_allowed
    ("issuer_validation", "config"),      # the checks build the value objects
    ("issuer_validation", "fields"),      # ... from single checked values
    ("validation", "config"),
    ("validation", "fields"),
    ("validation", "issuer_validation"),
    ("validation", "revocation_validation"),  # the revocation: section
    ("validation", "route_validation"),   # the routes: section
    ("route_validation", "config"),
    ("route_validation", "fields"),
    ("revocation_validation", "config"),
    ("revocation_validation", "fields"),  # the issuers: section
    ("validation", "arn_patterns"),       # `check` refuses what policy_scope: routes cannot say
    ("arn_patterns", "config"),           # routes written as IAM patterns
    ("loader", "config"),                 # load_text returns a `Config`
    ("loader", "validation"),             # plain values from YAML, then every check
    ("algorithms", "jwks"),               # key_fits reads a key's kty, crv, alg, use, key_ops
    ("aws_lambda", "lambda_events"),      # the Lambda door: events, then the answer
    ("aws_lambda", "lambda_policy"),      # ... written as a policy or a simple response
    ("headers", "extractor"),             # strip reads query names as the extractor does
    ("verifier", "dpop"),                 # every accepted token passes its binding check
    ("dpop_replay", "dpop"),              # the shared replay store keeps the local one too
    ("verifier", "revocation"),           # a verified token is checked against the list
    ("revocation_file", "revocation"),    # the stores fill the list
    ("revocation_redis", "revocation"),
    ("revocation_sync", "revocation"),    # picks the store the config names
    ("revocation_sync", "revocation_file"),
    ("revocation_sync", "revocation_redis"),
    ("revoke", "revocation"),
    ("revoke", "revocation_sync"),        # `jwtproxy revoke` writes to the configured store
    ("explain", "explain_text"),          # the words and the rendering of the report
    ("explain", "forward_auth"),          # --forward-auth: the door's reconstruction, answer
    ("serve", "app"),                     # runs the apps
    ("serve", "server"),                  # ... on their servers
    ("server", "app"),                    # the proxy's server runs the proxy door
    ("serve", "forward_auth"),            # ... and the forward-auth door
    ("forward_auth", "app"),              # the proxy's State and its very error answers
    ("cli", "demo"),                      # `jwtproxy demo`
    ("cli", "supervisor"),                # `workers > 1`
    ("__main__", "cli"),
}

# Third-party libraries and the only modules allowed to import them.
OWNERS: Final = {
    "yaml": {"loader", "revocation_file"},  # the config, and the revocation list file
    "redis": {"revocation_redis", "dpop_replay"},
    "joserfc": {"jwks", "verifier", "mint"},  # mint signs test tokens (`jwtproxy token`)
    "aiohttp.web": {"app", "forward_auth", "forwarder", "serve", "demo", "server", "lean",
                    "answers", "ws_relay"},
    # client side: key fetches (jwks; app and explain open the session they pass to it)
    # and the upstream side (forwarder); the web modules may use it too; log filters
    # aiohttp's parser errors (aiohttp.http_exceptions) out of the log; the Lambda door
    # opens its key session
    "aiohttp": {"app", "forward_auth", "forwarder", "serve", "demo", "jwks", "explain", "log",
                "aws_lambda", "server", "lean", "answers", "ws_relay"},
    "httptools": {"connection"},
    "prometheus_client": {"metrics", "supervisor"},
}


def modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py"))


@cache
def imports(module: str) -> tuple[tuple[str, int], ...]:
    """Every import in `module` (also inside functions) as (dotted target, line);
    package-relative targets are given as `jwtproxy.<module>`."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.level == 1, f"{module}:{node.lineno}: import from above the package"
                base = "jwtproxy" + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            if node.module is None or base == "jwtproxy":
                # `from . import x`: x is a module, or a name from __init__
                for alias in node.names:
                    target = alias.name if alias.name in LAYERS else "__init__"
                    found.append((f"jwtproxy.{target}", node.lineno))
            else:
                found.append((base, node.lineno))
                found.extend((f"{base}.{alias.name}", node.lineno) for alias in node.names)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            # `import aiohttp` then `aiohttp.web.X`
            found.append((f"{node.value.id}.{node.attr}", node.lineno))
    return tuple(found)


def internal(module: str) -> Iterator[tuple[str, int]]:
    for target, line in imports(module):
        parts = target.split(".")
        if parts[0] == "jwtproxy" and len(parts) >= 2 and parts[1] in LAYERS:
            yield parts[1], line


def test_every_module_has_a_layer() -> None:
    missing = sorted(set(modules()) - set(LAYERS))
    assert not missing, f"give each new module one job and a layer in LAYERS: {missing}"


def test_map_lists_only_existing_modules() -> None:
    assert not set(LAYERS) - set(modules())


@pytest.mark.parametrize("module", modules())
def test_imports_point_down(module: str) -> None:
    if module not in LAYERS:
        pytest.skip("no layer yet (see test_every_module_has_a_layer)")
    upward = []
    for target, line in sorted(set(internal(module))):
        if target == module:
            continue
        if LAYERS[target] > LAYERS[module]:
            upward.append(f"{module}.py:{line}: L{LAYERS[module]} {module} imports "
                          f"L{LAYERS[target]} {target}")
        elif LAYERS[target] == LAYERS[module] and (module, target) not in SAME_LAYER:
            upward.append(f"{module}.py:{line}: {module} imports {target} from its own layer "
                          f"L{LAYERS[module]} (list it in SAME_LAYER if deliberate)")
    assert not upward, "\n".join(upward)


def test_same_layer_list_is_current() -> None:
    """An allowance nobody uses any more is removed, so the list stays the truth."""
    used = {(module, target) for module in LAYERS if module in modules()
            for target, _ in internal(module)}
    assert used >= SAME_LAYER, sorted(SAME_LAYER - used)


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_library_ownership(library: str) -> None:
    users = {
        module for module in modules()
        for target, _ in imports(module)
        if target == library or target.startswith(library + ".")
    }
    assert users <= OWNERS[library], (
        f"{library} imported outside its owners: {sorted(users - OWNERS[library])}")


def test_the_checker_sees_what_it_must() -> None:
    """Guard the guard: each kind of import the tests rely on is recognised."""
    assert "yaml" in {target for target, _ in imports("loader")}
    assert {"config", "errors"} <= {target for target, _ in internal("authorizer")}
    assert "__init__" in {target for target, _ in internal("metrics")}  # from . import x
    assert {"demo", "explain", "serve"} <= {t for t, _ in internal("cli")}  # in functions
    assert any(t == "aiohttp.web" for t, _ in imports("app"))  # from aiohttp import web


def test_the_supervisor_loads_no_server_and_no_metrics_library() -> None:
    """What `workers > 1` keeps resident in the supervisor: config, logging, subprocess;
    not aiohttp, asyncio or prometheus-client (~20 MB less). Checked in a fresh
    interpreter doing what `jwtproxy run` does before it supervises."""
    code = (
        "import sys\n"
        "from jwtproxy import cli, log, supervisor, loader\n"
        "log.setup_logging('info', 'json')\n"
        "heavy = {'aiohttp', 'asyncio', 'prometheus_client', 'joserfc', 'httptools'}\n"
        "print(sorted(heavy & set(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_lambda_door_imports_no_server() -> None:
    """The Lambda door runs where no server does: importing its handler (and all it imports,
    transitively) brings neither aiohttp's server (aiohttp.web) nor prometheus-client."""
    code = ("import sys, jwtproxy.aws_lambda; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'prometheus_client' or m.startswith('aiohttp.web')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert "aiohttp" not in OWNERS["aiohttp.web"] and "aws_lambda" not in OWNERS["aiohttp.web"]
