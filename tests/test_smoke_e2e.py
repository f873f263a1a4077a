from __future__ import annotations

from tests.conftest import AUDIENCE, ISSUER, Proxy
from tests.servers import EchoUpstream, JwksEndpoint
from tests.tokens import KeyRing, mint


def claims(**extra: object) -> dict[str, object]:
    return {"iss": ISSUER, "aud": AUDIENCE, **extra}


async def test_valid_token_reaches_upstream(
    proxy: Proxy, keys: KeyRing, upstream: tuple[EchoUpstream, str],
    jwks: tuple[JwksEndpoint, str],
) -> None:
    token = mint(keys.rsa, claims(scope="orders:read"))
    resp = await proxy.client.get("/orders/1?x=1", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    got = upstream[0].received[-1]
    assert got.path_qs == "/orders/1?x=1"
    assert got.header("X-Auth-Subject") == "user-1"
