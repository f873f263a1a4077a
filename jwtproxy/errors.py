"""Every exception jwtproxy raises, each with a stable `reason` and its HTTP `status`.

`reason` is the `jwtproxy_auth_total` label and the source of `error_description`;
`error` is the RFC 6750 §3.1 error code put in `WWW-Authenticate`.
"""

from __future__ import annotations

from typing import ClassVar


class JwtProxyError(Exception):
    """Base of all errors that become an HTTP answer."""

    status: ClassVar[int] = 500
    reason: ClassVar[str] = "internal"
    error: ClassVar[str] = "server_error"

    def __init__(self, description: str = "") -> None:
        super().__init__(description or self.reason)
        self.description = description or self.reason.replace("_", " ")
        self.issuer: str | None = None  # the config issuer that was verifying, if known
        self.cache_hit: bool | None = None  # whether the verified-token cache answered


class NotFound(JwtProxyError):
    status, reason, error = 404, "not_found", "not_found"


class InvalidRequest(JwtProxyError):
    """Ambiguous credentials (RFC 6750 §2: a client MUST NOT use more than one method)."""

    status, reason, error = 400, "malformed", "invalid_request"


class HeaderSectionTooLarge(JwtProxyError):
    status, reason, error = 431, "header_section_too_large", "invalid_request"


class ClientBodyTimeout(JwtProxyError):
    """The client stopped sending its body (nginx's client_body_timeout answers 408)."""

    status, reason, error = 408, "client_body_timeout", "request_timeout"


class ClientGone(JwtProxyError):
    """The client closed the connection mid-request (nginx logs these as 499)."""

    status, reason, error = 499, "client_closed", "client_closed_request"


class MissingToken(JwtProxyError):
    """No token on a protected route (RFC 6750 §3.1: no error code in this case)."""

    status, reason, error = 401, "missing", ""


class InvalidToken(JwtProxyError):
    status, reason, error = 401, "malformed", "invalid_token"


class Malformed(InvalidToken):
    reason = "malformed"


class BadSignature(InvalidToken):
    reason = "bad_signature"


class Expired(InvalidToken):
    reason = "expired"


class NotYetValid(InvalidToken):
    reason = "not_yet_valid"


class WrongIssuer(InvalidToken):
    reason = "issuer"


class WrongAudience(InvalidToken):
    reason = "audience"


class AlgNotAllowed(InvalidToken):
    reason = "alg"


class UnknownKid(InvalidToken):
    reason = "unknown_kid"


class WrongTokenUse(InvalidToken):
    reason = "token_use"


class WrongTyp(InvalidToken):
    reason = "typ"


class DpopError(InvalidToken):
    """A DPoP proof (RFC 9449 §4.3) that does not hold; `check` names which check failed
    (htm, htu, ath, jkt, iat, replay, proof) for the log."""

    reason, error = "dpop", "invalid_dpop_proof"

    def __init__(self, check: str, description: str = "") -> None:
        super().__init__(description)
        self.check = check


class DpopBindingError(DpopError):
    """The token's scheme does not fit its binding (RFC 9449 §7.2: a DPoP-bound token sent
    as Bearer; a bearer token where the issuer requires DPoP): an invalid token."""

    error = "invalid_token"


class Revoked(InvalidToken):
    """The token matches an entry of the revocation list (jti, sub, origin_jti, client_id)."""

    reason = "revoked"


class Forbidden(JwtProxyError):
    """Valid token, but the route wants more (RFC 6750 §3.1 insufficient_scope)."""

    status, reason, error = 403, "scope", "insufficient_scope"

    def __init__(self, description: str = "", scope: str = "") -> None:
        super().__init__(description)
        self.scope = scope


class MissingScope(Forbidden):
    reason = "scope"


class MissingClaim(Forbidden):
    reason = "claim"


class KeysUnavailable(JwtProxyError):
    status, reason, error = 503, "keys_unavailable", "temporarily_unavailable"


class UpstreamUnavailable(JwtProxyError):
    status, reason, error = 502, "upstream_unavailable", "bad_gateway"


class UpstreamTimeout(JwtProxyError):
    status, reason, error = 504, "upstream_timeout", "gateway_timeout"


class KeySourceError(Exception):
    """A JWKS or discovery fetch failed; carries a short description for logs."""


class ConfigError(Exception):
    """The config is invalid; `problems` holds every message, each prefixed with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class MintError(Exception):
    """`jwtproxy token` cannot mint a token for that issuer with that key."""
