"""The structural checks before any crypto (`token.parse`) and `algorithms.key_fits`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jwtproxy.algorithms import ALGORITHMS, key_fits
from jwtproxy.errors import AlgNotAllowed, JwtProxyError, Malformed
from jwtproxy.jwks import VerifyKey
from jwtproxy.jws import _KNOWN_HEADERS, KNOWN_HEADERS_MAX, MAX_JSON_DEPTH, parse, parse_compact
from tests.tokens import b64, b64json

HEADER: dict[str, Any] = {"alg": "RS256", "typ": "JWT", "kid": "k1"}
CLAIMS: dict[str, Any] = {"iss": "https://issuer.test/", "sub": "u1", "exp": 2_000_000_000,
                          "iat": 1_700_000_000, "aud": "api"}
SIG = b64(b"\x01" * 32)


def token(header: dict[str, Any] | str | None = None, claims: dict[str, Any] | str | None = None,
          signature: str = SIG) -> str:
    head = header if header is not None else HEADER
    body = claims if claims is not None else CLAIMS
    h = b64(head) if isinstance(head, str) else b64json(head)
    p = b64(body) if isinstance(body, str) else b64json(body)
    return f"{h}.{p}.{signature}"


def raw_payload(text: str) -> str:
    return token(claims=text)


def test_valid_token_parses() -> None:
    parsed = parse(token())
    assert parsed.header == HEADER
    assert parsed.claims == CLAIMS
    assert parsed.signature == b"\x01" * 32
    h, p, _ = token().split(".")
    assert parsed.signing_input == f"{h}.{p}".encode()


# -- (case id, token, error class, description fragment) ----------------------------------

GOOD_H = b64json(HEADER)
GOOD_P = b64json(CLAIMS)

MALFORMED: list[tuple[str, str, type[JwtProxyError], str]] = [
    # segments
    ("empty", "", Malformed, "three segments"),
    ("one segment", GOOD_H, Malformed, "three segments"),
    ("two segments", f"{GOOD_H}.{GOOD_P}", Malformed, "three segments"),
    ("four segments", f"{GOOD_H}.{GOOD_P}.{SIG}.x", Malformed, "three segments"),
    ("six segments", "a.b.c.d.e.f", Malformed, "three segments"),
    ("JWE five segments", "a.b.c.d.e", Malformed, "JWE"),
    ("empty signature", f"{GOOD_H}.{GOOD_P}.", Malformed, "not base64url"),
    ("empty header", f".{GOOD_P}.{SIG}", Malformed, "not base64url"),
    # base64url alphabet
    ("padding", f"{GOOD_H}.{GOOD_P}.{SIG}=", Malformed, "not base64url"),
    ("plus", f"{GOOD_H}.{GOOD_P}.ab+c", Malformed, "not base64url"),
    ("slash", f"{GOOD_H}.{GOOD_P}.ab/c", Malformed, "not base64url"),
    ("space", f"{GOOD_H}.{GOOD_P}.ab c", Malformed, "not base64url"),
    ("newline", f"{GOOD_H}.{GOOD_P}.{SIG}\n", Malformed, "not base64url"),
    ("non-ascii digit", f"{GOOD_H}.{GOOD_P}.abc\u0663", Malformed, "not base64url"),
    ("impossible length", f"{GOOD_H}.{GOOD_P}.abcde", Malformed, "not base64url"),
    # strict JSON
    ("header not JSON", token(header="{alg: RS256}"), Malformed, "header is not JSON"),
    ("payload not JSON", raw_payload("not json"), Malformed, "payload is not JSON"),
    ("not UTF-8", b64(b"\xff\xfe") + f".{GOOD_P}.{SIG}", Malformed, "header is not UTF-8"),
    ("duplicate header member",
     token(header='{"alg":"RS256","alg":"none"}'), Malformed, "duplicate JSON member 'alg'"),
    ("duplicate claim",
     raw_payload('{"iss":"a","exp":1,"sub":"a","sub":"b"}'), Malformed,
     "duplicate JSON member 'sub'"),
    ("duplicate nested member",
     raw_payload('{"iss":"a","exp":1,"x":{"k":1,"k":2}}'), Malformed, "duplicate JSON member"),
    ("NaN", raw_payload('{"iss":"a","exp":NaN}'), Malformed, "NaN is not a JSON number"),
    ("Infinity", raw_payload('{"iss":"a","exp":1,"x":Infinity}'), Malformed,
     "Infinity is not a JSON number"),
    ("-Infinity", raw_payload('{"iss":"a","exp":1,"x":-Infinity}'), Malformed,
     "-Infinity is not a JSON number"),
    ("too deep", raw_payload('{"iss":"a","exp":1,"x":' + "[" * 20 + "]" * 20 + "}"),
     Malformed, "payload JSON nested too deeply"),
    ("very deep", raw_payload('{"x":' + "[" * 100_000 + "]" * 100_000 + "}"), Malformed,
     "nested too deeply"),
    ("header array", token(header="[]"), Malformed, "header is not a JSON object"),
    ("payload string", raw_payload('"claims"'), Malformed, "payload is not a JSON object"),
    ("payload number", raw_payload("1"), Malformed, "payload is not a JSON object"),
    ("payload null", raw_payload("null"), Malformed, "payload is not a JSON object"),
    ("huge integer", raw_payload('{"iss":"a","exp":1' + "0" * 5000 + "}"), Malformed,
     "payload is not JSON"),
    # alg
    ("no alg", token(header={"typ": "JWT"}), Malformed, "alg is missing"),
    ("alg number", token(header={"alg": 256}), Malformed, "alg is missing or not a string"),
    ("alg none", token(header={"alg": "none"}), AlgNotAllowed, "alg none"),
    ("alg None", token(header={"alg": "None"}), AlgNotAllowed, "alg none"),
    ("alg NONE", token(header={"alg": "NONE"}), AlgNotAllowed, "alg none"),
    ("alg nOnE", token(header={"alg": "nOnE"}), AlgNotAllowed, "alg none"),
    # key sources in the token (RFC 8725 §3.10)
    ("jku", token(header={**HEADER, "jku": "https://evil.test/jwks"}), Malformed,
     "header jku is not accepted"),
    ("x5u", token(header={**HEADER, "x5u": "https://evil.test/cert"}), Malformed,
     "header x5u is not accepted"),
    ("jwk", token(header={**HEADER, "jwk": {"kty": "oct", "k": "AA"}}), Malformed,
     "header jwk is not accepted"),
    ("x5c", token(header={**HEADER, "x5c": ["MIIB"]}), Malformed,
     "header x5c is not accepted"),
    # crit, b64, JWE, cty
    ("crit", token(header={**HEADER, "crit": ["exp"], "exp": 1}), Malformed,
     "header crit is not supported"),
    ("crit empty", token(header={**HEADER, "crit": []}), Malformed,
     "header crit is not supported"),
    ("b64 false", token(header={**HEADER, "b64": False, "crit": ["b64"]}), Malformed,
     "not supported"),
    ("b64 false alone", token(header={**HEADER, "b64": False}), Malformed,
     "header b64 is not supported"),
    ("enc", token(header={**HEADER, "enc": "A256GCM"}), Malformed, "JWE"),
    ("zip", token(header={**HEADER, "zip": "DEF"}), Malformed, "JWE"),
    ("cty JWT", token(header={**HEADER, "cty": "JWT"}), Malformed, "nested tokens (cty)"),
    ("cty other", token(header={**HEADER, "cty": "text/plain"}), Malformed, "cty"),
    # header member types
    ("kid number", token(header={**HEADER, "kid": 1}), Malformed, "kid is not a short string"),
    ("kid huge", token(header={**HEADER, "kid": "k" * 1025}), Malformed,
     "kid is not a short string"),
    ("typ number", token(header={**HEADER, "typ": 1}), Malformed, "typ is not a string"),
    # claim types
    ("no exp", token(claims={k: v for k, v in CLAIMS.items() if k != "exp"}), Malformed,
     "exp claim is required"),
    ("exp string", token(claims={**CLAIMS, "exp": "2000000000"}), Malformed,
     "exp must be a finite number"),
    ("exp bool", token(claims={**CLAIMS, "exp": True}), Malformed, "exp must be a finite"),
    ("exp null", token(claims={**CLAIMS, "exp": None}), Malformed, "exp must be a finite"),
    ("exp 1e400", raw_payload('{"iss":"a","exp":1e400}'), Malformed,
     "exp must be a finite number"),
    ("exp out of range", token(claims={**CLAIMS, "exp": 1e14}), Malformed, "out of range"),
    ("nbf string", token(claims={**CLAIMS, "nbf": "now"}), Malformed,
     "nbf must be a finite number"),
    ("nbf list", token(claims={**CLAIMS, "nbf": [1]}), Malformed, "nbf must be a finite"),
    ("iat string", token(claims={**CLAIMS, "iat": "1"}), Malformed,
     "iat must be a finite number"),
    ("iat -1e400", raw_payload('{"iss":"a","exp":1,"iat":-1e400}'), Malformed,
     "iat must be a finite number"),
    ("no iss", token(claims={k: v for k, v in CLAIMS.items() if k != "iss"}), Malformed,
     "iss claim must be a string"),
    ("iss number", token(claims={**CLAIMS, "iss": 1}), Malformed, "iss claim must be a string"),
    ("iss list", token(claims={**CLAIMS, "iss": ["a"]}), Malformed, "iss claim must be a"),
    ("sub number", token(claims={**CLAIMS, "sub": 1}), Malformed, "sub claim must be a string"),
    ("sub null", token(claims={**CLAIMS, "sub": None}), Malformed, "sub claim must be a"),
    ("aud null", token(claims={**CLAIMS, "aud": None}), Malformed, "aud must be a"),
    ("aud number", token(claims={**CLAIMS, "aud": 1}), Malformed,
     "aud must be a string or a list of strings"),
    ("aud object", token(claims={**CLAIMS, "aud": {"a": 1}}), Malformed, "aud must be a"),
    ("aud mixed list", token(claims={**CLAIMS, "aud": ["a", 1]}), Malformed, "aud must be a"),
    ("aud nested list", token(claims={**CLAIMS, "aud": [["a"]]}), Malformed, "aud must be a"),
]


@pytest.mark.parametrize(("raw", "error", "fragment"), [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
def test_rejected_before_crypto(raw: str, error: type[JwtProxyError], fragment: str) -> None:
    with pytest.raises(JwtProxyError) as caught:
        parse(raw)
    assert type(caught.value) is error
    assert caught.value.status == 401
    assert caught.value.reason == ("alg" if error is AlgNotAllowed else "malformed")
    assert fragment in caught.value.description


@pytest.mark.parametrize(("claims", "ok"), [
    ({**CLAIMS, "aud": ["a", "b"]}, True),
    ({**CLAIMS, "aud": []}, True),
    ({k: v for k, v in CLAIMS.items() if k != "aud"}, True),
    ({k: v for k, v in CLAIMS.items() if k not in ("sub", "iat")}, True),
    ({**CLAIMS, "exp": 2_000_000_000.5, "nbf": 0, "iat": -5}, True),
    ({**CLAIMS, "exp": 10**13}, True),
    ({**CLAIMS, "exp": 10**13 + 1}, False),
    ({**CLAIMS, "custom": {"deep": [1, 2, {"x": None}]}, "n": 1e300}, True),
])
def test_claim_shapes(claims: dict[str, Any], ok: bool) -> None:
    if ok:
        assert parse(token(claims=claims)).claims == claims
    else:
        with pytest.raises(Malformed):
            parse(token(claims=claims))


def test_depth_limit_is_exact() -> None:
    inner = MAX_JSON_DEPTH - 1  # the payload object itself is one level
    ok = raw_payload('{"iss":"a","exp":1,"x":' + "[" * inner + "]" * inner + "}")
    assert parse(ok).claims["x"] is not None
    deep = raw_payload('{"iss":"a","exp":1,"x":' + "[" * (inner + 1) + "]" * (inner + 1) + "}")
    with pytest.raises(Malformed, match="nested too deeply"):
        parse(deep)


@pytest.mark.parametrize("header", [
    {"alg": "ES256"}, {"alg": "HS256", "typ": "at+jwt"}, {"alg": "RS256", "kid": ""},
    {"alg": "RS256", "x5t": "abc", "x5t#S256": "def"},  # thumbprints select, never supply
    {"alg": "EdDSA", "kid": "k" * 1024},
])
def test_accepted_headers(header: dict[str, Any]) -> None:
    assert parse(token(header=header)).header == header


def test_whitespace_and_key_order_in_json_are_fine() -> None:
    parsed = parse(token(header=' { "typ" : "JWT" , "alg" : "RS256" } '))
    assert parsed.header == {"typ": "JWT", "alg": "RS256"}


def test_signature_decoded_without_padding() -> None:
    for size in (1, 2, 3, 64, 65, 66, 256):
        assert parse(token(signature=b64(b"\xfb" * size))).signature == b"\xfb" * size


def test_alg_case_other_than_none_is_left_to_the_allow_list() -> None:
    assert parse(token(header={"alg": "rs256"})).header["alg"] == "rs256"
    assert parse(token(header={"alg": "none "})).header["alg"] == "none "


def test_error_descriptions_do_not_echo_the_token() -> None:
    secret_looking = "A" * 200
    raw = token(claims={**CLAIMS, "aud": 1, "secret": secret_looking})
    with pytest.raises(Malformed) as caught:
        parse(raw)
    assert secret_looking not in caught.value.description
    assert raw not in str(caught.value)


def test_json_depth_with_brackets_inside_strings_is_an_overestimate() -> None:
    """Counting brackets inside strings errs on the safe side: refused, never a crash."""
    claims = {**CLAIMS, "note": "[" * 40}
    with pytest.raises(Malformed, match="nested too deeply"):
        parse(token(claims=claims))
    assert json.dumps(claims)  # the claims themselves are fine JSON


# -- key_fits ------------------------------------------------------------------------------

def key(kty: str, crv: str | None = None, alg: str | None = None, use: str | None = None,
        key_ops: tuple[str, ...] | None = None) -> VerifyKey:
    return VerifyKey("k1", kty, crv, alg, use, key_ops, material=None)


@pytest.mark.parametrize(("k", "alg", "fits"), [
    (key("RSA"), "RS256", True),
    (key("RSA"), "PS512", True),
    (key("RSA"), "ES256", False),
    (key("RSA"), "HS256", False),  # HS* with an asymmetric key: never
    (key("EC", "P-256"), "ES256", True),
    (key("EC", "P-256"), "ES384", False),
    (key("EC", "P-384"), "ES384", True),
    (key("EC", "P-521"), "ES512", True),
    (key("EC", "secp256k1"), "ES256", False),
    (key("EC"), "ES256", False),
    (key("EC", "P-256"), "RS256", False),
    (key("OKP", "Ed25519"), "EdDSA", True),
    (key("OKP", "Ed448"), "EdDSA", True),
    (key("OKP", "Ed25519"), "Ed25519", True),
    (key("OKP", "Ed448"), "Ed25519", False),
    (key("OKP", "X25519"), "EdDSA", False),
    (key("oct"), "HS256", True),
    (key("oct"), "RS256", False),
    (key("RSA", alg="RS256"), "RS256", True),
    (key("RSA", alg="RS256"), "RS384", False),
    (key("RSA", alg="RS256"), "PS256", False),
    (key("OKP", "Ed25519", alg="EdDSA"), "Ed25519", True),
    (key("OKP", "Ed25519", alg="Ed25519"), "EdDSA", True),
    (key("RSA", use="sig"), "RS256", True),
    (key("RSA", use="enc"), "RS256", False),
    (key("RSA", key_ops=("verify",)), "RS256", True),
    (key("RSA", key_ops=("verify", "sign")), "RS256", True),
    (key("RSA", key_ops=("encrypt",)), "RS256", False),
    (key("RSA", key_ops=()), "RS256", False),
])
def test_key_fits(k: VerifyKey, alg: str, fits: bool) -> None:
    assert key_fits(k, alg) is fits


def test_every_algorithm_has_a_fitting_key_type() -> None:
    kty = {"RS": "RSA", "PS": "RSA", "ES": "EC", "HS": "oct", "Ed": "OKP"}
    crv = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "EdDSA": "Ed25519",
           "Ed25519": "Ed25519"}
    for alg in ALGORITHMS:
        assert key_fits(key(kty[alg[:2]], crv.get(alg), alg=alg, use="sig"), alg), alg


# JSON null is not a string: a null kid or typ is malformed, not absent.
@pytest.mark.parametrize("raw", [
    token(header={**HEADER, "kid": None}),
    token(header={**HEADER, "typ": None}),
])
def test_null_members_are_malformed(raw: str) -> None:
    with pytest.raises(Malformed):
        parse(raw)


def test_a_header_seen_before_still_lets_nothing_else_through() -> None:
    """parse_compact remembers headers that passed; the rest of each token is checked anew,
    and a header allowed one `key_header` (a DPoP proof's jwk) is not allowed without it."""
    parse(token())  # the header is now a known one
    with pytest.raises(Malformed, match="duplicate JSON member"):
        parse(raw_payload('{"iss": "a", "exp": 1, "exp": 2}'))
    with pytest.raises(Malformed, match="not JSON"):
        parse(raw_payload("{nope"))
    with_jwk = {**HEADER, "jwk": {"kty": "EC"}}
    assert parse_compact(token(with_jwk), key_header="jwk").header == with_jwk
    with pytest.raises(Malformed, match="jwk is not accepted"):
        parse(token(with_jwk))


def test_known_headers_stay_bounded() -> None:
    for i in range(KNOWN_HEADERS_MAX * 3):
        parse(token({**HEADER, "kid": f"k{i}"}))
    assert 0 < len(_KNOWN_HEADERS) <= KNOWN_HEADERS_MAX
