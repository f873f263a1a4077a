"""Per-issuer key cache: fetch (JWKS URL, OIDC discovery, file, or secret), TTL with
background refresh, single-flight kid-miss refresh, last good keys on errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwk
from joserfc.errors import JoseError

from .config import Issuer, url_allowed
from .errors import KeySourceError, KeysUnavailable

log = logging.getLogger("jwtproxy.jwks")

MAX_DOCUMENT_BYTES: Final = 150 * 1024
MAX_KEYS: Final = 100
MIN_RSA_BITS: Final = 2048  # RFC 7518 §3.3
BACKGROUND_REFRESH_AT: Final = 0.8  # of the TTL: refresh before the keys go stale
MAX_AGE: Final = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)


class RefreshObserver(Protocol):
    def jwks_refreshed(self, issuer: str, ok: bool, key_count: int | None) -> None: ...


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """A public key (or HMAC secret) with the JWK parameters that constrain its use."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    use: str | None
    key_ops: tuple[str, ...] | None
    material: Any  # cryptography public key object, or bytes for HMAC


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[VerifyKey, ...]
    _ids: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ids", frozenset(id(key) for key in self.keys))

    def by_kid(self, kid: str) -> list[VerifyKey]:
        return [key for key in self.keys if key.kid == kid]

    def __contains__(self, key: object) -> bool:
        """Identity, not equality: the very key object this set was built with."""
        return id(key) in self._ids


