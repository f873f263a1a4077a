"""The revocation list in Redis, shared by every replica.

One sorted set `<prefix>revocations` holds the entries (member `kind:value`, score the
until); `jwtproxy revoke` adds to it and publishes the entry on the channel of the same
name. Each replica subscribes first, then reads the whole set (so nothing falls between
the two), applies each message as it comes, and reads the set again every
`sync_interval` so that a missed message cannot last. When Redis is unreachable the last
list keeps applying; the replica logs, counts and reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, Final

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .config import Revocation
from .metrics import Metrics
from .revocation import KINDS, Entry, RevocationList, StoreError, parse_entry

log = logging.getLogger("jwtproxy.revocation")

CONNECT_TIMEOUT: Final = 2.0
COMMAND_TIMEOUT: Final = 5.0
FIRST_LOAD_TIMEOUT: Final = 5.0  # start-up waits this long for the list, then serves
BACKOFF_FIRST: Final = 0.25
BACKOFF_MAX: Final = 10.0
PRUNE_TICK: Final = 1.0  # how often expired entries are dropped while nothing arrives


def _member(entry: Entry) -> str:
    return f"{entry.kind}:{entry.value}"


def _from_member(member: str, score: float) -> Entry | None:
    kind, _, value = member.partition(":")
    parsed = parse_entry({kind: value, "until": score}) if kind in KINDS else None
    return parsed if isinstance(parsed, Entry) else None


class RedisStore:
    def __init__(self, settings: Revocation, target: RevocationList,
                 metrics: Metrics | None) -> None:
        assert settings.redis is not None
        self.url = settings.redis.url
        self.key = f"{settings.redis.key_prefix}revocations"
        self.sync_interval = settings.sync_interval
        self.target = target
        self.metrics = metrics
        self.loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resync = asyncio.Event()

    def _client(self) -> redis.Redis:
        # no retries inside the client: the sync loop owns reconnecting (and its backoff)
        return redis.Redis.from_url(
            self.url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0), decode_responses=True,
            health_check_interval=max(1.0, self.sync_interval))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.loaded.wait(), FIRST_LOAD_TIMEOUT)
        if not self.loaded.is_set():
            log.warning("revocation_list_not_loaded", extra={
                "store": "redis", "detail": "serving without it; retrying in the background"})

    async def reload(self) -> None:
        self._resync.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def add(self, entry: Entry) -> None:
        try:
            await self._add(entry)
        except (redis.RedisError, OSError) as err:
            raise StoreError(f"redis: {type(err).__name__}: {err}") from None

    async def _add(self, entry: Entry) -> None:
        async with self._client() as client, client.pipeline(transaction=True) as pipe:
            # GT: a later until wins, an earlier one does not shorten an entry
            pipe.zadd(self.key, {_member(entry): entry.until}, gt=True)
            pipe.zremrangebyscore(self.key, "-inf", f"({time.time()}")
            pipe.publish(self.key, json.dumps(
                {"kind": entry.kind, "value": entry.value, "until": entry.until}))
            await pipe.execute()

    async def read(self) -> list[Entry]:
        try:
            async with self._client() as client:
                return await self._read(client)
        except (redis.RedisError, OSError) as err:
            raise StoreError(f"redis: {type(err).__name__}: {err}") from None

    async def _read(self, client: redis.Redis) -> list[Entry]:
        rows: list[Any] = await client.zrangebyscore(
            self.key, f"({time.time()}", "+inf", withscores=True)
        entries = [_from_member(str(member), float(score)) for member, score in rows]
        bad = sum(entry is None for entry in entries)
        if bad:
            log.warning("revocation_entries_ignored", extra={"store": "redis", "count": bad})
        return [entry for entry in entries if entry is not None]

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                await self._follow()
            except (redis.RedisError, OSError) as err:
                self._count("error")
                log.error("revocation_sync_failed", extra={
                    "store": "redis", "error": f"{type(err).__name__}: {err}",
                    "retry_in": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX, self.sync_interval)
                continue
            backoff = BACKOFF_FIRST

    async def _follow(self) -> None:
        """Subscribe, read the whole set, then apply messages until the connection fails."""
        async with self._client() as client, client.pubsub() as pubsub:
            await pubsub.subscribe(self.key)
            while True:
                self.target.replace(await self._read(client))
                self._count("ok")
                if not self.loaded.is_set():
                    self.loaded.set()
                    log.info("revocation_list_loaded", extra={
                        "store": "redis", "entries": len(self.target.until)})
                deadline = time.monotonic() + self.sync_interval
                self._resync.clear()
                while time.monotonic() < deadline and not self._resync.is_set():
                    wait = min(PRUNE_TICK, max(0.0, deadline - time.monotonic()))
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=wait)
                    if message is not None and message.get("type") == "message":
                        self._apply(message.get("data"))
                    self.target.prune()

    def _apply(self, data: Any) -> None:
        try:
            fields = json.loads(data)
            parsed = parse_entry({fields["kind"]: fields["value"], "until": fields["until"]})
        except (TypeError, ValueError, KeyError):
            parsed = "not a revocation message"
        if isinstance(parsed, str):
            log.warning("revocation_message_ignored", extra={"store": "redis",
                                                             "error": parsed})
            return
        self.target.merge([parsed])

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.revocation_sync.labels(result).inc()
