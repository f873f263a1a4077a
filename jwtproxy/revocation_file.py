"""The revocation list in a YAML file: re-read when it changes (polled once a second) and
on SIGHUP. A file that does not parse is refused with a log line; the last good list keeps
applying. `add` (for `jwtproxy revoke`) rewrites it atomically."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Final

import yaml

from .metrics import Metrics
from .revocation import Entry, RevocationList, StoreError, parse_entries

log = logging.getLogger("jwtproxy.revocation")

POLL_INTERVAL: Final = 1.0
MAX_FILE_BYTES: Final = 64 * 1024 * 1024
HEADER: Final = ("# jwtproxy revocation list: - {jti|sub|origin_jti|client_id: VALUE, "
                 "until: TIME}\n")


class FileError(StoreError):
    """The file cannot be read or is not a valid list."""


def read_file(path: Path) -> list[Entry]:
    """The entries of the file (none if it does not exist); `FileError` if it is broken."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise FileError(f"cannot read: {err}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise FileError(f"larger than {MAX_FILE_BYTES} bytes")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        raise FileError(f"not valid YAML: {err}") from None
    entries, problems = parse_entries(data)
    if problems:
        raise FileError("; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
    return entries


class FileStore:
    def __init__(self, path: str, target: RevocationList, metrics: Metrics | None) -> None:
        self.path = Path(path)
        self.target = target
        self.metrics = metrics
        self._stamp: tuple[int, int, int] | None = None
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.reload()
        self._poller = asyncio.create_task(self._poll())

    async def reload(self) -> None:
        """Read the file (on a thread: a slow disk must not stall requests)."""
        self._stamp = self._current_stamp()
        try:
            entries = await asyncio.to_thread(read_file, self.path)
        except FileError as err:
            self._count("error")
            log.error("revocation_file_refused", extra={"file": str(self.path),
                                                        "error": str(err)})
            return
        self.target.replace(entries)
        self._count("ok")
        log.info("revocation_list_loaded", extra={"file": str(self.path),
                                                  "entries": len(self.target.until)})

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def add(self, entry: Entry) -> None:
        """Add one entry, dropping those past their until; refuses to touch a broken file."""
        await asyncio.to_thread(self._add, entry)

    async def read(self) -> list[Entry]:
        return await asyncio.to_thread(read_file, self.path)

    def _add(self, entry: Entry) -> None:
        try:
            self._rewrite(entry)
        except OSError as err:
            raise FileError(f"cannot write: {err}") from None

    def _rewrite(self, entry: Entry) -> None:
        merged = RevocationList()
        merged.replace([*read_file(self.path), entry])
        text = HEADER + yaml.safe_dump([e.as_data() for e in merged.entries()],
                                       sort_keys=False, default_flow_style=None)
        # write beside it and rename: a replica never reads half a file
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            if self.path.exists():
                os.chmod(tmp, self.path.stat().st_mode & 0o777)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size, info.st_ino

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self.target.prune()
            if self._current_stamp() != self._stamp:
                await self.reload()

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.revocation_sync.labels(result).inc()
