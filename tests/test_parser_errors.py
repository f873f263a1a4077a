"""Requests aiohttp's HTTP parser refuses get the contract's JSON error body from the real
server, never a text body quoting the refused line."""

from __future__ import annotations

import json
import socket

from aiohttp import web

from tests.proc import proxy_process
from tests.threaded import serve_in_thread
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


def read_to_eof(sock: socket.socket) -> bytes:
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    return reply


def answer(reply: bytes) -> tuple[int, dict[str, str]]:
    status_line, _, rest = reply.partition(b"\r\n")
    head, _, body = rest.partition(b"\r\n\r\n")
    assert b"application/json" in head, reply[:200]
    return int(status_line.split()[1]), json.loads(body)


def test_every_header_limit_is_431_with_the_json_body() -> None:
    """Field size (64 KiB), field count (128) and the whole head (96 KiB): all 431
    (RFC 6585 §5), whichever layer counts them, and the connection closes."""
    config = {"routes": [{"name": "public", "match": {"path_prefix": "/"}, "auth": "none",
                          "upstream": "http://127.0.0.1:9"}]}
    heads = {
        "one field over 64 KiB": ["X-Big: " + "a" * 70 * 1024],
        "a name over 64 KiB": ["X-" + "n" * 70 * 1024 + ": 1"],
        "130 fields": [f"X-H{i}: v" for i in range(130)],
        "the whole head over 96 KiB": [f"X-Pad-{i}: " + "v" * 8000 for i in range(120)],
    }
    with proxy_process(config) as proc:
        for what, fields in heads.items():
            head = "\r\n".join(["GET / HTTP/1.1", "Host: a", *fields]) + "\r\n\r\n"
            with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as sock:
                sock.sendall(head.encode())
                status, body = answer(read_to_eof(sock))
            assert (status, body["error"]) == (431, "invalid_request"), what
        assert proc.admin_get("/healthz")[0] == 200


def test_the_connection_closes_right_after_a_408() -> None:
    """aiohttp would go on reading the stalled body for its 10 s lingering time; the
    socket timeout (5 s) fails the read if the close does not follow the answer."""
    async def upstream(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.json_response({})

    with serve_in_thread(upstream) as port:
        config = {"routes": [{"name": "public", "match": {"path_prefix": "/"}, "auth": "none",
                              "upstream": f"http://127.0.0.1:{port}",
                              "timeouts": {"read": "300ms"}}]}
        with proxy_process(config) as proc, socket.create_connection(
                ("127.0.0.1", proc.port), timeout=5) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
            status, body = answer(read_to_eof(sock))  # EOF, not a timeout
            assert (status, body["error"]) == (408, "request_timeout")
