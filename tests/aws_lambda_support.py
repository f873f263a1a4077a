"""API Gateway authorizer events in the shapes of AWS's documentation, a JWKS endpoint on a
loopback thread, and a way to read the Lambda door's answer as allow/deny/401/500.

The event bodies are the samples of "Input to an API Gateway Lambda authorizer" (REST TOKEN
and REQUEST) and "Working with AWS Lambda authorizers for HTTP APIs" (payload 1.0 and 2.0),
with only the method, path, ARN and credentials set per test.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any, Final

import yaml

from jwtproxy.aws_lambda import Authorizer, AuthorizerFailure, Unauthorized
from jwtproxy.loader import load_text
from tests.servers import JwksEndpoint
from tests.threaded import serve_in_thread

REGION: Final = "us-east-1"
ACCOUNT: Final = "123456789012"
API_ID: Final = "abcdef123"
STAGE: Final = "test"
ARN_BASE: Final = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{STAGE}"
DOMAIN: Final = "abcdef123.execute-api.us-east-1.amazonaws.com"
SHAPES: Final = ("rest_token", "rest_request", "http_v1", "http_v2")


def method_arn(method: str, path: str) -> str:
    return f"{ARN_BASE}/{method}{path}"


def token_event(header_value: str | None, method: str, path: str) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "TOKEN", "methodArn": method_arn(method, path)}
    if header_value is not None:
        event["authorizationToken"] = header_value
    return event


_REST_REQUEST: Final[dict[str, Any]] = {
    "type": "REQUEST",
    "methodArn": "arn:aws:execute-api:us-east-1:123456789012:s4x3opwd6i/test/GET/request",
    "resource": "/request",
    "path": "/request",
    "httpMethod": "GET",
    "headers": {
        "X-AMZ-Date": "20170718T062915Z", "Accept": "*/*", "HeaderAuth1": "headerValue1",
        "CloudFront-Viewer-Country": "US", "CloudFront-Forwarded-Proto": "https",
        "CloudFront-Is-Tablet-Viewer": "false", "CloudFront-Is-Mobile-Viewer": "false",
        "User-Agent": "...", "X-Forwarded-Proto": "https", "CloudFront-Is-SmartTV-Viewer": "false",
        "Host": "....execute-api.us-east-1.amazonaws.com", "Accept-Encoding": "gzip, deflate",
        "X-Forwarded-Port": "443", "X-Amzn-Trace-Id": "...",
        "Via": "...cloudfront.net (CloudFront)",
        "X-Amz-Cf-Id": "...", "X-Forwarded-For": "..., ...", "Postman-Token": "...",
        "cache-control": "no-cache", "CloudFront-Is-Desktop-Viewer": "true",
        "Content-Type": "application/x-www-form-urlencoded",
    },
    "queryStringParameters": {"QueryString1": "queryValue1"},
    "pathParameters": {},
    "stageVariables": {"StageVar1": "stageValue1"},
    "requestContext": {
        "path": "/request", "accountId": "123456789012", "resourceId": "05c7jb", "stage": "test",
        "requestId": "...", "identity": {"apiKey": "...", "sourceIp": "..."},
        "resourcePath": "/request", "httpMethod": "GET", "apiId": "s4x3opwd6i",
    },
}

_HTTP_V1: Final[dict[str, Any]] = {
    "version": "1.0",
    "type": "REQUEST",
    "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abcdef123/test/GET/request",
    "identitySource": "user1,123",
    "authorizationToken": "user1,123",
    "resource": "/request",
    "path": "/request",
    "httpMethod": "GET",
    "headers": {
        "X-AMZ-Date": "20170718T062915Z", "Accept": "*/*", "HeaderAuth1": "headerValue1",
        "CloudFront-Viewer-Country": "US", "CloudFront-Forwarded-Proto": "https",
        "CloudFront-Is-Tablet-Viewer": "false", "CloudFront-Is-Mobile-Viewer": "false",
        "User-Agent": "...",
    },
    "queryStringParameters": {"QueryString1": "queryValue1"},
    "pathParameters": {},
    "stageVariables": {"StageVar1": "stageValue1"},
    "requestContext": {
        "path": "/request", "accountId": "123456789012", "resourceId": "05c7jb", "stage": "test",
        "requestId": "...",
        "identity": {"apiKey": "...", "sourceIp": "...", "clientCert": {
            "clientCertPem": "CERT_CONTENT", "subjectDN": "www.example.com",
            "issuerDN": "Example issuer",
            "serialNumber": "a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1",
            "validity": {"notBefore": "May 28 12:30:02 2019 GMT",
                         "notAfter": "Aug  5 09:36:04 2021 GMT"}}},
        "resourcePath": "/request", "httpMethod": "GET", "apiId": "abcdef123",
    },
}

_HTTP_V2: Final[dict[str, Any]] = {
    "version": "2.0",
    "type": "REQUEST",
    "routeArn": "arn:aws:execute-api:us-east-1:123456789012:abcdef123/test/GET/request",
    "identitySource": ["user1", "123"],
    "routeKey": "$default",
    "rawPath": "/my/path",
    "rawQueryString": "parameter1=value1&parameter1=value2&parameter2=value",
    "cookies": ["cookie1", "cookie2"],
    "headers": {"header1": "value1", "header2": "value2"},
    "queryStringParameters": {"parameter1": "value1,value2", "parameter2": "value"},
    "requestContext": {
        "accountId": "123456789012", "apiId": "api-id",
        "authentication": {"clientCert": {
            "clientCertPem": "CERT_CONTENT", "subjectDN": "www.example.com",
            "issuerDN": "Example issuer",
            "serialNumber": "a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1",
            "validity": {"notBefore": "May 28 12:30:02 2019 GMT",
                         "notAfter": "Aug  5 09:36:04 2021 GMT"}}},
        "domainName": "id.execute-api.us-east-1.amazonaws.com", "domainPrefix": "id",
        "http": {"method": "POST", "path": "/my/path", "protocol": "HTTP/1.1",
                 "sourceIp": "IP", "userAgent": "agent"},
        "requestId": "id", "routeKey": "$default", "stage": "$default",
        "time": "12/Mar/2020:19:03:58 +0000", "timeEpoch": 1583348638390,
    },
    "pathParameters": {"parameter1": "value1"},
    "stageVariables": {"stageVariable1": "value1", "stageVariable2": "value2"},
}


def documented(shape: str) -> dict[str, Any]:
    """AWS's sample event of `shape`, unchanged (a fresh copy)."""
    samples = {"rest_request": _REST_REQUEST, "http_v1": _HTTP_V1, "http_v2": _HTTP_V2,
               "rest_token": {"type": "TOKEN", "authorizationToken": "allow",
                              "methodArn": "arn:aws:execute-api:us-west-2:123456789012:"
                                           "ymy8tbxw7b/*/GET/"}}
    return copy.deepcopy(samples[shape])


