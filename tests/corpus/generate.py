"""The adversarial token corpus: named cases, each mapped to the status and reason
the product contract (shared/DESIGN.md) demands, through one documented rule.

`build_corpus(keys)` returns the cases for keys generated at run time (`forge.generate_keys`);
nothing here is stored. Run it as a script for a summary table:

    python tests/corpus/generate.py [--tokens]

The rules are listed in `RULES` and, as a table, in tests/corpus/README.md. Every case
breaks exactly one rule (or none, for the positive controls) unless its description says
which earlier rule wins; the order of the checks is the order of `RULES`.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

try:
    from . import forge
except ImportError:  # run as a script: python tests/corpus/generate.py
    import forge  # type: ignore[no-redef]

# ------------------------------------------------------------------ the proxy under test
# tests/test_corpus.py configures the proxy with these issuers and routes.

ISSUER_MAIN: Final = "https://issuer-a.jwtproxy.test"
AUDIENCE_MAIN: Final = "api://orders"
ISSUER_PARTNER: Final = "https://issuer-b.jwtproxy.test"
AUDIENCE_PARTNER: Final = "api://partner"
TYP_PARTNER: Final = "at+jwt"  # the partner issuer is configured with `typ: at+jwt`
ISSUER_HS: Final = "hs-dev"
AUDIENCE_HS: Final = "api://hs"
MAIN_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "ES256", "EdDSA", "Ed25519")
LEEWAY: Final = 60  # seconds, every issuer
MAX_TOKEN_BYTES: Final = 8192  # server.max_token_bytes (the default)
SCOPE: Final = "orders/read"  # required by route SCOPED
GROUP_CLAIM: Final = "groups"  # route GROUPS requires groups to contain GROUP
GROUP: Final = "admin"

# route names: main (issuer main, token_use access), partner (issuer partner, typ at+jwt),
# hs (HS256 issuer), scoped (main + scopes), groups (main + claims)
MAIN: Final = "main"
PARTNER: Final = "partner"
HS: Final = "hs"
SCOPED: Final = "scoped"
GROUPS: Final = "groups"
ROUTES: Final = (MAIN, PARTNER, HS, SCOPED, GROUPS)


@dataclass(frozen=True)
class Rule:
    status: int
    reason: str
    text: str


# In check order: when a token breaks several rules, the first one listed decides.
RULES: Final[dict[str, Rule]] = {
    "missing": Rule(401, "missing", "no token on a protected route (no error code: RFC 6750 §3.1)"),
    "size": Rule(
        401, "malformed", "token longer than server.max_token_bytes (8192): refused unparsed"
    ),
    "shape": Rule(
        401,
        "malformed",
        "not exactly three segments, an empty segment (an empty signature too, so an "
        "unsigned `alg: none` token stops here), or a character outside the unpadded "
        "base64url alphabet (`=`, `+`, `/`, whitespace); JWE (five segments) included "
        "(RFC 7515 §7.1)",
    ),
    "json": Rule(
        401,
        "malformed",
        "header or payload is not a strict JSON object in UTF-8: duplicate members, "
        "NaN/Infinity, a number overflowing to infinity, trailing data, a BOM, invalid "
        "UTF-8, nesting deeper than the bound, or a top-level array/string/number/null",
    ),
    "types": Rule(
        401,
        "malformed",
        "a member of the wrong type: exp/nbf/iat not a finite JSON number (booleans are not "
        "numbers) or beyond ±1e13 s (year 318 857; far past any real date), iss/sub not "
        "strings, aud not a string or list of strings, alg absent or not a string, kid "
        "present and neither a string nor null",
    ),
    "required": Rule(
        401,
        "malformed",
        "exp or iss absent: an access token without expiry, or without an issuer to check, "
        "is not accepted",
    ),
    "header-forbidden": Rule(
        401,
        "malformed",
        "jku, x5u, jwk or x5c present (never key sources, whatever they point to), crit "
        "present (no extension is understood; an empty list is malformed too), b64 present "
        "(RFC 7797 unencoded payload)",
    ),
    "issuer": Rule(
        401,
        "issuer",
        "iss not byte-for-byte equal to the iss of one of the route's issuers (no case "
        "folding, slash trimming or Unicode normalisation)",
    ),
    "alg": Rule(
        401,
        "alg",
        "alg not in the chosen issuer's allow list, compared case-sensitively: `none` in any "
        "spelling, with or without a signature; HS* on an asymmetric issuer whatever was "
        "used as the HMAC key (RFC 8725 §2.1, §3.1)",
    ),
    "key-fit": Rule(
        401,
        "alg",
        "the key that kid names does not fit alg: kty/crv differ, the JWK's alg differs, or "
        "its use is not sig",
    ),
    "kid": Rule(
        401,
        "unknown_kid",
        "kid not in the issuer's JWKS after one refresh; or no kid (absent or null) and not "
        "exactly one key fits alg",
    ),
    "signature": Rule(
        401,
        "bad_signature",
        "the signature does not verify under the selected key, whatever its length or "
        "encoding (DER ECDSA, r or s = 0 or ≥ n, truncated, another key with the same kid, "
        "tampered header or payload)",
    ),
    "expired": Rule(401, "expired", "now > exp + leeway"),
    "not-yet-valid": Rule(401, "not_yet_valid", "nbf > now + leeway, or iat > now + leeway"),
    "audience": Rule(
        401,
        "audience",
        "no audience of the issuer in aud (string, or list of strings); a token without aud "
        "needs client_id equal to one",
    ),
    "typ": Rule(
        401,
        "typ",
        "issuer without typ: typ, if present, is JWT, at+jwt or application/at+jwt; issuer "
        "with typ: typ present and equal; case-insensitive, `application/` optional "
        "(RFC 8725 §3.11, RFC 7515 §4.1.9)",
    ),
    "token-use": Rule(
        401, "token_use", "issuer with token_use: the token_use claim present and equal"
    ),
    "scope": Rule(403, "scope", "route scopes: each in `scope` (space-separated) or `scp`"),
    "claim": Rule(403, "claim", "route claims: value equal, or list containing it (exact)"),
    "valid": Rule(200, "ok", "passes every check: forwarded upstream"),
}


@dataclass(frozen=True)
class Case:
    """One request to make: `Authorization: Bearer <token>` (no header if token is empty)."""

    name: str
    token: str
    expected_status: int
    expected_reason: str
    description: str
    route: str | None = None  # None: MAIN
    rule: str = ""

    @property
    def route_name(self) -> str:
        return self.route or MAIN


def make_case(name: str, rule: str, description: str, token: str, route: str | None = None) -> Case:
    spec = RULES[rule]
    return Case(
        name=name,
        token=token,
        expected_status=spec.status,
        expected_reason=spec.reason,
        description=f"{description} [{rule}: {spec.text}]",
        route=route,
        rule=rule,
    )


_DROP: Final = object()  # as a claim value: leave the claim out


def main_claims(name: str, now: int, **override: Any) -> dict[str, Any]:
    """Claims the main issuer's routes accept; `jti` is the case name, so every token differs."""
    claims: dict[str, Any] = {
        "iss": ISSUER_MAIN,
        "sub": "user-1",
        "aud": AUDIENCE_MAIN,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "token_use": "access",
        "scope": "profile",
        "jti": name,
    }
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not _DROP}


