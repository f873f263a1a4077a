"""Hand-made JOSE: run-time keys, their JWKs, and compact JWS built byte by byte.

No JWT library is used on purpose: the corpus needs tokens no library would produce
(duplicate JSON members, DER ECDSA signatures, `alg: none` with a signature, ...).
Keys are generated at run time and never written to disk by this module.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# kids published in the main issuer's JWKS
KID_RSA: Final = "rsa-1"  # RSA 2048, no `alg`: RS256/RS384/RS512/PS256
KID_RSA_PINNED: Final = "rsa-rs256"  # RSA 2048 whose JWK says alg RS256
KID_RSA_ENC: Final = "rsa-enc"  # RSA 2048 with use=enc: never verifies a signature
KID_EC: Final = "ec-p256"  # the only P-256 key
KID_EC384: Final = "ec-p384"  # P-384: fits no algorithm the main issuer allows
KID_ED: Final = "ed-1"  # the only Ed25519 key
# issuer B (partner)
KID_PARTNER: Final = "partner-rsa-1"
# never published anywhere the proxy trusts
KID_ATTACKER: Final = "attacker-1"

P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

_HASHES: Final = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_HMAC_HASHES: Final = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


def b64u(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def dump(value: Any) -> bytes:
    """Compact JSON as UTF-8 (non-ASCII kept as is, so lookalike letters stay real)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")


def sign(alg: str, key: PrivateKey | bytes, signing_input: bytes) -> bytes:
    """The JWS signature of `signing_input` under `alg` (RFC 7518 §3, RFC 8037)."""
    family, bits = alg[:2], alg[2:]
    if family == "HS":
        assert isinstance(key, bytes)
        return hmac.new(key, signing_input, _HMAC_HASHES[bits]).digest()
    if family in ("RS", "PS"):
        assert isinstance(key, rsa.RSAPrivateKey)
        digest = _HASHES[bits]()
        pad: padding.AsymmetricPadding = (
            padding.PKCS1v15()
            if family == "RS"
            else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        )
        return key.sign(signing_input, pad, digest)
    if family == "ES":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(_HASHES[bits]())))
        size = (key.curve.key_size + 7) // 8
        return _int_bytes(r, size) + _int_bytes(s, size)  # raw r||s (RFC 7518 §3.4)
    if alg in ("EdDSA", "Ed25519"):
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return key.sign(signing_input)
    raise ValueError(f"cannot sign {alg}")


