"""API Gateway authorizer events → the request the gate decides on.

Shapes (AWS's "Input to an API Gateway Lambda authorizer" and "Working with AWS Lambda
authorizers for HTTP APIs"): REST `TOKEN` (`authorizationToken`, `methodArn`), REST and
HTTP API 1.0 `REQUEST` (`methodArn`, `headers`/`multiValueHeaders`, query parameters,
`requestContext.domainName`), HTTP API 2.0 (`routeArn`, `rawPath`, `rawQueryString`,
`headers`, `cookies`, `requestContext.http.method`, `.domainName`, `.stage`). Anything else,
or a field of the wrong type, is a `BadEvent`: the door answers it Unauthorized.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlencode

from multidict import CIMultiDict, CIMultiDictProxy

from .arn_patterns import MethodArn, parse_arn
from .gate import RequestView

Shape = Literal["rest_token", "rest_request", "http_v1", "http_v2"]
DEFAULT_STAGE: Final = "$default"
MAX_FIELD_CHARS: Final = 64 * 1024  # one header, path or ARN; API Gateway's own are far less


class BadEvent(Exception):
    """Not an authorizer event this door knows; the message names the field, never a value."""


@dataclass(frozen=True, slots=True)
class AuthorizerEvent:
    shape: Shape
    arn: MethodArn  # methodArn or routeArn: what a policy answers for
    view: RequestView


def parse_event(event: Any, token_header: str, match_on_arn: bool) -> AuthorizerEvent:
    """`token_header` carries a TOKEN event's `authorizationToken` to the extractor;
    `match_on_arn` matches HTTP API 2.0 events on the routeArn too (policy_scope: routes:
    the decision is then on what IAM evaluates), else on `rawPath`."""
    if not isinstance(event, Mapping):
        raise BadEvent("event is not a JSON object")
    kind, version = event.get("type"), event.get("version")
    if kind == "TOKEN":
        arn = _arn(event, "methodArn")
        headers = CIMultiDict({token_header: _text(event, "authorizationToken")})
        return AuthorizerEvent("rest_token", arn, _view(arn.method, "", arn.path, "", headers))
    if kind != "REQUEST":
        raise BadEvent("type is neither TOKEN nor REQUEST")
    if version == "2.0":
        return _http_v2(event, match_on_arn)
    if version not in (None, "1.0"):
        raise BadEvent("version is neither 1.0 nor 2.0")
    arn = _arn(event, "methodArn")
    headers = CIMultiDict(_pairs(event, "headers", "multiValueHeaders"))
    query = urlencode(_pairs(event, "queryStringParameters", "multiValueQueryStringParameters"))
    context = _mapping(event, "requestContext")
    host = _optional_text(context, "domainName") or headers.get("Host") or ""
    shape: Shape = "http_v1" if version == "1.0" else "rest_request"
    # REST: the method ARN (stage stripped) is both what is matched and what IAM evaluates
    return AuthorizerEvent(shape, arn, _view(arn.method, host, arn.path, query, headers))


def _http_v2(event: Mapping[str, Any], match_on_arn: bool) -> AuthorizerEvent:
    arn = _arn(event, "routeArn")
    context = _mapping(event, "requestContext", required=True)
    method = _text(_mapping(context, "http", required=True), "method").upper()
    path = _text(event, "rawPath")
    stage = _optional_text(context, "stage") or DEFAULT_STAGE
    if stage != DEFAULT_STAGE and (path == f"/{stage}" or path.startswith(f"/{stage}/")):
        path = path[len(stage) + 1:] or "/"  # a named stage is the first segment of rawPath
    headers: CIMultiDict[str] = CIMultiDict(_pairs(event, "headers", None))
    cookies = event.get("cookies")
    if cookies is not None:
        if not isinstance(cookies, list) or not all(isinstance(c, str) for c in cookies):
            raise BadEvent("cookies is not a list of strings")
        if cookies:
            headers.add("Cookie", "; ".join(cookies))
    if match_on_arn:
        method, path = arn.method, arn.path
    query = _optional_text(event, "rawQueryString") or ""
    host = _optional_text(context, "domainName") or headers.get("Host") or ""
    return AuthorizerEvent("http_v2", arn, _view(method, host, path, query, headers))


def _view(method: str, host: str, path: str, query: str, headers: CIMultiDict[str]
          ) -> RequestView:
    # API Gateway serves https only: the URI a DPoP proof names (htu) is https://host/path
    return RequestView(method, host, path, query, CIMultiDictProxy(headers), "https")


def _arn(event: Mapping[str, Any], name: str) -> MethodArn:
    arn = parse_arn(_text(event, name))
    if arn is None:
        raise BadEvent(f"{name} is not an execute-api method ARN")
    return arn


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
        raise BadEvent(f"{name} is missing or not a string")
    return value


def _optional_text(data: Mapping[str, Any], name: str) -> str | None:
    return _text(data, name) if data.get(name) is not None else None


def _mapping(data: Mapping[str, Any], name: str, required: bool = False) -> Mapping[str, Any]:
    value = data.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise BadEvent(f"{name} is not an object")
    return value


def _pairs(event: Mapping[str, Any], single: str, multi: str | None) -> list[tuple[str, str]]:
    """Name/value pairs of a headers or query map; the multi-value one, when the event has
    it, keeps repeated names (two Authorization headers stay two)."""
    many = _mapping(event, multi) if multi is not None else {}
    pairs: list[tuple[str, str]] = []
    if many:
        for name, values in many.items():
            if not isinstance(values, list) or not all(
                    isinstance(v, str) and len(v) <= MAX_FIELD_CHARS for v in values):
                raise BadEvent(f"{multi} values are not lists of strings")
            pairs.extend((str(name), value) for value in values)
        return pairs
    for name, value in _mapping(event, single).items():
        if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
            raise BadEvent(f"{single} values are not strings")
        pairs.append((str(name), value))
    return pairs
