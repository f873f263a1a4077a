"""The deny-list: tokens that must stop working before their `exp`.

Entries name a `jti`, a `sub`, an `origin_jti` (Cognito: every token minted from one
refresh token) or a `client_id`, each with an `until`. The whole list is held in memory;
the hot path asks one set operation of it. The stores (`revocation_file`,
`revocation_redis`) read it and replace it here; `revocation_sync` picks the store the
config names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from .errors import Revoked
from .fields import DURATION_PATTERN, DURATION_UNITS

if TYPE_CHECKING:  # the Lambda door verifies tokens without prometheus-client
    from .metrics import Metrics

log = logging.getLogger("jwtproxy.revocation")

KINDS: Final = ("jti", "sub", "origin_jti", "client_id")
MAX_VALUE_CHARS: Final = 1024
SEP: Final = "\x00"  # between kind and value in a mark: no claim value we compare has it


def mark(kind: str, value: str) -> str:
    return f"{kind}{SEP}{value}"


def token_marks(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The marks a token could be revoked by: built once per verified token (it is
    cached with it), so a request pays only `RevocationList.check`."""
    return tuple(mark(kind, value) for kind in KINDS
                 if isinstance(value := claims.get(kind), str))


@dataclass(frozen=True, slots=True)
class Entry:
    kind: str
    value: str
    until: float  # epoch seconds

    @property
    def mark(self) -> str:
        return mark(self.kind, self.value)

    def as_data(self) -> dict[str, str]:
        return {self.kind: self.value, "until": format_time(self.until)}


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> float | None:
    """RFC 3339 (`2026-12-31T00:00:00Z`) or epoch seconds; None if neither."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp as one
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None  # RFC 3339 has an offset: a local time would be a guess
        return parsed.timestamp()
    return None


def parse_duration(text: str) -> float | None:
    if text and DURATION_PATTERN.sub("", text) == "":
        return sum(float(n) * DURATION_UNITS[u] for n, u in DURATION_PATTERN.findall(text))
    return None


def parse_entry(item: Any) -> Entry | str:
    """One entry `{jti|sub|origin_jti|client_id: VALUE, until: TIME}`, or the problem."""
    if not isinstance(item, dict):
        return "expected a mapping {sub|jti|origin_jti|client_id: VALUE, until: TIME}"
    unknown = sorted(str(key) for key in item if key not in (*KINDS, "until"))
    if unknown:
        return f"unknown key {unknown[0]!r}"
    kinds = [kind for kind in KINDS if kind in item]
    if len(kinds) != 1:
        return f"expected exactly one of {', '.join(KINDS)}"
    value = item[kinds[0]]
    if not isinstance(value, str) or not value or len(value) > MAX_VALUE_CHARS or SEP in value:
        return f"{kinds[0]}: expected a non-empty string (up to {MAX_VALUE_CHARS} characters)"
    until = parse_time(item.get("until"))
    if until is None:
        return "until: expected RFC 3339 (2026-12-31T00:00:00Z) or epoch seconds"
    return Entry(kinds[0], value, until)


def parse_entries(data: Any) -> tuple[list[Entry], list[str]]:
    """A whole list (file contents): the entries and every problem, with its index."""
    if data is None:
        return [], []
    if not isinstance(data, list):
        return [], ["expected a list of entries"]
    entries: list[Entry] = []
    problems: list[str] = []
    for i, item in enumerate(data):
        parsed = parse_entry(item)
        if isinstance(parsed, str):
            problems.append(f"[{i}]: {parsed}")
        else:
            entries.append(parsed)
    return entries, problems


class RevocationList:
    """The live entries by mark. `marks` is replaced whole, never mutated, so a reader
    on the hot path sees one consistent set."""

    def __init__(self, metrics: Metrics | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.now = wall_clock
        self.marks: frozenset[str] = frozenset()
        self.until: dict[str, float] = {}
        self.next_expiry = float("inf")
        self._watchers: dict[str, set[Callable[[], None]]] = {}

    def check(self, marks: tuple[str, ...], claims: Mapping[str, Any]) -> None:
        """Raise `Revoked` if the token with these marks is on the list."""
        if self.marks.isdisjoint(marks):  # the hot path: one set operation
            return
        now = self.now()
        for found in marks:
            if now < self.until.get(found, 0.0):
                kind = found.partition(SEP)[0]
                log.info("token_revoked", extra={
                    "kind": kind, "sub": _short(claims.get("sub")),
                    "jti": _short(claims.get("jti"))})
                raise Revoked(f"token revoked (by {kind})")

    def replace(self, entries: Iterable[Entry]) -> None:
        """The whole list, as a store read it."""
        self._install(self._live(entries, {}))

    def merge(self, entries: Iterable[Entry]) -> None:
        """Entries added since the last read (a pub/sub message): the later until wins."""
        self._install(self._live(entries, dict(self.until)))

    def prune(self) -> None:
        """Drop entries past their until (cheap when none is due)."""
        if self.now() >= self.next_expiry:
            self._install(self._live((), dict(self.until)))

    def entries(self) -> list[Entry]:
        out = []
        for found, until in sorted(self.until.items()):
            kind, _, value = found.partition(SEP)
            out.append(Entry(kind, value, until))
        return out

    def watch(self, marks: tuple[str, ...], callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (once) when an entry for one of `marks` arrives; returns the
        function that stops watching. Already on the list: called soon."""
        for found in marks:
            self._watchers.setdefault(found, set()).add(callback)
        if not self.marks.isdisjoint(marks):
            asyncio.get_running_loop().call_soon(self._fire, marks)

        def unwatch() -> None:
            for found in marks:
                callbacks = self._watchers.get(found)
                if callbacks is not None:
                    callbacks.discard(callback)
                    if not callbacks:
                        del self._watchers[found]

        return unwatch

    def _live(self, entries: Iterable[Entry], until: dict[str, float]) -> dict[str, float]:
        now = self.now()
        for entry in entries:
            if entry.until > until.get(entry.mark, 0.0):
                until[entry.mark] = entry.until
        return {found: end for found, end in until.items() if end > now}

    def _install(self, until: dict[str, float]) -> None:
        added = until.keys() - self.marks
        self.until = until
        self.marks = frozenset(until)
        self.next_expiry = min(until.values(), default=float("inf"))
        if self.metrics is not None:
            counts = dict.fromkeys(KINDS, 0)
            for found in until:
                counts[found.partition(SEP)[0]] += 1
            for kind, count in counts.items():
                self.metrics.revocations.labels(kind).set(count)
        if added and self._watchers:
            self._fire(tuple(added))

    def _fire(self, marks: Iterable[str]) -> None:
        due = {cb for found in marks if found in self.marks
               for cb in self._watchers.get(found, ())}
        for callback in due:
            callback()


def _short(value: Any) -> str | None:
    return value[:128] if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Lifetime:
    """What ends a long-lived connection authorised by one token: its expiry (wall
    clock, leeway included) and an entry for it arriving on the list."""

    expires_at: float
    marks: tuple[str, ...]
    revocations: RevocationList


class StoreError(Exception):
    """The store cannot be read or written (unreachable, broken file)."""


class Store(Protocol):
    """Where the list lives. `start` loads it (and keeps it current in the background)."""

    async def start(self) -> None: ...
    async def reload(self) -> None: ...
    async def close(self) -> None: ...
    async def add(self, entry: Entry) -> None: ...
    async def read(self) -> list[Entry]: ...
