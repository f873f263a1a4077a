"""deploy/aws: the SAM template passes cfn-lint, transforms cleanly with aws-sam-translator
into a REST API with a TOKEN authorizer and an HTTP API with a Lambda authorizer, both on
the one function; the config shipped beside the handler is one `check` accepts and the
door serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import pytest
from cfnlint.api import lint_file
from cfnlint.decode import decode
from samtranslator.translator.transform import transform

from jwtproxy.aws_lambda import CONFIG_NAME
from jwtproxy.loader import load_file
from tests.aws_lambda_support import answer, event

ROOT: Final = Path(__file__).resolve().parent.parent
AWS: Final = ROOT / "deploy" / "aws"
TEMPLATE: Final = AWS / "template.yaml"
HANDLER: Final = "jwtproxy.aws_lambda.handler"
ENV: Final = {"COGNITO_REGION": "eu-west-1", "COGNITO_USER_POOL_ID": "eu-west-1_AbCdEf123",
              "COGNITO_APP_CLIENT_ID": "4example5clientid6abcdefghi"}


class _Policies:
    """The managed policies the translator may look up (no AWS account is asked)."""

    def load(self) -> dict[str, str]:
        return {"AWSLambdaBasicExecutionRole":
                "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    data, matches = decode(str(TEMPLATE))
    assert not matches and data is not None
    return dict(data)


@pytest.fixture(scope="module")
def transformed(template: dict[str, Any]) -> dict[str, Any]:
    """As `sam package` + CloudFormation see it: CodeUri uploaded to S3 first."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        packaged = {**template, "Resources": dict(template["Resources"])}
        function = packaged["Resources"]["AuthorizerFunction"]
        packaged["Resources"]["AuthorizerFunction"] = {**function, "Properties": {
            **function["Properties"], "CodeUri": "s3://artifacts/jwtproxy-lambda.zip"}}
        params = {"CognitoUserPoolId": ENV["COGNITO_USER_POOL_ID"],
                  "CognitoAppClientId": ENV["COGNITO_APP_CLIENT_ID"]}
        return dict(transform(packaged, params, _Policies()))


def test_cfn_lint_clean() -> None:
    assert lint_file(TEMPLATE) == []


def test_function_runs_the_handler_with_its_config(template: dict[str, Any]) -> None:
    props = template["Resources"]["AuthorizerFunction"]["Properties"]
    assert props["Handler"] == HANDLER
    assert props["CodeUri"] == "build/"  # what build.sh fills: pip install . -t + the config
    assert props["Environment"]["Variables"]["JWTPROXY_CONFIG"] == CONFIG_NAME
    build = (AWS / "build.sh").read_text()
    assert '--target "$build"' in build and f'"$build/{CONFIG_NAME}"' in build
    assert set(ENV) <= set(props["Environment"]["Variables"])


def test_transform_wires_both_authorizers_to_the_function(transformed: dict[str, Any]) -> None:
    resources = transformed["Resources"]
    types = {name: resource["Type"] for name, resource in resources.items()}
    assert types["AuthorizerFunction"] == "AWS::Lambda::Function"
    assert resources["AuthorizerFunction"]["Properties"]["Handler"] == HANDLER
    assert types["RestApi"] == "AWS::ApiGateway::RestApi"
    assert types["HttpApi"] == "AWS::ApiGatewayV2::Api"
    rest = resources["RestApi"]["Properties"]["Body"]["securityDefinitions"]["JwtProxyToken"]
    authorizer = rest["x-amazon-apigateway-authorizer"]
    assert authorizer["type"] == "token" and rest["name"] == "Authorization"
    assert "AuthorizerFunction" in str(authorizer["authorizerUri"])
    http = resources["HttpApi"]["Properties"]["Body"]["components"]["securitySchemes"]
    lambda_auth = http["JwtProxyHttp"]["x-amazon-apigateway-authorizer"]
    assert lambda_auth["type"] == "request"
    assert lambda_auth["authorizerPayloadFormatVersion"] == "2.0"
    assert lambda_auth.get("enableSimpleResponses", False) is False  # IAM policy answers
    assert lambda_auth["identitySource"] == ["$request.header.Authorization"]
    assert "AuthorizerFunction" in str(lambda_auth["authorizerUri"])
    # API Gateway may invoke the function for both APIs
    permissions = [r["Properties"] for r in resources.values()
                   if r["Type"] == "AWS::Lambda::Permission"
                   and "AuthorizerFunction" in str(r["Properties"]["FunctionName"])]
    assert len(permissions) == 2
    assert all(p["Principal"] == "apigateway.amazonaws.com" for p in permissions)


def test_shipped_config_is_valid_and_cacheable() -> None:
    config = load_file(AWS / CONFIG_NAME, ENV)
    # a non-zero authorizer cache (the template's default) needs the routes scope
    assert config.aws_lambda.policy_scope == "routes"
    assert config.aws_lambda.response == "policy"
    issuer = config.issuers["cognito"]
    assert issuer.issuer == "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf123"
    assert issuer.audiences == (ENV["COGNITO_APP_CLIENT_ID"],)


def test_shipped_config_answers_without_a_network(tmp_path: Path) -> None:
    """Public route and missing token need no keys: the door built from the shipped file
    answers them (and a bad event) before any key is fetched."""
    from jwtproxy.aws_lambda import Authorizer

    door = Authorizer(load_file(AWS / CONFIG_NAME, ENV))
    try:
        assert answer(door, event("rest_token", "GET", "/health", ""))[0] == "allow"
        assert answer(door, event("rest_token", "GET", "/orders/1", "")) == (
            "unauthorized", None)
        assert answer(door, {"type": "TOKEN"}) == ("unauthorized", None)
    finally:
        door.close()
