"""`jwtproxy revoke`: add an entry to the store the config names, or list it."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Final

from .config import Config
from .revocation import (
    Entry,
    RevocationList,
    StoreError,
    format_time,
    parse_duration,
    parse_entry,
    parse_time,
)
from .revocation_sync import open_store

EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1
EXIT_USAGE: Final = 2


def revoke(config: Config, args: argparse.Namespace) -> int:
    settings = config.revocation
    if settings is None:
        print(f"{args.config}: no revocation store (set revocation.file or revocation.redis)",
              file=sys.stderr)
        return EXIT_USAGE
    store = open_store(settings, RevocationList(), None)
    try:
        if args.list:
            entries = asyncio.run(store.read())
            for entry in sorted(entries, key=lambda e: (e.kind, e.value)):
                print(f"{entry.kind}\t{entry.value}\tuntil {format_time(entry.until)}")
            print(f"{len(entries)} entries", file=sys.stderr)
            return EXIT_OK
        wanted = _entry(args, settings.max_token_lifetime)
        if not isinstance(wanted, Entry):
            print(f"jwtproxy revoke: {wanted}", file=sys.stderr)
            return EXIT_USAGE
        asyncio.run(store.add(wanted))
    except StoreError as err:
        print(f"jwtproxy revoke: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"revoked {wanted.kind} {wanted.value} until {format_time(wanted.until)}")
    return EXIT_OK


def _entry(args: argparse.Namespace, max_lifetime: float) -> Entry | str:
    """The entry the options ask for, or the usage problem. An until beyond the longest
    lifetime a token can have is capped: no token it could match outlives that."""
    kind = next(k for k in ("jti", "sub", "origin_jti", "client_id")
                if getattr(args, k) is not None)
    now = time.time()
    until = now + max_lifetime
    if args.duration is not None:
        duration = parse_duration(args.duration)
        if duration is None or duration <= 0:
            return f"--for: bad duration {args.duration!r}: use e.g. 15m, 1h"
        until = now + duration
    elif args.until is not None:
        text = args.until
        parsed = parse_time(float(text) if text.replace(".", "", 1).isdigit() else text)
        if parsed is None:
            return (f"--until: expected RFC 3339 (2026-12-31T00:00:00Z) or epoch seconds, "
                    f"got {text!r}")
        if parsed <= now:
            return f"--until: {text} is already past"
        until = parsed
    return parse_entry({kind: getattr(args, kind), "until": min(until, now + max_lifetime)})
