"""Token → claims. Pre-parse limits first, then issuer, alg allow list, key, signature,
and the time / audience / token_use checks, in that order (RFC 8725)."""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature

from .algorithms import ALGORITHMS, key_fits
from .config import Issuer
from .dpop import BEARER, Presentation, ProofChecker
from .errors import (
    AlgNotAllowed,
    BadSignature,
    Expired,
    JwtProxyError,
    Malformed,
    NotYetValid,
    UnknownKid,
    WrongAudience,
    WrongIssuer,
    WrongTokenUse,
    WrongTyp,
)
from .expiring import ExpiringCache
from .jwks import KeySet, KeyStore, VerifyKey
from .jws import ParsedToken, parse
from .revocation import RevocationList, token_marks

DEFAULT_CACHE_SIZE: Final = 10_000
REJECTION_TTL: Final = 300.0  # seconds a lasting refusal is remembered
# Refusals that neither time nor a key refresh can turn into an acceptance (not: unknown
# kid, not yet valid, keys unavailable).
LASTING_REJECTIONS: Final = (Malformed, AlgNotAllowed, BadSignature, Expired, WrongIssuer,
                             WrongAudience, WrongTyp, WrongTokenUse)
# RFC 8725 §3.11: without a configured typ, only these (case-insensitive) are access tokens.
ACCEPTED_TYPS: Final = frozenset({"jwt", "at+jwt", "application/at+jwt", "application/jwt"})


@dataclass(frozen=True, slots=True)
class Step:
    """One check of a decision, as `jwtproxy explain` prints it."""

    name: str
    ok: bool
    detail: str


Trace = list[Step]


@dataclass(frozen=True, slots=True)
class _Rejection:
    """A remembered refusal. It holds only while the route's issuers still have the very
    key sets they had then (a refresh may bring the key that makes the token good)."""

    error: type[JwtProxyError]
    description: str
    issuer: str | None
    keys: tuple[KeySet | None, ...]

    def again(self) -> JwtProxyError:
        err = self.error(self.description)
        err.issuer, err.cache_hit = self.issuer, True
        return err


class _Refused(Exception):
    """Every candidate issuer refused; the first error is the answer."""

    def __init__(self, errors: list[JwtProxyError]) -> None:
        super().__init__(errors[0].description)
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Verified:
    """A token whose signature and claims passed for `issuer` (a config name)."""

    issuer: str
    claims: Mapping[str, Any]
    key: VerifyKey
    cache_hit: bool = False
    marks: tuple[str, ...] = ()  # what the revocation list could name it by
    valid_from: float = -math.inf  # cached: the latest nbf/iat less the leeway


INTERNED_VALUE_CHARS: Final = 256


