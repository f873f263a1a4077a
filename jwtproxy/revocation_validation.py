"""The `revocation:` section → `Revocation`, every problem at its path."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from .config import RedisStore, Revocation
from .fields import FieldChecker, build

REDIS_SCHEMES: Final = ("redis", "rediss", "unix")


def revocation_settings(check: FieldChecker, value: Any) -> Revocation:
    path = "revocation"
    raw = check.mapping(path, value, {"file", "redis", "sync_interval", "max_token_lifetime"})
    kwargs: dict[str, Any] = {}
    if ("file" in raw) == ("redis" in raw):
        check.problem(path, "expected exactly one store: file or redis")
    if "file" in raw:
        name = check.string(f"{path}.file", raw["file"])
        # the file need not exist yet: `jwtproxy revoke` creates it
        kwargs["file"] = str(check.base_dir / name) if name else None
    if "redis" in raw:
        shared = check.mapping(f"{path}.redis", raw["redis"], {"url", "key_prefix"})
        url = check.string(f"{path}.redis.url", shared.get("url"))
        if url is not None and urlsplit(url).scheme not in REDIS_SCHEMES:
            check.problem(f"{path}.redis.url", f"expected redis://, rediss:// or unix://, "
                          f"got {url!r}")
            url = None
        prefix = (check.string(f"{path}.redis.key_prefix", shared["key_prefix"])
                  if "key_prefix" in shared else None)
        if url is not None:
            kwargs["redis"] = build(RedisStore, {"url": url, "key_prefix": prefix})
    for key in ("sync_interval", "max_token_lifetime"):
        if key in raw:
            kwargs[key] = check.duration(f"{path}.{key}", raw[key])
            if kwargs[key] == 0:
                check.problem(f"{path}.{key}", "must be more than 0")
                kwargs[key] = None
    return build(Revocation, kwargs)
