"""Session fixtures for the interop tests; the machinery lives in interop_support.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from interop_support import (
    Cognito,
    EchoUpstream,
    OidcIssuer,
    run_echo_upstream,
    run_moto_cognito,
    run_oidc_issuer,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interop: talks to a third-party issuer implementation")


@pytest.fixture(scope="session")
def echo_upstream() -> Iterator[EchoUpstream]:
    """A reflecting upstream: the JSON body says what the proxy actually sent."""
    with run_echo_upstream() as upstream:
        yield upstream


@pytest.fixture(scope="session")
def oidc_issuer() -> Iterator[OidcIssuer]:
    """panva/oidc-provider (node/issuer.mjs); skips only if node/npm are missing or npm fails."""
    with run_oidc_issuer() as issuer:
        yield issuer


@pytest.fixture(scope="session")
def cognito() -> Iterator[Cognito]:
    """moto's Cognito in server mode on loopback, with users `alice` (admin) and `bob`."""
    with run_moto_cognito() as pool:
        yield pool
