"""The one place an error becomes an HTTP answer: the JSON body and the challenges
(RFC 6750 §3, RFC 9449 §7.1, RFC 9728 §5.1), as an aiohttp Response (forward-auth, explain,
aiohttp's own loop) or as one HTTP/1.1 message in bytes (the proxy door's lean path)."""

from __future__ import annotations

import json
import re
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from .errors import Forbidden, JwtProxyError, KeysUnavailable, MissingToken
from .gate import Challenge
from .headers import response_bytes

REALM: Final = 'Bearer realm="jwtproxy"'
RETRY_AFTER_SECONDS: Final = 30
JSON_TYPE: Final = (b"Content-Type", b"application/json; charset=utf-8")  # as aiohttp's
CLOSE_AFTER: Final = frozenset({408, 431, 499})  # the connection closes after the answer
DESCRIPTION_UNSAFE: Final = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')  # RFC 6750 §3


def error_parts(
    err: JwtProxyError, offer: Challenge | None = None,
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The JSON body and the headers of the answer to `err`: one rendering for every door."""
    description = DESCRIPTION_UNSAFE.sub("", err.description)
    body: dict[str, str] = {"error": err.error or "unauthorized",
                            "error_description": description}
    headers: list[tuple[str, str]] = []
    params = ""
    if not isinstance(err, MissingToken) and err.status in (400, 401, 403):
        params = f', error="{err.error}", error_description="{description}"'
        if isinstance(err, Forbidden) and err.scope:
            params += f', scope="{DESCRIPTION_UNSAFE.sub("", err.scope)}"'
    if isinstance(err, MissingToken) or err.status in (400, 401, 403):
        headers += (("WWW-Authenticate", challenge) for challenge in _challenges(params, offer))
    elif isinstance(err, KeysUnavailable):
        headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
    if err.status == 404:
        body = {"error": "not_found"}
    return body, headers


def error_response(err: JwtProxyError, offer: Challenge | None = None) -> web.Response:
    body, headers = error_parts(err, offer)
    response = web.json_response(body, status=err.status, headers=CIMultiDict(headers))
    if err.status in CLOSE_AFTER:
        response.force_close()  # what is left of the request is not worth reading
    return response


def error_bytes(
    err: JwtProxyError, offer: Challenge | None, request_id: str, keep_alive: bool,
    head_only: bool,
) -> bytes:
    """The answer of error_response as one HTTP/1.1 message, as relayed answers are
    written (headers.response_bytes): no aiohttp Response to build on the lean path. A
    replayed bad token meets the same error and challenge each time: their rendering is
    remembered (bounded), so a refusal costs no more than an acceptance."""
    key = (type(err), err.status, err.error, err.description, getattr(err, "scope", None),
           offer)
    rendered = _RENDERED.get(key)
    if rendered is None:
        body, headers = error_parts(err, offer)
        fields = [(JSON_TYPE[0], JSON_TYPE[1])]
        fields += ((name.encode(), value.encode()) for name, value in headers)
        if len(_RENDERED) >= RENDERED_MAX:
            _RENDERED.clear()
        rendered = _RENDERED[key] = (fields, json.dumps(body).encode())
    fields, body_bytes = rendered
    return response_bytes(err.status, b"", fields, body_bytes, request_id,
                          keep_alive and err.status not in CLOSE_AFTER, head_only)


RENDERED_MAX: Final = 256
_RENDERED: dict[tuple[object, ...], tuple[list[tuple[bytes, bytes]], bytes]] = {}


def _challenges(params: str, offer: Challenge | None) -> list[str]:
    """One challenge per scheme the route accepts (RFC 9110 §11.6.1), the error in the
    scheme the client used, which comes first; RFC 9728 §5.1 `resource_metadata` in each."""
    if offer is None:
        return [REALM + params]
    extra = (f', resource_metadata="{DESCRIPTION_UNSAFE.sub("", offer.resource_metadata)}"'
             if offer.resource_metadata else "")
    bearer = REALM + (params if offer.used == "Bearer" else "")
    dpop = "DPoP " + (params[2:] + ", " if params and offer.used == "DPoP" else "") + (
        f'algs="{offer.dpop_algs}"' if offer.dpop_algs else 'realm="jwtproxy"')
    out = []
    if offer.bearer or offer.used == "Bearer":
        out.append(bearer + extra)
    if offer.advertise_dpop or offer.used == "DPoP":
        out.append(dpop + extra)
    return out if offer.used == "Bearer" else out[::-1]