def event(shape: str, method: str, path: str, authorization: str | None = None,
          headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The sample of `shape` for `method path`, with an Authorization header (or, for
    TOKEN, `authorizationToken`) when given."""
    if shape == "rest_token":
        return token_event(authorization, method, path)
    body = documented(shape)
    extra = dict(headers or {})
    if authorization is not None:
        extra["Authorization"] = authorization
    if shape == "http_v2":
        body["routeArn"] = method_arn(method, path)
        body["rawPath"] = body["requestContext"]["http"]["path"] = path
        body["requestContext"]["http"]["method"] = method
        body["requestContext"]["domainName"] = DOMAIN
        body["headers"].update({name.lower(): value for name, value in extra.items()})
        return body
    body["methodArn"] = method_arn(method, path)
    body["path"] = body["resource"] = body["requestContext"]["path"] = path
    body["httpMethod"] = body["requestContext"]["httpMethod"] = method
    body["headers"].update(extra)
    return body


def bearer(token: str) -> str:
    return f"Bearer {token}"


@contextlib.contextmanager
def jwks_server(endpoint: JwksEndpoint) -> Iterator[str]:
    """`endpoint` served on loopback from a thread; yields its JWKS URL."""
    with serve_in_thread(endpoint.handle) as port:  # type: ignore[arg-type]
        yield f"http://127.0.0.1:{port}/jwks.json"


@contextlib.contextmanager
def authorizer(config: dict[str, Any]) -> Iterator[Authorizer]:
    door = Authorizer(load_text(yaml.safe_dump(config)))
    try:
        yield door
    finally:
        door.close()


def glob_match(pattern: str, text: str) -> bool:
    """IAM wildcard matching by the textbook two-pointer walk (no regular expressions)."""
    p = t = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] in ("?", text[t]):
            p, t = p + 1, t + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, t, p + 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            t = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def iam_allows(policy: dict[str, Any], arn: str) -> bool:
    allowed = False
    for statement in policy["policyDocument"]["Statement"]:
        assert statement["Action"] == "execute-api:Invoke"
        resources = statement["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        if any(glob_match(resource, arn) for resource in resources):
            if statement["Effect"] == "Deny":
                return False  # an explicit Deny wins over any Allow
            allowed = True
    return allowed


def answer(door: Authorizer, body: Any, context: Any = None) -> tuple[str, Any]:
    """("allow" | "deny", response), ("unauthorized", None) or ("error", message); a policy
    allows when IAM's rules allow the event's own method ARN with it."""
    try:
        response = door.handle(body, context)
    except Unauthorized as err:
        assert str(err) == "Unauthorized"  # API Gateway's 401 is keyed on this exact message
        return "unauthorized", None
    except AuthorizerFailure as err:
        return "error", str(err)
    if "isAuthorized" in response:
        return ("allow" if response["isAuthorized"] is True else "deny"), response
    arn = body.get("methodArn") or body.get("routeArn")
    return ("allow" if iam_allows(response, arn) else "deny"), response


def allow_policy(principal: str, arn: str, context: dict[str, Any] | None) -> dict[str, Any]:
    return _policy(principal, "Allow", arn, context)


def deny_policy(principal: str, arn: str) -> dict[str, Any]:
    return _policy(principal, "Deny", arn, None)


def _policy(principal: str, effect: str, arn: str, context: dict[str, Any] | None
            ) -> dict[str, Any]:
    response: dict[str, Any] = {
        "principalId": principal,
        "policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": effect, "Resource": arn}]}}
    if context:
        response["context"] = context
    return response
