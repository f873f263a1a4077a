"""Where the bearer token is: configured sources in order, one place only."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, Protocol
from urllib.parse import unquote_plus

from .config import TokenSource
from .errors import InvalidRequest, Malformed

JWS_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
OWS: Final = " \t"  # RFC 9110 §5.6.3: what surrounds a field value
# `bearer` at the start or after a separator no base64/token68 credential contains
LOOSE_BEARER: Final = re.compile(r"(?:^|[\s,;])bearer", re.IGNORECASE)


class Headers(Protocol):
    def getall(self, key: str, default: list[str]) -> list[str]: ...


class TokenExtractor:
    def __init__(self, sources: Sequence[TokenSource], max_token_bytes: int) -> None:
        self.sources = tuple(sources)
        self.max_token_bytes = max_token_bytes
        # a header source already refuses a repeated header: check Authorization apart
        # only when it is not one of the sources
        self.check_authorization = not any(
            source.kind == "header" and source.name.lower() == "authorization"
            for source in self.sources)

    def extract(self, headers: Headers, query_string: str) -> str | None:
        """The token, or None if the request carries none.

        Raises `InvalidRequest` for ambiguous credentials (RFC 6750 §2: a client must not
        use more than one method) and `Malformed` for a token over the size limit.
        """
        found: str | None = None
        if self.check_authorization and len(headers.getall("Authorization", [])) > 1:
            raise InvalidRequest("more than one Authorization header")
        for source in self.sources:
            token = self._from_source(source, headers, query_string)
            if token is None:
                continue
            if found is not None:
                raise InvalidRequest("token presented in more than one place")
            found = token
        if found is not None and (
            len(found) > self.max_token_bytes  # cheap first: a str is never shorter in bytes
            or len(found.encode("utf-8", "surrogatepass")) > self.max_token_bytes
        ):
            raise Malformed(f"token larger than {self.max_token_bytes} bytes")
        return found

    def presented_as_dpop(self, headers: Headers) -> bool:
        """Whether the token came as `Authorization: DPoP` (call after `extract`)."""
        if self.check_authorization:
            return False  # Authorization is not a token source
        values = headers.getall("Authorization", [])
        return len(values) == 1 and values[0].strip(OWS)[:5].lower() == "dpop "

    def _from_source(self, source: TokenSource, headers: Headers, query: str) -> str | None:
        if source.kind == "header":
            values = headers.getall(source.name, [])
            if len(values) > 1:
                raise InvalidRequest(f"more than one {source.name} header")
            if not values:
                return None
            authorization = source.name.lower() == "authorization"
            return _bearer(values[0], bare_ok=not authorization, dpop_ok=authorization)
        if source.kind == "cookie":
            return _cookie(headers.getall("Cookie", []), source.name)
        if source.kind == "websocket_protocol":
            return _subprotocol(headers.getall("Sec-WebSocket-Protocol", []), source.name)
        if query:
            values = _query_values(query, source.name)
            if len(values) > 1:
                raise InvalidRequest(f"more than one {source.name} query parameter")
            return values[0] or None if values else None
        return None


def query_name(key: str) -> str:
    """A query parameter name as an upstream may read it: decoded (`access%5Ftoken` is
    `access_token`) and case-folded (ASP.NET reads names case-insensitively). Parameters
    are split on `;` as well as `&` (older Rack, CGI). `CredentialStrip` reads them so too."""
    return unquote_plus(key, errors="replace").lower()


def _query_values(query: str, name: str) -> list[str]:
    """The values of parameter `name`, read as `query_name` says, so that no copy an
    upstream would take escapes the one-place rule."""
    wanted = name.lower()
    if wanted not in query.lower() and "%" not in query:
        return []
    values: list[str] = []
    for part in query.replace(";", "&").split("&"):
        key, _, value = part.partition("=")
        if query_name(key) == wanted:
            values.append(unquote_plus(value, errors="replace"))
    return values


def _bearer(value: str, bare_ok: bool, dpop_ok: bool = False) -> str | None:
    r"""`Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1), or `DPoP <token>` in
    Authorization (RFC 9449 §7.1; the proof is checked by dpop.py). Another scheme means
    no bearer token; a bare value (custom headers) is taken as the token itself.

    A value a looser parser would still read as a bearer token (`Bearer\t<t>`,
    `Bearer,<t>`, `Basic x, Bearer <t>`, a bare JWS in Authorization) is malformed, never
    "no token": on an optional route it would reach the upstream unverified (RFC 6750
    §2.1 syntax)."""
    text = value.strip(OWS)  # not str.strip(): that drops \v, \f and \x1c-\x1f too
    scheme, _, rest = text.partition(" ")
    if scheme.lower() == "bearer" or (dpop_ok and scheme.lower() == "dpop"):
        token = rest.strip(OWS)
        if not token:
            raise Malformed("empty bearer token")
        # `<t> x`, `<t>\tx`, `<t>;bearer=<t>`: one value, no more (what a looser parser
        # splits on); a token68 is ASCII. Any other character a token cannot hold is the
        # JWS parser's to refuse. Substring tests: a regex over an 800-byte token cost ~5%
        # of a request, `isprintable()` ~4.5% (a Unicode table lookup per character).
        if (not token.isascii() or " " in token or "\t" in token or "," in token
                or ";" in token):
            raise Malformed("bearer token must be one token68 value")
        return token
    if LOOSE_BEARER.search(text):  # `Bearerx <t>`, `Bearer\t<t>`, `Basic x, Bearer <t>`
        raise Malformed("the bearer scheme must come first, then one space and the token")
    if rest:
        return None  # another scheme (Basic, DPoP, ...)
    if bare_ok:
        return scheme or None
    if JWS_SHAPE.fullmatch(scheme):
        raise Malformed("a token in Authorization needs the Bearer scheme")
    return None


def _subprotocol(values: list[str], name: str) -> str | None:
    """`Sec-WebSocket-Protocol: bearer.<token>, chat` (browsers cannot set Authorization
    on a WebSocket; RFC 6455 §11.3.4 allows several values, comma-separated)."""
    prefix = f"{name}."
    found = [item.strip()[len(prefix):] for value in values for item in value.split(",")
             if item.strip().startswith(prefix)]
    if len(found) > 1:
        raise InvalidRequest(f"more than one {name}. subprotocol")
    if found and not found[0]:
        raise Malformed(f"empty {name}. subprotocol")
    return found[0] if found else None


def token_protocol_prefixes(sources: Sequence[TokenSource]) -> tuple[str, ...]:
    """The subprotocol prefixes that carry a token: never forwarded or echoed."""
    return tuple(f"{s.name}." for s in sources if s.kind == "websocket_protocol")


def _cookie(cookie_headers: list[str], name: str) -> str | None:
    found: list[str] = []
    for header in cookie_headers:
        if name not in header:
            continue
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                found.append(value.strip().strip('"'))
    if len(found) > 1:
        raise InvalidRequest(f"more than one {name} cookie")
    return found[0] or None if found else None


