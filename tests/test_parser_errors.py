"""Requests aiohttp's HTTP parser refuses get the contract's JSON error body from the real
server, never a text body quoting the refused line."""

from __future__ import annotations

import json
import socket

from tests.proc import proxy_process
from tests.tokens import make_keyring, mint


def test_parser_refusals_answer_json_without_echoing_the_request() -> None:
    token = mint(make_keyring().rsa, {"iss": "x", "aud": "y"})
    config = {"routes": [{"name": "public", "match": {"path_prefix": "/"}, "auth": "none",
                          "upstream": "http://127.0.0.1:9"}]}
    with proxy_process(config) as proc:
        heads = [
            f"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\x01\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ]
        for head in heads:
            with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as sock:
                sock.sendall(head.encode("latin-1"))
                reply = b""
                while chunk := sock.recv(65536):  # the proxy closes after answering
                    reply += chunk
            status_line, _, rest = reply.partition(b"\r\n")
            head_part, _, body = rest.partition(b"\r\n\r\n")
            assert status_line.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), reply[:120]
            assert b"application/json" in head_part
            assert json.loads(body)["error"] == "invalid_request"
            assert token.split(".")[2].encode() not in reply
        assert proc.admin_get("/healthz")[0] == 200
