"""DPoP proof `jti`s shared by every replica through the revocation list's Redis.

RFC 9449 §11.1: a proof must not be accepted twice, whichever replica it reaches. Each
first use is one `SET <prefix>dpop:<sha256(jkt:jti)> 1 NX PX <window>`: Redis answers
whether it was the first. Redis unreachable: this process's own memory still refuses what
it saw itself (a replay across replicas then goes unseen until Redis answers again), and a
log line says so (at most one every 10 s).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Final

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .config import RedisStore
from .dpop import MemoryReplayCache

log = logging.getLogger("jwtproxy.dpop_replay")

TIMEOUT: Final = 0.25  # seconds: a proof check waits no longer for Redis
LOG_EVERY: Final = 10.0  # seconds between two log lines while Redis is down


class RedisReplayCache:
    """First use of a proof key across replicas, with this process's memory beside it."""

    def __init__(self, settings: RedisStore, local: MemoryReplayCache | None = None) -> None:
        self.settings = settings
        self.prefix = f"{settings.key_prefix}dpop:"
        self.local = local if local is not None else MemoryReplayCache()
        self._logged = 0.0
        self.client = redis.Redis.from_url(
            settings.url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT,
            retry=Retry(NoBackoff(), 0))

    async def first_use(self, key: str, ttl: float) -> bool:
        if not await self.local.first_use(key, ttl):
            return False
        digest = hashlib.sha256(key.encode()).hexdigest()
        try:
            first = await self.client.set(
                self.prefix + digest, b"1", nx=True, px=max(1, int(ttl * 1000)))
        except (redis.RedisError, OSError) as err:
            now = time.monotonic()
            if now - self._logged >= LOG_EVERY:
                self._logged = now
                log.warning("dpop_replay_store_unreachable",
                            extra={"error": f"{type(err).__name__}: {err}"[:200]})
            return True  # this process had not seen it (checked above)
        return bool(first)

    async def close(self) -> None:
        await self.client.aclose()
