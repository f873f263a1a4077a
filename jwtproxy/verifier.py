"""Token → claims. Pre-parse limits first, then issuer, alg allow list, key, signature,
and the time / audience / token_use checks, in that order (RFC 8725)."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cachetools import TLRUCache, TTLCache
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .config import Issuer
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
from .jwks import KeySet, KeyStore, VerifyKey

SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]+")
MAX_JSON_DEPTH: Final = 16
MAX_KID_LENGTH: Final = 1024
DEFAULT_CACHE_SIZE: Final = 10_000
REJECTION_TTL: Final = 300.0  # seconds a lasting refusal is remembered
# Refusals that neither time nor a key refresh can turn into an acceptance (not: unknown
# kid, not yet valid, keys unavailable).
LASTING_REJECTIONS: Final = (Malformed, AlgNotAllowed, BadSignature, Expired, WrongIssuer,
                             WrongAudience, WrongTyp, WrongTokenUse)
# RFC 8725 §3.11: without a configured typ, only these (case-insensitive) are access tokens.
ACCEPTED_TYPS: Final = frozenset({"jwt", "at+jwt", "application/at+jwt", "application/jwt"})
# RFC 7515 §4.1: header members that would make us fetch or trust a key from the token.
KEY_SOURCE_HEADERS: Final = ("jku", "x5u", "jwk", "x5c")


@dataclass(frozen=True, slots=True)
class _Alg:
    kty: str
    curves: frozenset[str] | None
    verify: Callable[[Any, bytes, bytes], None]


def _rsa(hash_alg: hashes.HashAlgorithm, pss: bool) -> Callable[[Any, bytes, bytes], None]:
    def verify(key: Any, signature: bytes, message: bytes) -> None:
        pad = (padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size) if pss
               else padding.PKCS1v15())
        key.verify(signature, message, pad, hash_alg)
    return verify


def _ecdsa(hash_alg: hashes.HashAlgorithm, size: int) -> Callable[[Any, bytes, bytes], None]:
    def verify(key: Any, signature: bytes, message: bytes) -> None:
        # RFC 7518 §3.4: R || S, each exactly the curve's size; anything else is invalid.
        if len(signature) != 2 * size:
            raise InvalidSignature
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hash_alg))
    return verify


def _eddsa(key: Any, signature: bytes, message: bytes) -> None:
    key.verify(signature, message)


def _hmac(name: str) -> Callable[[Any, bytes, bytes], None]:
    def verify(key: Any, signature: bytes, message: bytes) -> None:
        if not hmac.compare_digest(hmac.new(key, message, name).digest(), signature):
            raise InvalidSignature
    return verify


ALGORITHMS: Final[Mapping[str, _Alg]] = {
    "RS256": _Alg("RSA", None, _rsa(hashes.SHA256(), False)),
    "RS384": _Alg("RSA", None, _rsa(hashes.SHA384(), False)),
    "RS512": _Alg("RSA", None, _rsa(hashes.SHA512(), False)),
    "PS256": _Alg("RSA", None, _rsa(hashes.SHA256(), True)),
    "PS384": _Alg("RSA", None, _rsa(hashes.SHA384(), True)),
    "PS512": _Alg("RSA", None, _rsa(hashes.SHA512(), True)),
    "ES256": _Alg("EC", frozenset({"P-256"}), _ecdsa(hashes.SHA256(), 32)),
    "ES384": _Alg("EC", frozenset({"P-384"}), _ecdsa(hashes.SHA384(), 48)),
    "ES512": _Alg("EC", frozenset({"P-521"}), _ecdsa(hashes.SHA512(), 66)),
    "EdDSA": _Alg("OKP", frozenset({"Ed25519", "Ed448"}), _eddsa),
    "Ed25519": _Alg("OKP", frozenset({"Ed25519"}), _eddsa),  # RFC 9864
    "HS256": _Alg("oct", None, _hmac("sha256")),
    "HS384": _Alg("oct", None, _hmac("sha384")),
    "HS512": _Alg("oct", None, _hmac("sha512")),
}


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


@dataclass(frozen=True, slots=True)
class Verified:
    """A token whose signature and claims passed for `issuer` (a config name)."""

    issuer: str
    claims: Mapping[str, Any]
    key: VerifyKey
    cache_hit: bool = False


@dataclass(frozen=True, slots=True)
class _Parsed:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _b64decode(segment: str) -> bytes:
    """base64url (RFC 7515 §2) of a segment already checked against SEGMENT."""
    padded = (segment + "=" * (-len(segment) % 4)).replace("-", "+").replace("_", "/")
    try:
        return binascii.a2b_base64(padded)
    except (binascii.Error, ValueError):
        raise Malformed("segment is not base64url") from None


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise Malformed(f"duplicate JSON member {key[:40]!r}")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise Malformed(f"{name} is not a JSON number")


_STRICT_JSON: Final = json.JSONDecoder(
    object_pairs_hook=_strict_object, parse_constant=_no_constants)


def _json_object(raw: bytes, part: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed(f"{part} is not UTF-8") from None
    if _depth(text) > MAX_JSON_DEPTH:
        raise Malformed(f"{part} JSON nested too deeply")
    try:
        value = _STRICT_JSON.decode(text)
    except (ValueError, RecursionError) as err:
        if isinstance(err, Malformed):
            raise
        raise Malformed(f"{part} is not JSON") from None
    if not isinstance(value, dict):
        raise Malformed(f"{part} is not a JSON object")
    return value


def _depth(text: str) -> int:
    """Upper bound of JSON nesting (brackets inside strings count too: a safe overestimate)."""
    if text.count("{") + text.count("[") <= MAX_JSON_DEPTH:
        return 0
    depth = deepest = 0
    for ch in text:
        if ch in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "}]":
            depth -= 1
    return deepest


def parse(token: str) -> _Parsed:
    """Structure checks before any crypto: three base64url segments, strict JSON objects,
    a header with a string `alg` and none of the members we refuse."""
    parts = token.split(".")
    if len(parts) == 5:
        raise Malformed("encrypted tokens (JWE) are not accepted")
    if len(parts) != 3:
        raise Malformed("a JWS token has three segments")
    for part in parts:
        if not SEGMENT.fullmatch(part):
            raise Malformed("segment is empty or not base64url")
    header = _json_object(_b64decode(parts[0]), "header")
    claims = _json_object(_b64decode(parts[1]), "payload")
    signature = _b64decode(parts[2])
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise Malformed("header alg is missing or not a string")
    if alg.lower() == "none":
        raise AlgNotAllowed("alg none is never accepted")
    for name in KEY_SOURCE_HEADERS:
        if name in header:
            raise Malformed(f"header {name} is not accepted: keys come only from the issuer")
    if "crit" in header:
        raise Malformed("header crit is not supported")  # RFC 7515 §4.1.11
    if "b64" in header:
        raise Malformed("header b64 is not supported")  # RFC 7797
    if "enc" in header or "zip" in header:
        raise Malformed("encrypted tokens (JWE) are not accepted")
    if "cty" in header:
        raise Malformed("nested tokens (cty) are not accepted")
    if "kid" in header and not (
        isinstance(header["kid"], str) and len(header["kid"]) <= MAX_KID_LENGTH
    ):
        raise Malformed("header kid is not a short string")
    if "typ" in header and not isinstance(header["typ"], str):
        raise Malformed("header typ is not a string")
    _check_claim_types(claims)
    signing_input = token[: len(parts[0]) + 1 + len(parts[1])].encode("ascii")
    return _Parsed(header, claims, signing_input, signature)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_claim_types(claims: Mapping[str, Any]) -> None:
    if "exp" not in claims:
        raise Malformed("exp claim is required")
    for name in ("exp", "nbf", "iat"):
        if name in claims and not _is_number(claims[name]):
            raise Malformed(f"{name} must be a finite number")
        if name in claims and abs(claims[name]) > 1e13:
            raise Malformed(f"{name} is out of range")
    if not isinstance(claims.get("iss"), str):
        raise Malformed("iss claim must be a string")
    if "sub" in claims and not isinstance(claims["sub"], str):
        raise Malformed("sub claim must be a string")
    aud = claims.get("aud", "")
    if not isinstance(aud, str) and not (
        isinstance(aud, list) and all(isinstance(item, str) for item in aud)
    ):
        raise Malformed("aud must be a string or a list of strings")


def _typ_matches(actual: str, expected: str) -> bool:
    """RFC 7515 §4.1.9: compare case-insensitively, `application/` may be omitted."""
    def norm(value: str) -> str:
        value = value.lower()
        return value[len("application/"):] if value.startswith("application/") else value
    return norm(actual) == norm(expected)


def key_fits(key: VerifyKey, alg_name: str) -> bool:
    """RFC 7517 §4: the key's kty/crv/alg/use/key_ops must allow verifying `alg_name`."""
    alg = ALGORITHMS[alg_name]
    if key.kty != alg.kty:
        return False
    if alg.curves is not None and key.crv not in alg.curves:
        return False
    if key.alg is not None and key.alg != alg_name and not (
        {key.alg, alg_name} <= {"EdDSA", "Ed25519"}
    ):
        return False
    if key.use is not None and key.use != "sig":
        return False
    return key.key_ops is None or "verify" in key.key_ops


