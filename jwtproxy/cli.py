"""Command line: `run`, `check`, `demo`, `explain`, `token`, `revoke`. The only place
that exits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

from .config import Config
from .errors import ConfigError
from .loader import load_file

EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1
EXIT_USAGE: Final = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jwtproxy", description="JWT-validating reverse proxy")
    parser.add_argument("-c", "--config", help="config file (run is the default command)")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="serve")
    run.add_argument("-c", "--config", required=True, dest="config")
    run.add_argument("--watch", action="store_true", help="reload when the file changes")
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    check = commands.add_parser("check", help="validate the config")
    check.add_argument("-c", "--config", required=True, dest="config")
    demo = commands.add_parser("demo", help="local issuer + echo upstream + proxy, with curl lines")
    demo.add_argument("--port", type=int, default=8080,
                      help="proxy port (a free one if taken; 0 = any free port)")
    demo.add_argument("--admin-port", type=int, default=9090,
                      help="admin port (a free one if taken; 0 = any free port)")
    explain = commands.add_parser(
        "explain", help="show the decision for one request",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 the request would be allowed (forwarded upstream),\n"
               "             1 it would be denied (the status and response are printed),\n"
               "             2 usage error or invalid config")
    explain.add_argument("-c", "--config", required=True, dest="config")
    explain.add_argument("--method", default="GET")
    explain.add_argument("--host", default="localhost")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.add_argument("--offline", action="store_true",
                         help="never fetch keys (only jwks_file / secret issuers verify)")
    explain.add_argument("--forward-auth", action="store_true",
                         help="PATH, --method and --host are a gateway's auth subrequest to "
                              "the forward-auth door; show the original request it describes")
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                         help="a header of the auth subrequest (X-Forwarded-Uri, "
                              "X-Original-URI, ...); repeatable; with --forward-auth")
    explain.add_argument("path")
    explain.add_argument("token", nargs="?", default="",
                         help="the token, or - to read it from stdin; omit for none")
    token = commands.add_parser(
        "token", help="mint a test token for a jwks_file or secret issuer",
        description="Print a signed token that ISSUER accepts (its iss, first audience, "
                    "token_use, typ): for testing with keys you hold.")
    token.add_argument("-c", "--config", required=True, dest="config")
    token.add_argument("--issuer", help="the issuer's name in the config "
                       "(default: the only jwks_file or secret issuer)")
    token.add_argument("--key", help="private JWK or PEM file (jwks_file issuers)")
    token.add_argument("--sub", default="test-user", help="subject (default test-user)")
    token.add_argument("--scope", action="append", default=[],
                       help="a scope to grant (repeatable)")
    token.add_argument("--claim", action="append", default=[], metavar="NAME=VALUE",
                       help="an extra claim; VALUE is JSON if it parses, else a string")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until exp (3600)")
    _revoke_parser(commands)
    return parser


def _token(config: Config, args: argparse.Namespace) -> int:
    import json

    from .errors import MintError
    from .mint import mint_token

    mintable = [name for name, issuer in config.issuers.items()
                if issuer.secret is not None or issuer.jwks_file is not None]
    name = args.issuer or (mintable[0] if len(mintable) == 1 else None)
    if name is None or name not in config.issuers:
        choices = ", ".join(mintable) or "none in this config"
        print(f"jwtproxy token: choose --issuer ({choices})", file=sys.stderr)
        return EXIT_USAGE
    claims: dict[str, object] = {}
    for item in args.claim:
        claim, sep, raw = item.partition("=")
        if not sep or not claim:
            print(f"jwtproxy token: --claim {item!r}: expected NAME=VALUE", file=sys.stderr)
            return EXIT_USAGE
        try:
            claims[claim] = json.loads(raw)
        except ValueError:
            claims[claim] = raw
    try:
        print(mint_token(config.issuers[name], args.key, subject=args.sub,
                         scopes=tuple(args.scope), claims=claims, ttl=args.ttl))
    except MintError as err:
        print(f"jwtproxy token: {err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _revoke_parser(commands: Any) -> None:
    revoke = commands.add_parser(
        "revoke", help="add to the revocation list (or --list it)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 done, 1 the store cannot be read or written,\n"
               "             2 usage error, invalid config or no revocation store")
    revoke.add_argument("-c", "--config", required=True, dest="config")
    what = revoke.add_mutually_exclusive_group(required=True)
    for kind in ("jti", "sub", "origin-jti", "client-id"):
        what.add_argument(f"--{kind}", metavar="VALUE")
    what.add_argument("--list", action="store_true", help="print the entries in force")
    until = revoke.add_mutually_exclusive_group()
    until.add_argument("--for", dest="duration", metavar="DURATION",
                       help="e.g. 15m, 1h (default and cap: revocation.max_token_lifetime)")
    until.add_argument("--until", metavar="TIME", help="RFC 3339 or epoch seconds")


def _load(path: str) -> Config | None:
    try:
        return load_file(path)
    except ConfigError as err:
        print(f"{path}: invalid config", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or ("run" if args.config else None)
    if command is None:
        _parser().print_help(sys.stderr)
        return EXIT_USAGE
    if command == "demo":
        from .demo import run_demo

        return run_demo(args.port, args.admin_port)
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    if command == "check":
        from .validation import warnings

        for warning in warnings(config):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{args.config}: ok ({len(config.issuers)} issuers, {len(config.routes)} routes)")
        return EXIT_OK
    if command == "token":
        return _token(config, args)
    if command == "revoke":
        from .revoke import revoke

        return revoke(config, args)
    if command == "explain":
        import asyncio

        from .explain import explain

        token = sys.stdin.read().strip() if args.token == "-" else args.token
        headers = [tuple(part.strip() for part in item.split(":", 1)) for item in args.header]
        if any(len(pair) != 2 or not pair[0] for pair in headers) or (
                headers and not args.forward_auth):
            print("explain: -H takes 'Name: value', with --forward-auth", file=sys.stderr)
            return EXIT_USAGE
        return asyncio.run(explain(
            config, args.method, args.host, args.path, token, as_json=args.json,
            offline=args.offline,
            forward_auth=[(name, value) for name, value in headers] if args.forward_auth
            else None))
    return _run(Path(args.config), config, getattr(args, "watch", False),
                getattr(args, "worker", False))


def _run(path: Path, config: Config, watch: bool, worker: bool) -> int:
    from .log import setup_logging

    setup_logging(config.log.level, config.log.format)
    try:
        if config.server.workers > 1 and not worker:
            from .supervisor import supervise

            return supervise(path, config.server.workers, config.server.graceful_timeout, watch)
        import asyncio  # not before: the supervisor stays small without it (~6 MB)

        from .serve import serve

        _install_uvloop()
        asyncio.run(serve(path, config, watch))
    except OSError as err:
        import logging

        logging.getLogger("jwtproxy.cli").error("cannot_serve", extra={"error": str(err)})
        return EXIT_RUNTIME
    return EXIT_OK


def _install_uvloop() -> None:
    import asyncio

    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