def ecdsa_der(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    """An ES256 signature in ASN.1 DER, the form JOSE forbids (RFC 7518 §3.4)."""
    return key.sign(signing_input, ec.ECDSA(hashes.SHA256()))


def segment(part: dict[str, Any] | bytes | str) -> str:
    """A dict is JSON-encoded, bytes are base64url-encoded raw, a str is used verbatim."""
    if isinstance(part, str):
        return part
    return b64u(dump(part) if isinstance(part, dict) else part)


def jws(
    header: dict[str, Any] | bytes | str,
    payload: dict[str, Any] | bytes | str,
    key: PrivateKey | bytes | None = None,
    *,
    sign_alg: str | None = None,
    signature: bytes | None = None,
) -> str:
    """A compact JWS. Signs with `sign_alg` (default: the header's `alg`) unless
    `signature` is given; with neither a key nor a signature the signature is empty."""
    head, body = segment(header), segment(payload)
    signing_input = f"{head}.{body}".encode("ascii")
    if signature is None:
        if key is None:
            signature = b""
        else:
            alg = sign_alg or (header["alg"] if isinstance(header, dict) else None)
            if not isinstance(alg, str):
                raise ValueError("sign_alg is needed when the header is not a dict")
            signature = sign(alg, key, signing_input)
    return f"{head}.{body}.{b64u(signature)}"


def signing_input(token: str) -> bytes:
    head, body, _ = token.split(".")
    return f"{head}.{body}".encode("ascii")


def with_signature(token: str, signature: bytes) -> str:
    head, body, _ = token.split(".")
    return f"{head}.{body}.{b64u(signature)}"


# --------------------------------------------------------------------------- JWKs


def public_jwk(key: PrivateKey, kid: str | None = None, **extra: Any) -> dict[str, Any]:
    """The public JWK (RFC 7517/7518/8037) of a private key."""
    jwk: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": b64u(_int_bytes(numbers.n)), "e": b64u(_int_bytes(numbers.e))}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        point = key.public_key().public_numbers()
        size = (key.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[key.curve.name]
        jwk = {
            "kty": "EC",
            "crv": crv,
            "x": b64u(_int_bytes(point.x, size)),
            "y": b64u(_int_bytes(point.y, size)),
        }
    else:
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
    if kid is not None:
        jwk["kid"] = kid
    return {**jwk, **extra}


def private_jwk(key: PrivateKey) -> dict[str, Any]:
    """The private JWK of a key: handed to the node minter over stdin, never stored."""
    jwk = public_jwk(key)
    if isinstance(key, rsa.RSAPrivateKey):
        priv = key.private_numbers()
        for name, value in (
            ("d", priv.d),
            ("p", priv.p),
            ("q", priv.q),
            ("dp", priv.dmp1),
            ("dq", priv.dmq1),
            ("qi", priv.iqmp),
        ):
            jwk[name] = b64u(_int_bytes(value))
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        jwk["d"] = b64u(_int_bytes(key.private_numbers().private_value, size))
    else:
        jwk["d"] = b64u(
            key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )
    return jwk


def public_pem(key: PrivateKey, fmt: str = "spki") -> bytes:
    public = key.public_key()
    if fmt == "pkcs1":
        return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    encoding = serialization.Encoding.DER if fmt == "der" else serialization.Encoding.PEM
    return public.public_bytes(encoding, serialization.PublicFormat.SubjectPublicKeyInfo)


def self_signed_cert_der(key: rsa.RSAPrivateKey) -> bytes:
    """A self-signed certificate for the attacker's key (for an `x5c` header)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer-a.jwtproxy.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Keys:
    """Every key the corpus uses, generated fresh for each run."""

    rsa: rsa.RSAPrivateKey
    rsa_pinned: rsa.RSAPrivateKey
    rsa_enc: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    ec384: ec.EllipticCurvePrivateKey
    ed: ed25519.Ed25519PrivateKey
    partner: rsa.RSAPrivateKey
    impostor: rsa.RSAPrivateKey  # signs with kid rsa-1 but is not the published rsa-1
    attacker: rsa.RSAPrivateKey
    hs_secret: str  # the HS256 issuer's shared secret; its UTF-8 bytes are the HMAC key

    def main_jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                public_jwk(self.rsa, KID_RSA, use="sig"),
                public_jwk(self.rsa_pinned, KID_RSA_PINNED, use="sig", alg="RS256"),
                public_jwk(self.rsa_enc, KID_RSA_ENC, use="enc"),
                public_jwk(self.ec, KID_EC, use="sig"),
                public_jwk(self.ec384, KID_EC384, use="sig"),
                public_jwk(self.ed, KID_ED, use="sig"),
            ]
        }

    def partner_jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.partner, KID_PARTNER, use="sig", alg="RS256")]}

    def attacker_jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.attacker, KID_ATTACKER, use="sig", alg="RS256")]}


def generate_keys() -> Keys:
    def rsa_key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    return Keys(
        rsa=rsa_key(),
        rsa_pinned=rsa_key(),
        rsa_enc=rsa_key(),
        ec=ec.generate_private_key(ec.SECP256R1()),
        ec384=ec.generate_private_key(ec.SECP384R1()),
        ed=ed25519.Ed25519PrivateKey.generate(),
        partner=rsa_key(),
        impostor=rsa_key(),
        attacker=rsa_key(),
        hs_secret=secrets.token_urlsafe(32),
    )
