"""Keys generated per test session and a token minter that can also build bad tokens."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jwk


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")))


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        kty = {"RS": "RSA", "PS": "RSA", "ES": "EC"}.get(self.alg[:2], "OKP")
        data = dict(jwk.import_key(self.private.public_key(), kty).as_dict(private=False))
        data.update(kid=self.kid, use="sig", alg=self.alg)
        return data

    def sign(self, message: bytes, alg: str | None = None) -> bytes:
        alg = alg or self.alg
        if alg.startswith("RS"):
            return self.private.sign(message, padding.PKCS1v15(), _hash(alg))
        if alg.startswith("PS"):
            h = _hash(alg)
            return self.private.sign(message, padding.PSS(padding.MGF1(h), h.digest_size), h)
        if alg.startswith("ES"):
            size = {"ES256": 32, "ES384": 48, "ES512": 66}[alg]
            r, s = decode_dss_signature(self.private.sign(message, ec.ECDSA(_hash(alg))))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if alg in ("EdDSA", "Ed25519"):
            return bytes(self.private.sign(message))
        raise ValueError(alg)


def _hash(alg: str) -> hashes.HashAlgorithm:
    return {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[-3:]]


def hs_sign(secret: bytes, message: bytes, alg: str = "HS256") -> bytes:
    mac = hmac.HMAC(secret, _hash(alg))
    mac.update(message)
    return mac.finalize()


@dataclass
class KeyRing:
    rsa: SigningKey
    ec: SigningKey
    ed: SigningKey
    other_rsa: SigningKey  # same kid as `rsa`, different key: a forged signature
    extra: list[SigningKey] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in (self.rsa, self.ec, self.ed, *self.extra)]}


def make_keyring() -> KeyRing:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyRing(
        rsa=SigningKey("rsa-1", "RS256", rsa_key),
        ec=SigningKey("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1())),
        ed=SigningKey("ed-1", "EdDSA", ed25519.Ed25519PrivateKey.generate()),
        other_rsa=SigningKey("rsa-1", "RS256",
                             rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    )


def mint(
    key: SigningKey | None,
    claims: dict[str, Any] | None = None,
    *,
    alg: str | None = None,
    header: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    secret: bytes | None = None,
) -> str:
    """A signed compact JWS; `header` overrides/extends, `drop` removes claims."""
    now = int(time.time())
    body: dict[str, Any] = {"iat": now, "exp": now + 300, "sub": "user-1"}
    body.update(claims or {})
    for name in drop:
        body.pop(name, None)
    alg = alg or (key.alg if key else "HS256")
    head: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if key is not None:
        head["kid"] = key.kid
    head.update(header or {})
    head = {k: v for k, v in head.items() if v is not None}
    signing_input = f"{b64json(head)}.{b64json(body)}".encode()
    if secret is not None:
        signature = hs_sign(secret, signing_input, alg)
    else:
        assert key is not None
        signature = key.sign(signing_input, alg)
    return f"{signing_input.decode()}.{b64(signature)}"
