"""TLS on the proxy port (certificates re-read on reload) and https upstreams verified
against a route's ca_file, with local CAs from trustme."""

from __future__ import annotations

import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography import x509

from tests.conftest import ProxyFactory, base_config
from tests.proc import proxy_process
from tests.servers import EchoUpstream, JwksEndpoint
from tests.threaded import serve_in_thread


def write_cert(ca: trustme.CA, tmp: Path, name: str) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    return str(cert_file), str(key_file)


def serial_seen(port: int, ca: trustme.CA, tmp: Path) -> int:
    """The serial of the certificate the proxy presents, verified against `ca`."""
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pem = ssl.get_server_certificate(("127.0.0.1", port), ca_certs=str(ca_file), timeout=5)
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


@pytest.fixture
def echo_port() -> Iterator[int]:
    async def ok(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response({"ok": True})

    with serve_in_thread(ok) as port:
        yield port


def test_proxy_serves_tls_and_rereads_certificates_on_reload(
    tmp_path: Path, echo_port: int
) -> None:
    ca = trustme.CA()
    cert_file, key_file = write_cert(ca, tmp_path, "one")
    config: dict[str, Any] = {
        "server": {"tls": {"cert_file": cert_file, "key_file": key_file}},
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "auth": "none",
                    "upstream": f"http://127.0.0.1:{echo_port}"}],
    }
    with proxy_process(config) as proxy:
        url = f"https://127.0.0.1:{proxy.port}/x"
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with urllib.request.urlopen(url, context=context, timeout=5) as resp:
            assert resp.status == 200
        first = serial_seen(proxy.port, ca, tmp_path)
        new_cert, new_key = write_cert(ca, tmp_path, "two")
        Path(cert_file).write_bytes(Path(new_cert).read_bytes())
        Path(key_file).write_bytes(Path(new_key).read_bytes())
        proxy.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while serial_seen(proxy.port, ca, tmp_path) == first:
            assert time.monotonic() < deadline, "the new certificate was not served"
            time.sleep(0.05)
        with pytest.raises(urllib.error.URLError):  # and a client that does not trust the CA fails
            urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=5)


async def test_https_upstream_verified_against_the_route_ca(
    make_proxy: ProxyFactory, jwks: tuple[JwksEndpoint, str], tmp_path: Path,
    aiohttp_raw_server: Any,
) -> None:
    ca, stranger = trustme.CA(), trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    echo = EchoUpstream()
    server = await aiohttp_raw_server(echo.handle, ssl=server_context)
    right, wrong = tmp_path / "right.pem", tmp_path / "wrong.pem"
    ca.cert_pem.write_to_path(str(right))
    stranger.cert_pem.write_to_path(str(wrong))
    config = base_config(jwks[1], f"https://127.0.0.1:{server.port}")
    config["routes"][0]["ca_file"] = str(right)
    config["routes"].insert(1, {"name": "untrusted", "match": {"path_prefix": "/untrusted"},
                                "upstream": f"https://127.0.0.1:{server.port}",
                                "auth": "none", "ca_file": str(wrong)})
    proxy = await make_proxy(config)
    resp = await proxy.client.post("/public/x", data=b"over tls")
    assert resp.status == 200
    assert echo.received[-1].body == b"over tls"
    resp = await proxy.client.get("/untrusted/x")
    assert resp.status == 502
    assert len(echo.received) == 1
