"""`jwtproxy token`: mint a test token for an issuer whose signing key you hold — a
`secret` issuer (its own secret) or a `jwks_file` issuer (a private JWK or PEM whose
public half is in that file). Remote issuers sign their own tokens."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from joserfc import jwk, jwt
from joserfc.errors import JoseError

from .algorithms import ALGORITHMS
from .config import Issuer
from .errors import MintError

DEFAULT_TTL: Final = 3600
DEFAULT_SUBJECT: Final = "test-user"
SigningKey = jwk.OctKey | jwk.RSAKey | jwk.ECKey | jwk.OKPKey
_PEM_KEY_TYPES: Final[tuple[tuple[type, type[jwk.RSAKey | jwk.ECKey | jwk.OKPKey]], ...]] = (
    (rsa.RSAPrivateKey, jwk.RSAKey), (ec.EllipticCurvePrivateKey, jwk.ECKey),
    (ed25519.Ed25519PrivateKey, jwk.OKPKey), (ed448.Ed448PrivateKey, jwk.OKPKey))


def mint_token(
    issuer: Issuer,
    key_file: str | None = None,
    *,
    subject: str = DEFAULT_SUBJECT,
    scopes: tuple[str, ...] = (),
    claims: Mapping[str, Any] | None = None,
    ttl: int = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    """A token that `issuer` accepts: its iss, its first audience, its token_use and typ,
    signed with the first of its algorithms that fits the key."""
    key, kid, alg = _signing_key(issuer, key_file)
    issued = int(time.time() if now is None else now)
    body: dict[str, Any] = {"iss": issuer.issuer, "sub": subject, "iat": issued,
                            "exp": issued + ttl}
    if issuer.audiences:
        body["aud"] = issuer.audiences[0]
    if issuer.token_use is not None:
        body["token_use"] = issuer.token_use
    if scopes:
        body["scope"] = " ".join(scopes)
    body.update(claims or {})
    header: dict[str, Any] = {"alg": alg, "typ": issuer.typ or "JWT"}
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(header, body, key, algorithms=[alg])


def _signing_key(issuer: Issuer, key_file: str | None) -> tuple[SigningKey, str | None, str]:
    if issuer.secret is not None:
        if key_file is not None:
            raise MintError(f"issuer {issuer.name} signs with its secret: drop --key")
        return jwk.OctKey.import_key(issuer.secret), None, _alg_for(issuer, "oct", None)
    if issuer.jwks_file is None:
        raise MintError(f"issuer {issuer.name} fetches its keys: only a jwks_file or secret "
                        "issuer can have a token minted here (ask the issuer for one)")
    if key_file is None:
        raise MintError(f"issuer {issuer.name} uses jwks_file: give --key, the private JWK "
                        "or PEM of one of its keys")
    private = _read_private_key(key_file)
    public = _public_entry(issuer.jwks_file, private)
    if public is None:
        raise MintError(f"{key_file}: its public key is not in {issuer.jwks_file}, so the "
                        "proxy would refuse the token")
    kty = str(private.as_dict()["kty"])
    kid = public.get("kid")
    crv = public.get("crv")
    return private, kid if isinstance(kid, str) else None, _alg_for(
        issuer, kty, crv if isinstance(crv, str) else None, public.get("alg"))


def _read_private_key(path: str) -> SigningKey:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise MintError(f"cannot read {path}: {err.strerror}") from None
    try:
        if data.lstrip().startswith(b"{"):
            key = jwk.import_key(json.loads(data))
        else:
            loaded = serialization.load_pem_private_key(data, password=None)
            key_cls = next((joserfc_cls for cls, joserfc_cls in _PEM_KEY_TYPES
                            if isinstance(loaded, cls)), None)
            if key_cls is None:
                raise ValueError(f"unsupported key type {type(loaded).__name__}")
            key = key_cls.import_key(data)
    except (ValueError, TypeError, JoseError) as err:
        raise MintError(f"{path}: not a private JWK or PEM key ({err})") from None
    if key.key_type == "oct" or not key.is_private:
        raise MintError(f"{path}: not a private key (a public key cannot sign)")
    return key


def _public_entry(jwks_file: str, private: SigningKey) -> dict[str, Any] | None:
    """The jwks_file entry holding `private`'s public half (by RFC 7638 thumbprint)."""
    try:
        document = json.loads(Path(jwks_file).read_bytes())
    except (OSError, ValueError) as err:
        raise MintError(f"cannot read {jwks_file}: {err}") from None
    wanted = private.thumbprint()
    for entry in document.get("keys", []) if isinstance(document, dict) else []:
        try:
            if isinstance(entry, dict) and jwk.import_key(entry).thumbprint() == wanted:
                return entry
        except (ValueError, TypeError, JoseError):
            continue
    return None


def _alg_for(issuer: Issuer, kty: str, crv: str | None, key_alg: Any = None) -> str:
    for alg in issuer.algorithms:
        spec = ALGORITHMS.get(alg)
        if spec is None or spec.kty != kty or (spec.curves is not None and crv not in
                                               spec.curves):
            continue
        if key_alg is None or key_alg == alg or {key_alg, alg} <= {"EdDSA", "Ed25519"}:
            return alg
    raise MintError(f"issuer {issuer.name} allows none of its algorithms "
                    f"({', '.join(issuer.algorithms)}) for a {kty} key")