class Verifier:
    """Verifies tokens against the configured issuers; caches verified tokens by digest,
    never past `exp`, re-running the time checks on every hit."""

    def __init__(
        self,
        issuers: Mapping[str, Issuer],
        stores: Mapping[str, KeyStore],
        wall_clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.issuers = issuers
        self.stores = stores
        self.now = wall_clock
        self.by_iss: dict[str, list[Issuer]] = {}
        for issuer in issuers.values():
            self.by_iss.setdefault(issuer.issuer, []).append(issuer)
        self.cache: TLRUCache[bytes, Verified] = TLRUCache(
            maxsize=cache_size, ttu=self._cache_until, timer=wall_clock)
        # A token refused for a reason that no time or key refresh can undo is refused
        # again from here: replaying a bad token must not cost a signature check each time.
        self.rejected: TTLCache[tuple[bytes, tuple[str, ...]], _Rejection] = TTLCache(
            maxsize=cache_size, ttl=REJECTION_TTL, timer=wall_clock)

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
        self, token: str, allowed: tuple[str, ...], trace: Trace | None = None
    ) -> Verified:
        """Verify `token` for one of the `allowed` issuers; `trace` (explain) records each
        check and bypasses the cache."""
        digest = hashlib.sha256(token.encode()).digest()
        if trace is None:
            rejection = self.rejected.get((digest, allowed))
            if rejection is not None and rejection.keys == self._key_sets(allowed):
                raise rejection.again()
        cached = self.cache.get(digest) if trace is None else None
        if cached is not None and cached.issuer in allowed:
            issuer = self.issuers[cached.issuer]
            store = self.stores[cached.issuer]
            if store.key_set is not None and cached.key in store.key_set:
                try:
                    self.check_time(cached.claims, issuer)
                except JwtProxyError as err:
                    err.issuer, err.cache_hit = issuer.name, True
                    raise
                return Verified(cached.issuer, cached.claims, cached.key, cache_hit=True)
        try:
            verified = await self._verify_uncached(token, allowed, trace)
        except JwtProxyError as err:
            err.cache_hit = False
            if isinstance(err, LASTING_REJECTIONS):
                self.rejected[(digest, allowed)] = _Rejection(
                    type(err), err.description, err.issuer, self._key_sets(allowed))
            raise
        self.cache[digest] = verified
        return verified

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
        first_error: JwtProxyError | None = None
        for issuer in self.choose_issuers(parsed.claims["iss"], allowed):
            if trace is not None:
                trace.append(Step("issuer", True, f"iss {issuer.issuer} -> issuer {issuer.name}"))
            try:
                return await self._verify_for(parsed, issuer, trace)
            except JwtProxyError as err:
                err.issuer = issuer.name
                first_error = first_error or err
        assert first_error is not None
        raise first_error

    async def _verify_for(self, parsed: _Parsed, issuer: Issuer, trace: Trace | None) -> Verified:
        key = await self.select_key(parsed.header, issuer)
        if trace is not None:
            trace.append(Step("key", True, f"kid={key.kid} kty={key.kty}"
                              + (f" crv={key.crv}" if key.crv else "")))
        self.check_signature(parsed, key)
        if trace is not None:
            trace.append(Step("signature", True, f"{parsed.header['alg']} verified"))
        self.check_claims(parsed.header, parsed.claims, issuer, trace)
        return Verified(issuer.name, parsed.claims, key)

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
    def check_signature(parsed: _Parsed, key: VerifyKey) -> None:
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
