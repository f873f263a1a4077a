"""Which store feeds the revocation list, kept across config reloads."""

from __future__ import annotations

from .config import Revocation
from .metrics import Metrics
from .revocation import RevocationList, Store


def open_store(settings: Revocation, target: RevocationList, metrics: Metrics | None) -> Store:
    if settings.redis is not None:
        from .revocation_redis import RedisStore

        return RedisStore(settings, target, metrics)
    from .revocation_file import FileStore

    assert settings.file is not None
    return FileStore(settings.file, target, metrics)


class Revocations:
    """The process's list and the store feeding it, kept across config reloads."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.list = RevocationList(metrics)
        self.settings: Revocation | None = None
        self.store: Store | None = None

    async def configure(self, settings: Revocation | None) -> None:
        """Start, switch or re-read (SIGHUP with the same settings) the store."""
        if settings == self.settings and self.store is not None:
            await self.store.reload()
            return
        old, self.settings = self.store, settings
        self.store = None
        if settings is not None:
            self.store = open_store(settings, self.list, self.metrics)
            await self.store.start()
        else:
            self.list.replace(())
        if old is not None:
            await old.close()

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