def _interned(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The claims with their names and short string values interned: every cached token of
    an issuer repeats `iss`, `aud`, `exp`, ... (~1.4 KB an entry -> ~0.9 KB)."""
    return {sys.intern(name): sys.intern(value) if type(value) is str
            and len(value) <= INTERNED_VALUE_CHARS else value
            for name, value in claims.items()}


def _typ_matches(actual: str, expected: str) -> bool:
    """RFC 7515 §4.1.9: compare case-insensitively, `application/` may be omitted."""
    def norm(value: str) -> str:
        value = value.lower()
        return value[len("application/"):] if value.startswith("application/") else value
    return norm(actual) == norm(expected)


def _remembered_until(_key: object, _value: object, now: float) -> float:
    return now + REJECTION_TTL


class Verifier:
    """Verifies tokens against the configured issuers; caches verified tokens by digest,
    never past `exp` (plus leeway: the cache drops them then), their nbf/iat checked again
    on every hit (against a wall clock stepped back)."""

    def __init__(
        self,
        issuers: Mapping[str, Issuer],
        stores: Mapping[str, KeyStore],
        wall_clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_CACHE_SIZE,
        proofs: ProofChecker | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        self.issuers = issuers
        self.proofs = proofs if proofs is not None else ProofChecker(wall_clock=wall_clock)
        self.revocations = revocations if revocations is not None else RevocationList()
        self.stores = stores
        self.now = wall_clock
        self.by_iss: dict[str, list[Issuer]] = {}
        for issuer in issuers.values():
            self.by_iss.setdefault(issuer.issuer, []).append(issuer)
        self.cache: ExpiringCache[bytes, Verified] = ExpiringCache(
            cache_size, self._cache_until, wall_clock)
        # A token refused for a reason that no time or key refresh can undo is refused
        # again from here: replaying a bad token must not cost a signature check each time.
        self.rejected: ExpiringCache[tuple[bytes, tuple[str, ...]], _Rejection] = ExpiringCache(
            cache_size, _remembered_until, wall_clock)

    def _cache_until(self, _key: bytes, value: Verified, now: float) -> float:
        return float(value.claims["exp"]) + self.issuers[value.issuer].leeway

    def choose_issuers(self, iss: str, allowed: tuple[str, ...]) -> list[Issuer]:
        """RFC 8725 §3.8: the unverified iss only picks which issuers verify strictly: the
        route's issuers with that iss, in the route's order (e.g. one Cognito pool
        configured twice, for ID and for access tokens)."""
        found = [issuer for issuer in self.by_iss.get(iss, ()) if issuer.name in allowed]
        if not found:
            raise WrongIssuer("token issuer is not accepted on this route")
        found.sort(key=lambda issuer: allowed.index(issuer.name))
        return found

    async def verify(
        self, token: str, allowed: tuple[str, ...], trace: Trace | None = None,
        presentation: Presentation = BEARER,
    ) -> Verified:
        """Verify `token` for one of the `allowed` issuers, then its binding (RFC 9449):
        a DPoP-bound token passes only with a fresh proof, from the cache too. `trace`
        (explain) records each check and bypasses the cache."""
        digest = hashlib.sha256(token.encode()).digest()
        # the common case costs no coroutine: a cache hit presented as a bearer token
        verified = self._cached(digest, allowed) if trace is None else None
        if verified is None:
            verified = await self._verify_token(token, digest, allowed, trace)
        try:
            if presentation.scheme == "bearer":
                self.proofs.check_bearer(verified.claims, self.issuers[verified.issuer])
                return verified
            jti = await self.proofs.check_proof(
                token, verified.claims, self.issuers[verified.issuer], presentation)
        except JwtProxyError as err:
            err.issuer, err.cache_hit = verified.issuer, verified.cache_hit
            raise
        if trace is not None:
            trace.append(Step("dpop", True, f"proof verified (jti {jti[:40]})"))
        return verified

    def _cached(self, digest: bytes, allowed: tuple[str, ...]) -> Verified | None:
        """The verified token from the cache, still within its time and not revoked."""
        cached = self.cache.get(digest)
        if cached is None or cached.issuer not in allowed:
            return None
        store = self.stores[cached.issuer]
        # `ready`: past stale_if_error no token of the issuer passes, cached or not
        if not store.ready or cached.key not in store.key_set:  # type: ignore[operator]
            return None  # (ready: it has a key set)
        try:
            if cached.valid_from > self.now():  # the full checks say which claim
                self.check_time(cached.claims, self.issuers[cached.issuer])
            self.revocations.check(cached.marks, cached.claims)
        except JwtProxyError as err:
            err.issuer, err.cache_hit = cached.issuer, True
            raise
        return cached  # stored with cache_hit=True

    async def _verify_token(
        self, token: str, digest: bytes, allowed: tuple[str, ...], trace: Trace | None
    ) -> Verified:
        if trace is None:
            rejection = self.rejected.get((digest, allowed))
            if rejection is not None and rejection.keys == self._key_sets(allowed):
                raise rejection.again()
        try:
            verified = await self._verify_uncached(token, allowed, trace)
        except _Refused as refused:
            self._remember(digest, allowed, refused.errors)
            raise refused.errors[0] from None
        except JwtProxyError as err:  # before any issuer was tried: parse, no such issuer
            self._remember(digest, allowed, [err])
            raise
        # as the next request sees it, its claims' names and short strings shared
        leeway = self.issuers[verified.issuer].leeway
        valid_from = max((float(verified.claims[name]) for name in ("nbf", "iat")
                          if name in verified.claims), default=-math.inf) - leeway
        self.cache[digest] = Verified(verified.issuer, _interned(verified.claims), verified.key,
                                      cache_hit=True, marks=verified.marks,
                                      valid_from=valid_from)  # not replace(): 3 µs
        try:
            self.revocations.check(verified.marks, verified.claims)
        except JwtProxyError as err:
            err.issuer, err.cache_hit = verified.issuer, False
            raise
        return verified

    def _remember(
        self, digest: bytes, allowed: tuple[str, ...], errors: list[JwtProxyError]
    ) -> None:
        """Remember a refusal only when every candidate issuer's reason is lasting: one
        issuer's `typ` error must not hide another's "not valid yet" (issue 16)."""
        first = errors[0]
        first.cache_hit = False
        if all(isinstance(err, LASTING_REJECTIONS) for err in errors):
            self.rejected[(digest, allowed)] = _Rejection(
                type(first), first.description, first.issuer, self._key_sets(allowed))

    def _key_sets(self, allowed: tuple[str, ...]) -> tuple[KeySet | None, ...]:
        """The route's issuers' current key sets (tuples compare items by identity first,
        so an unchanged set costs no key comparison)."""
        return tuple(self.stores[name].key_set for name in allowed)

    async def _verify_uncached(
        self, token: str, allowed: tuple[str, ...], trace: Trace | None
    ) -> Verified:
        parsed = parse(token)
        if trace is not None:
            header = parsed.header
            trace.append(Step("structure", True, f"alg={header['alg']} kid={header.get('kid')} "
                              f"typ={header.get('typ')}"))
        errors: list[JwtProxyError] = []
        for issuer in self.choose_issuers(parsed.claims["iss"], allowed):
            if trace is not None:
                trace.append(Step("issuer", True, f"iss {issuer.issuer} -> issuer {issuer.name}"))
            try:
                return await self._verify_for(parsed, issuer, trace)
            except JwtProxyError as err:
                err.issuer = issuer.name
                errors.append(err)
        raise _Refused(errors)

    async def _verify_for(
        self, parsed: ParsedToken, issuer: Issuer, trace: Trace | None
    ) -> Verified:
        key = await self.select_key(parsed.header, issuer)
        if trace is not None:
            trace.append(Step("key", True, f"kid={key.kid} kty={key.kty}"
                              + (f" crv={key.crv}" if key.crv else "")))
        self.check_signature(parsed, key)
        if trace is not None:
            trace.append(Step("signature", True, f"{parsed.header['alg']} verified"))
        self.check_claims(parsed.header, parsed.claims, issuer, trace)
        return Verified(issuer.name, parsed.claims, key, marks=token_marks(parsed.claims))

    async def select_key(self, header: Mapping[str, Any], issuer: Issuer) -> VerifyKey:
        alg = header["alg"]
        if alg not in issuer.algorithms or alg not in ALGORITHMS:
            raise AlgNotAllowed(f"alg {alg[:20]} is not allowed for this issuer")
        store = self.stores[issuer.name]
        keys = await store.current()
        kid = header.get("kid")
        if kid is None:
            fitting = [key for key in keys.keys if key_fits(key, alg)]
            if len(fitting) != 1:
                raise UnknownKid("token has no kid and the issuer has no single key for its alg")
            return fitting[0]
        candidates = keys.by_kid(kid)
        if not candidates:
            keys = await store.refresh_for_unknown_kid()
            candidates = keys.by_kid(kid)
            if not candidates:
                raise UnknownKid("no key with the token's kid")
        for key in candidates:
            if key_fits(key, alg):
                return key
        raise AlgNotAllowed("the key with the token's kid does not fit its alg")

    @staticmethod
    def check_signature(parsed: ParsedToken, key: VerifyKey) -> None:
        try:
            ALGORITHMS[parsed.header["alg"]].verify(
                key.material, parsed.signature, parsed.signing_input)
        except (InvalidSignature, ValueError):
            raise BadSignature("signature does not verify") from None

    def check_time(
        self, claims: Mapping[str, Any], issuer: Issuer, trace: Trace | None = None
    ) -> None:
        now, leeway = self.now(), issuer.leeway
        exp_ok = now <= claims["exp"] + leeway
        if trace is not None:
            trace.append(Step("exp", exp_ok, f"exp {claims['exp']} vs now {now:.0f} "
                              f"(leeway {leeway:g}s)"))
        if not exp_ok:
            raise Expired("token expired")
        for name in ("nbf", "iat"):
            if name not in claims:
                continue
            ok = now + leeway >= claims[name]
            if trace is not None:
                trace.append(Step(name, ok, f"{name} {claims[name]} vs now {now:.0f} "
                                  f"(leeway {leeway:g}s)"))
            if not ok:
                raise NotYetValid(f"token not valid yet ({name} in the future)")

    def check_claims(
        self,
        header: Mapping[str, Any],
        claims: Mapping[str, Any],
        issuer: Issuer,
        trace: Trace | None = None,
    ) -> None:
        typ = header.get("typ")
        if issuer.typ is not None:
            ok = typ is not None and _typ_matches(typ, issuer.typ)
            detail = f"typ {typ!r} vs required {issuer.typ!r}"
        else:
            ok = typ is None or typ.lower() in ACCEPTED_TYPS
            detail = f"typ {typ!r}: absent or an access-token type"
        if trace is not None:
            trace.append(Step("typ", ok, detail))
        if not ok:
            raise WrongTyp(f"token typ must be {issuer.typ or 'JWT or at+jwt'}")
        self.check_time(claims, issuer, trace)
        if issuer.audiences:
            aud = claims.get("aud")
            if aud is not None:
                values = [aud] if isinstance(aud, str) else aud
                ok = any(value in issuer.audiences for value in values)
                detail = f"aud {aud!r} vs accepted {list(issuer.audiences)!r}"
            else:
                ok = claims.get("client_id") in issuer.audiences
                detail = (f"no aud; client_id {claims.get('client_id')!r} vs accepted "
                          f"{list(issuer.audiences)!r}")
            if trace is not None:
                trace.append(Step("audience", ok, detail))
            if not ok:
                raise WrongAudience("token audience is not accepted")
        if issuer.token_use is not None:
            ok = claims.get("token_use") == issuer.token_use
            if trace is not None:
                trace.append(Step("token_use", ok, f"token_use {claims.get('token_use')!r} vs "
                                  f"required {issuer.token_use!r}"))
            if not ok:
                raise WrongTokenUse(f"token_use must be {issuer.token_use}")