def _raw_json(obj: dict[str, Any], raw: dict[str, bytes]) -> bytes:
    """JSON of `obj` with members in `raw` spliced in as raw JSON text (NaN, 1e400, ...)."""
    marked = {**obj, **{key: f"@@{key}@@" for key in raw}}
    data = forge.dump(marked)
    for key, text in raw.items():
        data = data.replace(f'"@@{key}@@"'.encode(), text)
    return data


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


class _Builder:
    def __init__(self, keys: forge.Keys, now: int, attacker_url: str) -> None:
        self.keys = keys
        self.now = now
        self.attacker_url = attacker_url.rstrip("/")
        self.cases: dict[str, Case] = {}
        self._default_key: dict[str, tuple[forge.PrivateKey, str]] = {
            "RS": (keys.rsa, forge.KID_RSA),
            "PS": (keys.rsa, forge.KID_RSA),
            "ES": (keys.ec, forge.KID_EC),
            "Ed": (keys.ed, forge.KID_ED),
        }

    def add(self, name: str, rule: str, description: str, token: str, route: str | None = None):
        if name in self.cases:
            raise ValueError(f"duplicate case name {name}")
        self.cases[name] = make_case(name, rule, description, token, route)

    # ---------------------------------------------------------------- token helpers

    def claims(self, name: str, **override: Any) -> dict[str, Any]:
        return main_claims(name, self.now, **override)

    def header(self, alg: Any = "RS256", kid: Any = forge.KID_RSA, **extra: Any) -> dict:
        head: dict[str, Any] = {"alg": alg}
        if kid is not None:
            head["kid"] = kid
        return {**head, **extra}

    def token(
        self,
        name: str,
        alg: str = "RS256",
        *,
        key: forge.PrivateKey | bytes | None = None,
        kid: Any = _DROP,
        header: dict[str, Any] | None = None,
        payload: dict[str, Any] | bytes | None = None,
        **claims: Any,
    ) -> str:
        """A main-issuer token signed properly with `alg` (keys and kid by algorithm family)."""
        default_key, default_kid = self._default_key.get(alg[:2], (None, None))
        signer = key if key is not None else default_key
        head = (
            header if header is not None else self.header(alg, default_kid if kid is _DROP else kid)
        )
        body = payload if payload is not None else self.claims(name, **claims)
        return forge.jws(head, body, signer, sign_alg=alg if alg != "none" else None)

    def raw_payload(self, name: str, **raw: bytes) -> bytes:
        return _raw_json(self.claims(name), raw)

    # ---------------------------------------------------------------- the groups

    def positive(self) -> None:
        for alg in ("RS256", "RS384", "RS512", "PS256", "ES256", "EdDSA", "Ed25519"):
            name = f"ok-{alg.lower()}"
            self.add(name, "valid", f"{alg}, key chosen by kid", self.token(name, alg))
        name = "ok-rs256-pinned-key"
        self.add(
            name,
            "valid",
            "RS256 with the key whose JWK pins alg RS256",
            self.token(name, key=self.keys.rsa_pinned, kid=forge.KID_RSA_PINNED),
        )
        for alg, why in (
            ("ES256", "only one P-256 key (the P-384 key does not fit ES256)"),
            ("EdDSA", "only one Ed25519 key"),
            ("RS384", "only rsa-1 fits: rsa-rs256 is pinned to RS256, rsa-enc is use=enc"),
        ):
            name = f"ok-no-kid-{alg.lower()}"
            self.add(name, "valid", f"{alg} without kid: {why}", self.token(name, alg, kid=None))
        for typ in ("JWT", "at+jwt", "application/at+jwt", "AT+JWT", "jwt"):
            name = "ok-typ-" + typ.lower().replace("/", "-").replace("+", "-")
            if typ != typ.lower():
                name += "-upper"
            self.add(
                name,
                "valid",
                f"typ {typ}: an access-token type, compared case-insensitively",
                self.token(name, header=self.header(typ=typ)),
            )
        now = self.now
        claim_controls: list[tuple[str, str, dict[str, Any]]] = [
            (
                "ok-aud-list",
                "aud a list containing the audience",
                {"aud": ["api://other", AUDIENCE_MAIN]},
            ),
            (
                "ok-client-id-no-aud",
                "no aud, client_id equals the audience (Cognito access)",
                {"aud": _DROP, "client_id": AUDIENCE_MAIN},
            ),
            ("ok-exp-float", "exp a finite float in the future", {"exp": now + 3600.5}),
            (
                "ok-exp-year-33658",
                "exp 10**12 (year 33658): must not overflow a date type",
                {"exp": 10**12},
            ),
            ("ok-expired-within-leeway", f"exp 20 s ago, leeway {LEEWAY} s", {"exp": now - 20}),
            ("ok-nbf-within-leeway", f"nbf 20 s ahead, leeway {LEEWAY} s", {"nbf": now + 20}),
            ("ok-iat-within-leeway", f"iat 20 s ahead, leeway {LEEWAY} s", {"iat": now + 20}),
            (
                "ok-minimal-claims",
                "only iss, aud, exp, token_use: nbf, iat, sub are optional",
                {"nbf": _DROP, "iat": _DROP, "sub": _DROP, "scope": _DROP},
            ),
        ]
        for name, what, override in claim_controls:
            self.add(name, "valid", what, self.token(name, **override))
        name = "ok-exp-exponent"
        self.add(
            name,
            "valid",
            "exp written 1e10 (a finite number, year 2286)",
            self.token(name, payload=self.raw_payload(name, exp=b"1e10")),
        )
        name = "ok-unknown-header-member"
        self.add(
            name,
            "valid",
            "an unknown header member without crit is ignored (RFC 7515 §4)",
            self.token(name, header=self.header(**{"x-trace": "abc"})),
        )
        name = "ok-max-token-bytes"
        self.add(
            name,
            "valid",
            f"exactly {MAX_TOKEN_BYTES} bytes: the limit itself is allowed",
            self.sized_token(name, MAX_TOKEN_BYTES),
        )
        # other issuers
        self.add(
            "ok-partner",
            "valid",
            "partner token on the partner route",
            self.partner("ok-partner"),
            PARTNER,
        )
        self.add(
            "ok-partner-typ-application",
            "valid",
            "partner wants typ at+jwt: application/AT+JWT is the same media type",
            self.partner("ok-partner-typ-application", typ="application/AT+JWT"),
            PARTNER,
        )
        self.add("ok-hs256", "valid", "HS256 on the HS issuer", self.hs("ok-hs256"), HS)

    def sized_token(self, name: str, size: int) -> str:
        """A valid main token exactly `size` characters long, padded by a claim.

        base64url reaches only three of four lengths mod 4, so the header's length mod 3
        is varied through the algorithm: RS256/rsa-1, EdDSA/ed-1 and Ed25519/ed-1 headers
        are 29, 28 and 30 bytes."""
        for alg in ("RS256", "EdDSA", "Ed25519"):
            base = len(self.token(name, alg, pad=""))
            start = max(0, (size - base) * 3 // 4 - 4)
            for pad in range(start, start + 12):
                token = self.token(name, alg, pad="x" * pad)
                if len(token) == size:
                    return token
        raise AssertionError(f"cannot make a {size}-byte token")

    def partner(self, name: str, typ: str | None = TYP_PARTNER, **override: Any) -> str:
        claims = {
            "iss": ISSUER_PARTNER,
            "sub": "svc-1",
            "aud": AUDIENCE_PARTNER,
            "iat": self.now,
            "exp": self.now + 3600,
            "jti": name,
            **override,
        }
        head = self.header("RS256", forge.KID_PARTNER)
        if typ is not None:
            head["typ"] = typ
        return forge.jws(head, claims, self.keys.partner)

    def hs(self, name: str, alg: str = "HS256", key: bytes | None = None, **override: Any) -> str:
        claims = {
            "iss": ISSUER_HS,
            "sub": "dev-1",
            "aud": AUDIENCE_HS,
            "iat": self.now,
            "exp": self.now + 3600,
            "jti": name,
            **override,
        }
        secret = key if key is not None else self.keys.hs_secret.encode()
        return forge.jws({"alg": alg, "typ": "JWT"}, claims, secret)

    def missing(self) -> None:
        self.add("missing-token", "missing", "no Authorization header at all", "")

    def alg_none(self) -> None:
        spellings = {
            "none": "none",
            "None": "none-capitalised",
            "NONE": "none-upper",
            "nOnE": "none-mixed",
        }
        for spelling, slug in spellings.items():
            for signed in (False, True):
                name = f"alg-{slug}-{'signed' if signed else 'unsigned'}"
                token = self.token(name, "none", header=self.header(spelling))
                what = "an empty signature"
                if signed:
                    sig = forge.sign("RS256", self.keys.rsa, forge.signing_input(token))
                    token = forge.with_signature(token, sig)
                    what = "a valid RS256 signature by rsa-1"
                rule = "alg" if signed else "shape"
                self.add(name, rule, f"alg {spelling!r}, kid rsa-1, {what}", token)
        name = "alg-none-hs-issuer"
        claims = {"iss": ISSUER_HS, "aud": AUDIENCE_HS, "exp": self.now + 3600, "jti": name}
        token = forge.jws({"alg": "none"}, claims, self.keys.hs_secret.encode(), sign_alg="HS256")
        self.add(name, "alg", "alg none on the HS issuer, HMAC-signed with its secret", token, HS)
        name = "alg-empty-string"
        self.add(
            name,
            "alg",
            "alg is the empty string (a string, not in the list)",
            self.token(name, header=self.header(""), key=self.keys.rsa, alg="RS256"),
        )

    def hmac_confusion(self) -> None:
        k = self.keys
        forms: list[tuple[str, str, bytes, str | None]] = [
            (
                "rsa-spki-pem",
                "the RSA public key as SPKI PEM",
                forge.public_pem(k.rsa),
                forge.KID_RSA,
            ),
            (
                "rsa-pkcs1-pem",
                "the RSA public key as PKCS#1 PEM",
                forge.public_pem(k.rsa, "pkcs1"),
                forge.KID_RSA,
            ),
            ("rsa-der", "the RSA public key as DER", forge.public_pem(k.rsa, "der"), forge.KID_RSA),
            (
                "rsa-jwk",
                "the RSA public JWK as JSON",
                forge.dump(forge.public_jwk(k.rsa, forge.KID_RSA, use="sig")),
                forge.KID_RSA,
            ),
            ("jwks-doc", "the whole JWKS document", forge.dump(k.main_jwks()), forge.KID_RSA),
            ("ec-pem", "the EC public key as SPKI PEM", forge.public_pem(k.ec), forge.KID_EC),
            ("ec-der", "the EC public key as DER", forge.public_pem(k.ec, "der"), forge.KID_EC),
            (
                "ec-jwk",
                "the EC public JWK as JSON",
                forge.dump(forge.public_jwk(k.ec, forge.KID_EC, use="sig")),
                forge.KID_EC,
            ),
            (
                "ed-raw",
                "the raw Ed25519 public key",
                base64.urlsafe_b64decode(forge.public_jwk(k.ed)["x"] + "="),
                forge.KID_ED,
            ),
            (
                "rsa-pem-no-kid",
                "the RSA public key as SPKI PEM, no kid",
                forge.public_pem(k.rsa),
                None,
            ),
        ]
        for slug, what, secret, kid in forms:
            name = f"hs256-key-{slug}"
            self.add(
                name,
                "alg",
                f"HS256 keyed with {what}",
                self.token(name, "HS256", key=secret, kid=kid),
            )
        name = "hs512-key-rsa-spki-pem"
        self.add(
            name,
            "alg",
            "HS512 keyed with the RSA public key as PEM",
            self.token(name, "HS512", key=forge.public_pem(k.rsa), kid=forge.KID_RSA),
        )

    def alg_and_key_mixups(self) -> None:
        k = self.keys
        mixups = [
            ("rs256-header-ps256-signature", "RS256", "PS256"),
            ("ps256-header-rs256-signature", "PS256", "RS256"),
            ("rs512-header-rs256-signature", "RS512", "RS256"),
            ("rs256-header-rs384-signature", "RS256", "RS384"),
        ]
        for name, header_alg, sig_alg in mixups:
            token = self.token(name, header_alg)
            token = forge.with_signature(
                token, forge.sign(sig_alg, k.rsa, forge.signing_input(token))
            )
            self.add(name, "signature", f"{header_alg} in the header, {sig_alg} signature", token)
        name = "eddsa-header-es256-signature"
        token = self.token(name, "EdDSA")
        token = forge.with_signature(token, forge.sign("ES256", k.ec, forge.signing_input(token)))
        self.add(name, "signature", "EdDSA with kid ed-1 but an ES256 signature", token)

        fits = [
            ("es256-header-rsa-kid", "ES256", k.ec, forge.KID_RSA, "ES256 naming the RSA key"),
            ("rs256-header-ec-kid", "RS256", k.rsa, forge.KID_EC, "RS256 naming the EC key"),
            ("eddsa-header-ec-kid", "EdDSA", k.ed, forge.KID_EC, "EdDSA naming the EC key"),
            (
                "es256-header-p384-kid",
                "ES256",
                k.ec,
                forge.KID_EC384,
                "ES256 naming the P-384 key (crv differs)",
            ),
            (
                "ps256-with-rs256-pinned-key",
                "PS256",
                k.rsa_pinned,
                forge.KID_RSA_PINNED,
                "PS256 with the key whose JWK says alg RS256",
            ),
            (
                "rs384-with-rs256-pinned-key",
                "RS384",
                k.rsa_pinned,
                forge.KID_RSA_PINNED,
                "RS384 with the key whose JWK says alg RS256",
            ),
            (
                "rs256-with-enc-key",
                "RS256",
                k.rsa_enc,
                forge.KID_RSA_ENC,
                "RS256 with the use=enc key",
            ),
            (
                "ed25519-header-rsa-kid",
                "Ed25519",
                k.ed,
                forge.KID_RSA,
                "Ed25519 naming the RSA key",
            ),
        ]
        for name, alg, key, kid, what in fits:
            self.add(name, "key-fit", what, self.token(name, alg, key=key, kid=kid))

        for alg, key, kid in (
            ("ES384", k.ec384, forge.KID_EC384),
            ("PS512", k.rsa, forge.KID_RSA),
            ("PS384", k.rsa, forge.KID_RSA),
        ):
            name = f"alg-{alg.lower()}-not-allowed"
            self.add(
                name,
                "alg",
                f"{alg} is not in the main allow list",
                self.token(name, alg, key=key, kid=kid),
            )
        for spelling in ("rs256", "Rs256"):
            name = f"alg-{spelling.lower()}-case-{'lower' if spelling.islower() else 'mixed'}"
            self.add(
                name,
                "alg",
                f"alg {spelling!r}: names are case-sensitive",
                self.token(name, header=self.header(spelling), key=k.rsa, alg="RS256"),
            )
        name = "alg-rsa-oaep-jwe-alg"
        self.add(
            name,
            "alg",
            "a JWE key-management alg in a JWS",
            self.token(name, header=self.header("RSA-OAEP"), key=k.rsa, alg="RS256"),
        )
        # the HS issuer
        name = "hs-issuer-rs256"
        token = forge.jws(
            {"alg": "RS256", "kid": forge.KID_RSA},
            {"iss": ISSUER_HS, "aud": AUDIENCE_HS, "exp": self.now + 3600, "jti": name},
            k.rsa,
        )
        self.add(name, "alg", "RS256 on the HS-only issuer", token, HS)
        self.add(
            "hs-issuer-hs384",
            "alg",
            "HS384 on an issuer that allows HS256 only",
            self.hs("hs-issuer-hs384", "HS384"),
            HS,
        )

    def bad_signatures(self) -> None:
        k = self.keys
        n = forge.P256_ORDER.to_bytes(32, "big")
        zero = bytes(32)
        damage: list[tuple[str, Callable[[bytes, bytes], bytes], str]] = [
            (
                "es256-der-signature",
                lambda raw, data: forge.ecdsa_der(k.ec, data),
                "ASN.1 DER instead of raw r||s",
            ),
            ("es256-signature-63-bytes", lambda raw, data: raw[:63], "cut to 63 bytes"),
            (
                "es256-signature-65-bytes",
                lambda raw, data: b"\x00" + raw,
                "65 bytes (zero byte prepended)",
            ),
            ("es256-r-zero", lambda raw, data: zero + raw[32:], "with r = 0"),
            ("es256-s-zero", lambda raw, data: raw[:32] + zero, "with s = 0"),
            (
                "es256-r-s-zero",
                lambda raw, data: zero + zero,
                "r = s = 0 (CVE-2022-21449, 'psychic signatures')",
            ),
            ("es256-r-equals-n", lambda raw, data: n + raw[32:], "with r = n, the group order"),
            ("es256-s-equals-n", lambda raw, data: raw[:32] + n, "with s = n, the group order"),
            ("es256-all-ones", lambda raw, data: b"\xff" * 64, "r = s = 2**256 - 1 (above n)"),
        ]
        for name, spoil, what in damage:
            token = self.token(name, "ES256")
            raw = forge.b64u_decode(token.split(".")[2])
            sig = spoil(raw, forge.signing_input(token))
            self.add(name, "signature", f"ES256 signature {what}", forge.with_signature(token, sig))

        rs = self.token("rs256-signature-bit-flipped")
        sig = bytearray(forge.b64u_decode(rs.split(".")[2]))
        sig[-1] ^= 0x01
        self.add(
            "rs256-signature-bit-flipped",
            "signature",
            "last signature bit flipped",
            forge.with_signature(rs, bytes(sig)),
        )
        rs = self.token("rs256-signature-truncated")
        self.add(
            "rs256-signature-truncated",
            "signature",
            "255-byte RSA signature",
            forge.with_signature(rs, forge.b64u_decode(rs.split(".")[2])[:-1]),
        )
        rs = self.token("rs256-signature-empty")
        self.add(
            "rs256-signature-empty",
            "shape",
            "RS256 with an empty signature segment",
            forge.with_signature(rs, b""),
        )
        ed = self.token("eddsa-signature-63-bytes", "EdDSA")
        self.add(
            "eddsa-signature-63-bytes",
            "signature",
            "Ed25519 signature cut to 63 bytes",
            forge.with_signature(ed, forge.b64u_decode(ed.split(".")[2])[:63]),
        )

        name = "same-kid-other-key"
        self.add(
            name,
            "signature",
            "kid rsa-1 but signed by another RSA key",
            self.token(name, key=k.impostor, kid=forge.KID_RSA),
        )
        name = "tampered-payload"
        good = self.token(name)
        forged = forge.segment(self.claims(name, sub="admin", scope="profile orders/read"))
        head, _, sig_seg = good.split(".")
        self.add(
            name,
            "signature",
            "payload swapped after signing (sub, scope)",
            f"{head}.{forged}.{sig_seg}",
        )
        name = "tampered-header"
        good = self.token(name)
        _, body, sig_seg = good.split(".")
        self.add(
            name,
            "signature",
            "header gained typ after signing",
            f"{forge.segment(self.header(typ='JWT'))}.{body}.{sig_seg}",
        )
        name = "hs256-wrong-secret"
        self.add(
            name,
            "signature",
            "HS256 on the HS issuer with another secret",
            self.hs(name, key=b"x" * 32 + b"not-the-configured-secret"),
            HS,
        )

    def kids(self) -> None:
        odd = [
            ("kid-unknown", "rsa-2", "a kid the JWKS does not have"),
            ("kid-path-traversal", "../../../../etc/passwd", "path traversal"),
            ("kid-sql", "rsa-1' OR '1'='1", "SQL injection"),
            ("kid-nul", "rsa-1\x00", "rsa-1 followed by NUL"),
            ("kid-url", "https://attacker.invalid/key", "a URL"),
            ("kid-500-chars", "k" * 500, "500 characters"),
            ("kid-case", "RSA-1", "rsa-1 in another case"),
        ]
        for name, kid, what in odd:
            self.add(name, "kid", f"kid is {what}, signed by rsa-1", self.token(name, kid=kid))
        name = "no-kid-two-keys-fit"
        self.add(
            name,
            "kid",
            "RS256 without kid: rsa-1 and rsa-rs256 both fit",
            self.token(name, kid=None),
        )
        name = "no-kid-es256-signed-by-p384"
        self.add(
            name,
            "signature",
            "ES256 without kid: the one P-256 key is chosen and the P-384 signature fails",
            self.token(name, "ES256", key=self.keys.ec384, kid=None),
        )
        name = "kid-10k"
        self.add(
            name,
            "size",
            "kid of 10 KB: the token is over max_token_bytes",
            self.token(name, kid="k" * 10240),
        )
        for name, kid in (("kid-null", None), ("kid-number", 1), ("kid-list", [forge.KID_RSA])):
            head = {"alg": "RS256", "kid": kid}
            self.add(
                name, "types", f"kid is {forge.dump(kid).decode()}", self.token(name, header=head)
            )
        k = self.keys
        name = "partner-key-partner-kid-main-iss"
        self.add(
            name,
            "kid",
            "iss main, signed by the partner key under the partner kid",
            self.token(name, key=k.partner, kid=forge.KID_PARTNER),
        )
        name = "partner-key-main-kid-main-iss"
        self.add(
            name,
            "signature",
            "iss main, signed by the partner key under kid rsa-1",
            self.token(name, key=k.partner, kid=forge.KID_RSA),
        )

    def key_source_headers(self) -> None:
        k = self.keys
        attacker = self.attacker_url
        cert = base64.b64encode(forge.self_signed_cert_der(k.attacker)).decode()
        cases = [
            (
                "jku-attacker",
                {"jku": f"{attacker}/jwks.json"},
                k.attacker,
                forge.KID_ATTACKER,
                "jku to the attacker's JWKS, signed by the attacker's key",
            ),
            (
                "jku-own-jwks",
                {"jku": "https://issuer-a.jwtproxy.test/jwks.json"},
                k.rsa,
                forge.KID_RSA,
                "jku (even a harmless one) on a token signed by rsa-1",
            ),
            (
                "x5u-attacker",
                {"x5u": f"{attacker}/cert.pem"},
                k.attacker,
                forge.KID_ATTACKER,
                "x5u to the attacker's certificate, signed by the attacker's key",
            ),
            (
                "x5c-attacker",
                {"x5c": [cert]},
                k.attacker,
                forge.KID_ATTACKER,
                "x5c with the attacker's self-signed certificate, signed by the attacker's key",
            ),
            (
                "x5c-attacker-no-kid",
                {"x5c": [cert]},
                k.attacker,
                None,
                "x5c with the attacker's certificate and no kid",
            ),
            (
                "jwk-attacker",
                {"jwk": forge.public_jwk(k.attacker)},
                k.attacker,
                None,
                "embedded jwk of the attacker's key that signed it (CVE-2018-0114)",
            ),
            (
                "jwk-attacker-main-kid",
                {"jwk": forge.public_jwk(k.attacker, forge.KID_RSA)},
                k.attacker,
                forge.KID_RSA,
                "embedded attacker jwk claiming kid rsa-1",
            ),
            (
                "jwk-own-key",
                {"jwk": forge.public_jwk(k.rsa, forge.KID_RSA)},
                k.rsa,
                forge.KID_RSA,
                "embedded jwk of the real rsa-1, signed by rsa-1",
            ),
        ]
        for name, extra, key, kid, what in cases:
            head = self.header("RS256", kid, **extra)
            self.add(name, "header-forbidden", what, self.token(name, key=key, header=head))
        crit = [
            ("crit-unknown", {"crit": ["x-policy"], "x-policy": 1}, "crit names an extension"),
            ("crit-empty", {"crit": []}, "crit is an empty list"),
            ("crit-exp", {"crit": ["exp"]}, "crit names a registered claim"),
            ("crit-b64-false", {"crit": ["b64"], "b64": False}, "RFC 7797 b64 false with crit"),
            ("b64-false", {"b64": False}, "b64 false without crit"),
            ("b64-true", {"b64": True, "crit": ["b64"]}, "b64 true with crit"),
        ]
        for name, extra, what in crit:
            self.add(name, "header-forbidden", what, self.token(name, header=self.header(**extra)))

    def structure(self) -> None:
        good = self.token("structure")
        head, body, sig = good.split(".")
        jwe_head = forge.segment({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": forge.KID_RSA})
        r = forge.b64u(b"\x01" * 16)
        shapes = [
            ("one-segment", head, "one segment"),
            ("two-segments", f"{head}.{body}", "two segments"),
            ("four-segments", f"{head}.{body}.{sig}.{sig}", "four segments"),
            ("trailing-dot", f"{good}.", "a trailing dot"),
            ("leading-dot", f".{good}", "a leading dot"),
            ("empty-segments", "..", "three empty segments"),
            ("jwe-five-segments", f"{jwe_head}.{r}.{r}.{r}.{r}", "JWE compact (five segments)"),
            (
                "jwe-dir-empty-key",
                f"{forge.segment({'alg': 'dir', 'enc': 'A128GCM'})}..{r}.{r}.{r}",
                "JWE with alg dir and an empty key segment",
            ),
            ("padding-equals", f"{head}.{body}.{sig}==", "signature segment padded with =="),
            (
                "header-padded",
                f"{head}{'=' * (-len(head) % 4) or '=='}.{body}.{sig}",
                "header segment padded",
            ),
            ("plus-char", f"{head}.{body}.+{sig[1:]}", "a + in the signature"),
            ("slash-char", f"{head}.{body}./{sig[1:]}", "a / in the signature"),
            (
                "standard-base64",
                f"{head}.{body}.{base64.b64encode(forge.b64u_decode(sig)).decode()}",
                "signature in standard base64 with padding",
            ),
            ("space-inside", f"{head}.{body[:20]} {body[20:]}.{sig}", "a space inside the payload"),
            ("tab-inside", f"{head}.{body[:20]}\t{body[20:]}.{sig}", "a tab inside the payload"),
            ("percent-encoded-dot", f"{head}%2E{body}.{sig}", "a percent-encoded dot"),
            ("star-char", f"{head}.{body}.*{sig[1:]}", "a * in the signature"),
        ]
        for name, token, what in shapes:
            self.add(name, "shape", what, token)
        name = "nested-jwt"
        inner = self.token("nested-inner")
        self.add(
            name,
            "json",
            "cty JWT: the payload is a signed JWT, not a JSON object",
            self.token(name, header=self.header(cty="JWT"), payload=inner.encode()),
        )
        name = "over-max-token-bytes"
        self.add(
            name,
            "size",
            f"a valid token of {MAX_TOKEN_BYTES + 1} bytes",
            self.sized_token(name, MAX_TOKEN_BYTES + 1),
        )

    def json_cases(self) -> None:
        rk = forge.KID_RSA
        headers: list[tuple[str, bytes, str]] = [
            (
                "header-duplicate-kid",
                f'{{"alg":"RS256","kid":"{rk}","kid":"{rk}"}}'.encode(),
                "duplicate kid member (same value)",
            ),
            (
                "header-duplicate-alg-none-first",
                f'{{"alg":"none","kid":"{rk}","alg":"RS256"}}'.encode(),
                "alg none then RS256 (last-wins parsers see RS256)",
            ),
            (
                "header-duplicate-alg-rs-first",
                f'{{"alg":"RS256","kid":"{rk}","alg":"none"}}'.encode(),
                "alg RS256 then none (first-wins parsers see RS256)",
            ),
            ("header-array", b'["RS256"]', "header is a JSON array"),
            ("header-invalid-json", f'{{"alg":"RS256","kid":"{rk}"'.encode(), "header truncated"),
            ("header-not-json", b"\x89PNG\r\n\x1a\n", "header is binary"),
            (
                "header-non-utf8",
                f'{{"alg":"RS256","kid":"{rk}","x":"'.encode() + b'\xff"}',
                "invalid UTF-8 in the header",
            ),
            (
                "header-bom",
                b"\xef\xbb\xbf" + f'{{"alg":"RS256","kid":"{rk}"}}'.encode(),
                "UTF-8 BOM before the header",
            ),
            (
                "header-deep-nesting",
                f'{{"alg":"RS256","kid":"{rk}","x":'.encode() + _deep(1000) + b"}",
                "1000 nested arrays in the header",
            ),
            (
                "header-trailing-comma",
                f'{{"alg":"RS256","kid":"{rk}",}}'.encode(),
                "trailing comma in the header",
            ),
            (
                "header-single-quotes",
                f"{{'alg':'RS256','kid':'{rk}'}}".encode(),
                "single-quoted header",
            ),
            ("header-empty", b"", "empty header"),
        ]
        for name, head, what in headers:
            self.add(name, "json", what, self.token(name, header=forge.b64u(head)))
        payloads: list[tuple[str, bytes, str]] = [
            (
                "payload-duplicate-iss",
                b'{"iss":"https://evil.test",'
                + forge.dump(self.claims("payload-duplicate-iss"))[1:],
                "duplicate iss (evil first)",
            ),
            (
                "payload-duplicate-exp",
                forge.dump(self.claims("payload-duplicate-exp"))[:-1]
                + f',"exp":{self.now - 3600}}}'.encode(),
                "duplicate exp (expired last)",
            ),
            ("payload-array", b'[{"iss":"' + ISSUER_MAIN.encode() + b'"}]', "payload is an array"),
            ("payload-string", b'"hello"', "payload is a string"),
            ("payload-number", b"42", "payload is a number"),
            ("payload-null", b"null", "payload is null"),
            ("payload-true", b"true", "payload is true"),
            ("payload-empty", b"", "empty payload"),
            ("payload-whitespace", b"   ", "payload is whitespace"),
            (
                "payload-non-utf8",
                self.raw_payload("payload-non-utf8", sub=b'"\xff\xfe"'),
                "invalid UTF-8 in sub",
            ),
            (
                "payload-overlong-utf8",
                self.raw_payload("payload-overlong-utf8", sub=b'"\xc0\xaf"'),
                "overlong UTF-8 encoding of /",
            ),
            (
                "payload-bom",
                b"\xef\xbb\xbf" + forge.dump(self.claims("payload-bom")),
                "UTF-8 BOM before the payload",
            ),
            (
                "payload-deep-nesting",
                self.raw_payload("payload-deep-nesting", x=_deep(1000)),
                "a claim with 1000 nested arrays",
            ),
            (
                "payload-deep-objects",
                self.raw_payload("payload-deep-objects", x=b'{"a":' * 500 + b"1" + b"}" * 500),
                "a claim with 500 nested objects",
            ),
            (
                "payload-trailing-garbage",
                forge.dump(self.claims("payload-trailing-garbage")) + b"x",
                "data after the JSON object",
            ),
            (
                "payload-two-objects",
                forge.dump(self.claims("payload-two-objects")) + b"{}",
                "two JSON objects",
            ),
            (
                "payload-trailing-comma",
                forge.dump(self.claims("payload-trailing-comma"))[:-1] + b",}",
                "trailing comma",
            ),
            ("exp-nan", self.raw_payload("exp-nan", exp=b"NaN"), "exp NaN"),
            ("exp-infinity", self.raw_payload("exp-infinity", exp=b"Infinity"), "exp Infinity"),
            (
                "exp-minus-infinity",
                self.raw_payload("exp-minus-infinity", exp=b"-Infinity"),
                "exp -Infinity",
            ),
            ("nbf-nan", self.raw_payload("nbf-nan", nbf=b"NaN"), "nbf NaN"),
            (
                "exp-1e400",
                self.raw_payload("exp-1e400", exp=b"1e400"),
                "exp 1e400 (overflows to infinity)",
            ),
            (
                "exp-minus-1e400",
                self.raw_payload("exp-minus-1e400", exp=b"-1e400"),
                "exp -1e400 (overflows to -infinity)",
            ),
            ("iat-1e400", self.raw_payload("iat-1e400", iat=b"1e400"), "iat 1e400"),
        ]
        for name, payload, what in payloads:
            self.add(name, "json", what, self.token(name, payload=payload))

    def claim_types(self) -> None:
        bad: list[tuple[str, dict[str, Any], str]] = [
            ("exp-string", {"exp": str(self.now + 3600)}, "exp a numeric string"),
            ("exp-true", {"exp": True}, "exp true (a boolean is not a number)"),
            ("exp-false", {"exp": False}, "exp false"),
            ("exp-null", {"exp": None}, "exp null"),
            ("exp-list", {"exp": [self.now + 3600]}, "exp a list"),
            ("exp-object", {"exp": {"value": self.now + 3600}}, "exp an object"),
            ("nbf-string", {"nbf": str(self.now)}, "nbf a string"),
            ("nbf-true", {"nbf": True}, "nbf true"),
            ("nbf-null", {"nbf": None}, "nbf null"),
            ("iat-string", {"iat": "now"}, "iat a string"),
            ("iat-true", {"iat": True}, "iat true"),
            ("iat-null", {"iat": None}, "iat null"),
            ("iss-number", {"iss": 1}, "iss a number"),
            ("iss-list", {"iss": [ISSUER_MAIN]}, "iss a list holding the issuer"),
            ("iss-null", {"iss": None}, "iss null"),
            ("sub-number", {"sub": 12345}, "sub a number"),
            ("sub-null", {"sub": None}, "sub null"),
            ("sub-object", {"sub": {"id": 1}}, "sub an object"),
            ("aud-number", {"aud": 1}, "aud a number"),
            ("aud-object", {"aud": {"aud": AUDIENCE_MAIN}}, "aud an object"),
            ("aud-list-with-number", {"aud": [AUDIENCE_MAIN, 1]}, "aud a list with a number"),
            ("aud-list-with-null", {"aud": [AUDIENCE_MAIN, None]}, "aud a list with null"),
            ("aud-nested-list", {"aud": [[AUDIENCE_MAIN]]}, "aud a list of lists"),
            ("aud-null", {"aud": None}, "aud null"),
            ("aud-true", {"aud": True}, "aud true"),
            ("exp-1e30", {"exp": 10**30}, "exp 10**30 (finite, out of range)"),
            ("exp-minus-1e30", {"exp": -(10**30)}, "exp -10**30"),
            ("nbf-1e30", {"nbf": 10**30}, "nbf 10**30"),
            ("iat-1e30", {"iat": 10**30}, "iat 10**30"),
        ]
        for name, override, what in bad:
            self.add(name, "types", what, self.token(name, **override))
        for name, head, what in (
            ("alg-missing", {"kid": forge.KID_RSA}, "no alg in the header"),
            ("alg-number", {"alg": 256, "kid": forge.KID_RSA}, "alg a number"),
            ("alg-list", {"alg": ["RS256"], "kid": forge.KID_RSA}, "alg a list"),
            ("alg-null", {"alg": None, "kid": forge.KID_RSA}, "alg null"),
        ):
            self.add(
                name, "types", what, self.token(name, header=head, key=self.keys.rsa, alg="RS256")
            )
        name = "exp-missing"
        self.add(name, "required", "no exp claim", self.token(name, exp=_DROP))
        name = "iss-missing"
        self.add(name, "required", "no iss claim", self.token(name, iss=_DROP))

    def times(self) -> None:
        now, lw = self.now, LEEWAY
        cases = [
            ("expired", "expired", {"exp": now - 3600}, "exp an hour ago"),
            ("expired-beyond-leeway", "expired", {"exp": now - lw - 60}, "exp leeway + 60 s ago"),
            ("expired-float", "expired", {"exp": now - 3600.5}, "exp a float an hour ago"),
            ("expired-epoch-zero", "expired", {"exp": 0}, "exp 0"),
            ("expired-negative", "expired", {"exp": -1}, "exp -1"),
            ("nbf-future", "not-yet-valid", {"nbf": now + 3600}, "nbf in an hour"),
            (
                "nbf-future-beyond-leeway",
                "not-yet-valid",
                {"nbf": now + lw + 600},
                "nbf leeway + 600 s ahead",
            ),
            ("iat-future", "not-yet-valid", {"iat": now + 3600}, "iat an hour ahead"),
        ]
        for name, rule, override, what in cases:
            self.add(name, rule, what, self.token(name, **override))
        self.add(
            "hs256-expired",
            "expired",
            "HS256 token that expired an hour ago",
            self.hs("hs256-expired", exp=now - 3600),
            HS,
        )

    def issuers(self) -> None:
        cases = [
            ("iss-trailing-slash", {"iss": ISSUER_MAIN + "/"}, "iss with a trailing slash"),
            ("iss-upper-case", {"iss": ISSUER_MAIN.upper()}, "iss in upper case"),
            (
                "iss-host-upper-case",
                {"iss": "https://ISSUER-A.jwtproxy.test"},
                "iss with the host in upper case",
            ),
            (
                "iss-cyrillic-a",
                {"iss": ISSUER_MAIN.replace("issuer-a", "issuer-\u0430")},
                "iss with a Cyrillic a (U+0430) for the Latin a",
            ),
            ("iss-surrounding-space", {"iss": f" {ISSUER_MAIN} "}, "iss with spaces around"),
            ("iss-empty", {"iss": ""}, "iss empty"),
            ("iss-http-scheme", {"iss": ISSUER_MAIN.replace("https", "http")}, "iss over http"),
            (
                "iss-partner-main-key",
                {"iss": ISSUER_PARTNER},
                "iss partner on the main route, signed by rsa-1",
            ),
            ("iss-nul-suffix", {"iss": ISSUER_MAIN + "\x00"}, "iss followed by NUL"),
        ]
        for name, override, what in cases:
            self.add(name, "issuer", what, self.token(name, **override))
        self.add(
            "cross-issuer-partner-token-on-main",
            "issuer",
            "a valid partner token (iss, aud, key all partner's) replayed on the main route",
            self.partner("cross-issuer-partner-token-on-main"),
        )
        name = "cross-issuer-main-token-on-partner"
        self.add(
            name,
            "issuer",
            "a valid main token replayed on the partner route",
            self.token(name, header=self.header(typ="at+jwt")),
            PARTNER,
        )
        self.add(
            "cross-issuer-hs-token-on-main",
            "issuer",
            "a valid HS256 token of the HS issuer on the main route",
            self.hs("cross-issuer-hs-token-on-main"),
        )

    def audiences(self) -> None:
        cases = [
            ("aud-wrong", {"aud": "api://billing"}, "aud another audience"),
            (
                "aud-list-without",
                {"aud": ["api://billing", "api://users"]},
                "aud a list without the audience",
            ),
            ("aud-empty-list", {"aud": []}, "aud an empty list (a list of strings, none matching)"),
            ("aud-empty-string", {"aud": ""}, "aud the empty string"),
            (
                "aud-cyrillic-o",
                {"aud": AUDIENCE_MAIN.replace("orders", "\u043erders")},
                "aud with a Cyrillic o (U+043E) for the Latin o",
            ),
            ("aud-upper-case", {"aud": AUDIENCE_MAIN.upper()}, "aud in upper case"),
            ("aud-trailing-slash", {"aud": AUDIENCE_MAIN + "/"}, "aud with a trailing slash"),
            (
                "aud-partner-audience",
                {"aud": AUDIENCE_PARTNER},
                "aud the partner's audience, iss main, signed by rsa-1",
            ),
            ("aud-missing", {"aud": _DROP}, "no aud and no client_id"),
            (
                "aud-missing-client-id-wrong",
                {"aud": _DROP, "client_id": "other-client"},
                "no aud, client_id another client",
            ),
            (
                "aud-wrong-client-id-right",
                {"aud": "api://billing", "client_id": AUDIENCE_MAIN},
                "aud wrong: client_id is consulted only without aud",
            ),
        ]
        for name, override, what in cases:
            self.add(name, "audience", what, self.token(name, **override))
        self.add(
            "hs256-wrong-audience",
            "audience",
            "HS256 token for the main audience",
            self.hs("hs256-wrong-audience", aud=AUDIENCE_MAIN),
            HS,
        )

    def typs(self) -> None:
        for typ in (
            "dpop+jwt",
            "logout+jwt",
            "secevent+jwt",
            "JOSE",
            "id_token+jwt",
            "application/jwt+json",
        ):
            name = "typ-" + typ.lower().replace("+", "-").replace("/", "-").replace("_", "-")
            self.add(
                name,
                "typ",
                f"typ {typ}: not an access-token type",
                self.token(name, header=self.header(typ=typ)),
            )
        self.add(
            "partner-typ-jwt",
            "typ",
            "partner wants at+jwt, token says JWT",
            self.partner("partner-typ-jwt", typ="JWT"),
            PARTNER,
        )
        self.add(
            "partner-typ-missing",
            "typ",
            "partner wants at+jwt, token has no typ",
            self.partner("partner-typ-missing", typ=None),
            PARTNER,
        )

    def token_uses(self) -> None:
        for name, value, what in (
            ("token-use-id", "id", "an ID token (token_use id)"),
            ("token-use-missing", _DROP, "no token_use claim"),
            ("token-use-upper", "ACCESS", "token_use ACCESS (values are exact)"),
        ):
            self.add(
                name,
                "token-use",
                f"{what} where the issuer wants access",
                self.token(name, token_use=value),
            )

    def authorization(self) -> None:
        for name, rule, override, what in (
            ("scope-present", "valid", {"scope": f"profile {SCOPE}"}, "scope lists it"),
            ("scp-present", "valid", {"scp": ["profile", SCOPE]}, "scp array holds it"),
            ("scope-missing", "scope", {"scope": "profile"}, "scope lacks it"),
            ("scope-prefix-only", "scope", {"scope": f"{SCOPE}x orders"}, "only look-alikes"),
            ("scope-claim-absent", "scope", {"scope": _DROP}, "no scope claim"),
            ("scope-case", "scope", {"scope": SCOPE.upper()}, "it in upper case"),
        ):
            self.add(
                name,
                rule,
                f"route wants scope {SCOPE}: {what}",
                self.token(name, **override),
                SCOPED,
            )
        for name, rule, value, what in (
            ("groups-list-contains", "valid", ["users", GROUP], "a list containing it"),
            ("groups-string-equal", "valid", GROUP, "the string itself"),
            ("groups-other", "claim", ["users"], "a list without it"),
            ("groups-absent", "claim", _DROP, "absent"),
            ("groups-case", "claim", "Admin", "another case"),
            ("groups-superstring", "claim", "administrators", "a longer string"),
        ):
            self.add(
                name,
                rule,
                f"route wants {GROUP_CLAIM} to hold {GROUP}: {what}",
                self.token(name, **{GROUP_CLAIM: value}),
                GROUPS,
            )


def build_corpus(
    keys: forge.Keys, *, now: int | None = None, attacker_url: str = "https://attacker.invalid"
) -> list[Case]:
    """Every case, freshly signed. `attacker_url` is where jku/x5u cases point (the test
    serves a real attacker JWKS there and checks that the proxy never fetched it)."""
    builder = _Builder(keys, int(time.time()) if now is None else now, attacker_url)
    groups: list[Callable[[], None]] = [
        builder.positive,
        builder.missing,
        builder.alg_none,
        builder.hmac_confusion,
        builder.alg_and_key_mixups,
        builder.bad_signatures,
        builder.kids,
        builder.key_source_headers,
        builder.structure,
        builder.json_cases,
        builder.claim_types,
        builder.times,
        builder.issuers,
        builder.audiences,
        builder.typs,
        builder.token_uses,
        builder.authorization,
    ]
    for group in groups:
        group()
    return list(builder.cases.values())


def _summary(cases: list[Case], show_tokens: bool) -> str:
    lines = [f"{'case':44} {'route':8} {'status':6} {'reason':14} {'bytes':>6}  description"]
    for case in cases:
        desc = case.description.removesuffix(f" [{case.rule}: {RULES[case.rule].text}]")
        lines.append(
            f"{case.name:44} {case.route_name:8} {case.expected_status:<6} "
            f"{case.expected_reason:14} {len(case.token):>6}  {desc}"
        )
        if show_tokens:
            lines.append(f"    {case.token[:200]!r}")
    by_reason: dict[str, int] = {}
    for case in cases:
        by_reason[case.expected_reason] = by_reason.get(case.expected_reason, 0) + 1
    lines.append("")
    lines.append(
        f"{len(cases)} cases: " + ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items()))
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        from . import node_mint as node
    except ImportError:
        import node_mint as node  # type: ignore[no-redef]

    keys = forge.generate_keys()
    cases = build_corpus(keys)
    try:
        cases += node.node_cases(keys)
    except node.NodeUnavailable as exc:
        print(f"(node/jose cases skipped: {exc})", file=sys.stderr)
    print(_summary(cases, "--tokens" in argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