def parse_jwks(document: bytes) -> tuple[KeySet, list[str]]:
    """Parse a JWKS document; return the usable keys and why each other key was skipped."""
    try:
        data = json.loads(document, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise KeySourceError(f"JWKS is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeySourceError("JWKS has no `keys` list")
    if len(data["keys"]) > MAX_KEYS:
        raise KeySourceError(f"JWKS has {len(data['keys'])} keys (limit {MAX_KEYS})")
    keys, skipped = [], []
    for i, raw in enumerate(data["keys"]):
        try:
            keys.append(_import_public_key(raw))
        except (KeySourceError, JoseError, ValueError, TypeError) as err:
            kid = raw.get("kid") if isinstance(raw, dict) else None
            skipped.append(f"keys[{i}] (kid {kid!r}): {err}")
    return KeySet(tuple(keys)), skipped


def public_key(raw: Any) -> VerifyKey:
    """One public JWK (a DPoP proof's `jwk`), as strictly as a JWKS member is read;
    `KeySourceError` when it is not a usable public key."""
    try:
        return _import_public_key(raw)
    except (JoseError, ValueError, TypeError) as err:
        raise KeySourceError(f"not a usable public key: {err}") from None


def _import_public_key(raw: Any) -> VerifyKey:
    if not isinstance(raw, dict):
        raise KeySourceError("not an object")
    kty = raw.get("kty")
    if kty not in ("RSA", "EC", "OKP"):
        raise KeySourceError(f"kty {kty!r} is not an asymmetric key type")
    if any(private in raw for private in ("d", "p", "q", "dp", "dq", "qi", "oth", "k")):
        raise KeySourceError("contains private key material")
    for name in ("kid", "alg", "use", "crv"):
        if name in raw and not isinstance(raw[name], str):
            raise KeySourceError(f"{name} is not a string")
    key_ops = raw.get("key_ops")
    if key_ops is not None and not (
        isinstance(key_ops, list) and all(isinstance(op, str) for op in key_ops)
    ):
        raise KeySourceError("key_ops is not a list of strings")
    imported = jwk.import_key({k: v for k, v in raw.items() if k in _PUBLIC_MEMBERS[kty]})
    material = imported.public_key
    if isinstance(material, rsa.RSAPublicKey) and material.key_size < MIN_RSA_BITS:
        raise KeySourceError(f"RSA key of {material.key_size} bits (minimum {MIN_RSA_BITS})")
    return VerifyKey(
        kid=raw.get("kid"), kty=kty, crv=raw.get("crv"), alg=raw.get("alg"),
        use=raw.get("use"), key_ops=tuple(key_ops) if key_ops is not None else None,
        material=material,
    )


_PUBLIC_MEMBERS: Final = {
    "RSA": {"kty", "n", "e"},
    "EC": {"kty", "crv", "x", "y"},
    "OKP": {"kty", "crv", "x"},
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def secret_key_set(secret: str) -> KeySet:
    key = VerifyKey(None, "oct", None, None, None, None, secret.encode())
    return KeySet((key,))


class KeyStore:
    """The keys of one issuer.

    Lookups never wait for the network while keys are held: expired keys keep serving
    (up to `stale_if_error` past their TTL) while a background task refreshes them.
    """

    def __init__(
        self,
        issuer: Issuer,
        session: aiohttp.ClientSession | None,
        observer: RefreshObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.session = session
        self.observer = observer
        self.clock = clock
        self.settings = issuer.jwks
        self.key_set: KeySet | None = None
        self.fetched_at = 0.0
        self.fresh_until = 0.0
        self.last_attempt = -float("inf")
        self.failures = 0
        self.last_error = ""
        self.jwks_uri = issuer.jwks_uri
        self._inflight: asyncio.Task[None] | None = None
        self._background: asyncio.Task[None] | None = None
        self._ssl = _ssl_context(issuer.ca_file)
        if issuer.secret is not None:
            self.key_set = secret_key_set(issuer.secret)
            self.fresh_until = float("inf")

    @property
    def is_remote(self) -> bool:
        return self.issuer.secret is None and self.issuer.jwks_file is None

    @property
    def ready(self) -> bool:
        """Keys are held and usable (the verifier checks this on every cache hit)."""
        return (self.key_set is not None
                and self.clock() < self.fresh_until + self.settings.stale_if_error)

    @property
    def usable_key_count(self) -> int:
        """What `jwtproxy_jwks_keys` reports: 0 once the keys are past `stale_if_error`."""
        return len(self.key_set.keys) if self.key_set is not None and self.ready else 0

    @property
    def usable_until(self) -> float:
        return self.fresh_until + self.settings.stale_if_error

    async def start(self) -> None:
        """First load; failures are logged and retried in the background."""
        if self.issuer.secret is not None:
            return
        await self.refresh()
        if self.is_remote:
            self._background = asyncio.create_task(self._refresh_loop())

    async def close(self) -> None:
        for task in (self._background, self._inflight):
            if task is not None:
                task.cancel()
        for task in (self._background, self._inflight):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def current(self) -> KeySet:
        """The keys to verify with now; raises `KeysUnavailable` if none are usable."""
        now = self.clock()
        if self.key_set is not None and now < self.usable_until:
            if now >= self.fresh_until and self._refresh_due(now):
                self._start_fetch()  # refresh in the background; serve these meanwhile
            return self.key_set
        if self.clock() - self.last_attempt >= self.min_interval:
            await self.refresh()
        if self.key_set is not None and self.clock() < self.usable_until:
            return self.key_set
        raise KeysUnavailable(f"keys of issuer {self.issuer.name} are unavailable")

    @property
    def min_interval(self) -> float:
        """Seconds between two loads. A file read is cheap: a jwks_file is re-read each
        `cache_ttl` even below `refresh_min_interval` (which guards remote issuers)."""
        if self.issuer.jwks_file is not None:
            return min(self.settings.refresh_min_interval, self.settings.cache_ttl)
        return self.settings.refresh_min_interval

    def _refresh_due(self, now: float) -> bool:
        # a jwks_file is re-read too, so a rotated key file (a mounted Secret) is picked up
        return (self.issuer.secret is None and self._inflight is None
                and now - self.last_attempt >= self.min_interval)

    async def refresh_for_unknown_kid(self) -> KeySet:
        """One refresh on an unknown kid, at most once per `refresh_min_interval`."""
        if self.is_remote and (
            self._inflight is not None
            or self.clock() - self.last_attempt >= self.settings.refresh_min_interval
        ):
            await self.refresh()
        return await self.current()

    async def refresh(self) -> None:
        """Fetch now, sharing one in-flight fetch among all callers (single flight)."""
        await asyncio.shield(self._start_fetch())

    def _start_fetch(self) -> asyncio.Task[None]:
        if self._inflight is None:
            task = asyncio.create_task(self._fetch_and_store())
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        return self._inflight

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch_and_store(self) -> None:
        self.last_attempt = self.clock()
        try:
            document, max_age = await self._load()
            key_set, skipped = parse_jwks(document)
        except KeySourceError as err:
            self._failed(str(err))
            return
        for why in skipped:
            log.warning("jwks_key_skipped", extra={"issuer": self.issuer.name, "detail": why})
        if not key_set.keys:
            self._failed("JWKS holds no usable key")
            return
        ttl = self.settings.cache_ttl
        if max_age is not None:
            ttl = min(max(float(max_age), self.settings.refresh_min_interval), ttl)
        now = self.clock()
        self.key_set, self.fetched_at, self.fresh_until = key_set, now, now + ttl
        self.failures, self.last_error = 0, ""
        log.info("jwks_refreshed", extra={"issuer": self.issuer.name,
                                          "keys": len(key_set.keys), "ttl": ttl})
        if self.observer is not None:
            self.observer.jwks_refreshed(self.issuer.name, True, len(key_set.keys))

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        stale = self.key_set is not None and self.clock() < self.usable_until
        log.warning("jwks_refresh_failed", extra={
            "issuer": self.issuer.name, "error": why,
            "serving": "stale_keys" if stale else "no_keys"})
        if self.observer is not None:
            self.observer.jwks_refreshed(self.issuer.name, False, None)

    async def _refresh_loop(self) -> None:
        while True:
            if self.failures:
                base = self.settings.refresh_min_interval * 2 ** min(self.failures - 1, 8)
                delay = min(base, self.settings.cache_ttl) * random.uniform(0.8, 1.2)
            else:
                ttl = self.fresh_until - self.fetched_at
                delay = max(self.fetched_at + ttl * BACKGROUND_REFRESH_AT - self.clock(),
                            self.settings.refresh_min_interval)
            await asyncio.sleep(delay)
            await self.refresh()

    async def _load(self) -> tuple[bytes, int | None]:
        if self.issuer.jwks_file is not None:
            try:
                return Path(self.issuer.jwks_file).read_bytes()[: MAX_DOCUMENT_BYTES + 1], None
            except OSError as err:
                raise KeySourceError(f"cannot read {self.issuer.jwks_file}: {err}") from None
        if self.jwks_uri is None:
            self.jwks_uri = await self._discover()
        return await self._get(self.jwks_uri)

    async def _discover(self) -> str:
        assert self.issuer.discovery_uri is not None
        body, _ = await self._get(self.issuer.discovery_uri)
        try:
            meta = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise KeySourceError("discovery document is not valid JSON") from None
        if not isinstance(meta, dict):
            raise KeySourceError("discovery document is not a JSON object")
        # OIDC Discovery §4.3: the issuer in the document must equal the configured one.
        if meta.get("issuer") != self.issuer.issuer:
            raise KeySourceError(
                f"discovery issuer {meta.get('issuer')!r} != configured {self.issuer.issuer!r}")
        uri = meta.get("jwks_uri")
        if not isinstance(uri, str) or not url_allowed(uri, self.issuer.allow_insecure_http):
            raise KeySourceError(f"discovery jwks_uri {uri!r} is not an allowed https URL")
        return uri

    async def _get(self, url: str) -> tuple[bytes, int | None]:
        if self.session is None:
            raise KeySourceError(f"GET {url}: no HTTP session (offline)")
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        try:
            async with self.session.get(
                url, allow_redirects=False, timeout=timeout, ssl=self._ssl,
                headers={"Accept": "application/json"},
            ) as resp:
                if resp.status != 200:
                    raise KeySourceError(f"GET {url}: HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(16384):
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise KeySourceError(f"GET {url}: body over {MAX_DOCUMENT_BYTES} bytes")
                match = MAX_AGE.search(resp.headers.get("Cache-Control", ""))
                return bytes(body), int(match.group(1)) if match else None
        except TimeoutError:
            raise KeySourceError(f"GET {url}: timed out after {self.settings.timeout}s") from None
        except aiohttp.ClientError as err:
            raise KeySourceError(f"GET {url}: {type(err).__name__}: {err}") from None


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    return context



def build_stores(
    issuers: Iterable[Issuer],
    session: aiohttp.ClientSession | None,
    observer: RefreshObserver | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, KeyStore]:
    return {issuer.name: KeyStore(issuer, session, observer, clock) for issuer in issuers}
