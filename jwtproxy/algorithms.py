"""The signature-algorithm table: each JWS `alg` we verify, the key it needs, its verifier."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .jwks import VerifyKey


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

