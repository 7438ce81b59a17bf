"""Header and framing abuse, over raw sockets (what an HTTP library refuses to send): huge and
many headers, bad content types and lengths, duplicate and malformed credentials, bytes that are
not HTTP. Each answer is below 500, complete within the timeout, and an error is the route's own
envelope, also when the HTTP server answers before the app (431, 400, 408)."""

from __future__ import annotations

import json

import pytest

from tests.support.hostile import check_envelope, healthy, raw_request

pytestmark = pytest.mark.fuzz

# A body announced but never sent is answered 408 after this long (the default is 10 s).
SERVER_SETTINGS = "body_timeout = 1\nheader_timeout = 2\n"

CHAT = "/openai/v1/chat/completions"
MESSAGES = "/anthropic/v1/messages"
ROUTES = [CHAT, MESSAGES, "/openai/v1/responses", "/anthropic/v1/messages/count_tokens", "/api/v1/feedback", "/api/v1/keys"]
BODIES = {
    CHAT: {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]},
    MESSAGES: {"model": "mock-echo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    "/openai/v1/responses": {"model": "mock-echo", "input": "hi"},
    "/anthropic/v1/messages/count_tokens": {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]},
    "/api/v1/feedback": {"rating": 3, "text": "fine"},
    "/api/v1/keys": {"name": "fuzz key"},
}


def request(path: str, headers: list[tuple[str, str | bytes]], body: bytes = b"", method: str = "POST", line: bytes | None = None) -> bytes:
    head = line if line is not None else f"{method} {path} HTTP/1.1".encode()
    out = [head, b"Host: 127.0.0.1", b"Connection: close"]
    for name, value in headers:
        out.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def send(server, path: str, data: bytes, expect: set[int] | None = None) -> int:
    reply = raw_request(server.port, data)
    assert reply.status, reply.raw[:300]
    check_envelope(path, reply.status, reply.headers, reply.body)
    if expect is not None:
        assert reply.status in expect, (path, reply.status, reply.body[:300])
    return reply.status


def auth(server) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {server.key}")]


def body_of(path: str) -> bytes:
    return json.dumps(BODIES[path]).encode()


def framed(path: str, server, extra: list[tuple[str, str | bytes]] = ()) -> bytes:
    body = body_of(path)
    headers = [*auth(server), ("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra]
    return request(path, headers, body)


@pytest.mark.parametrize("path", ROUTES)
def test_the_plain_request_is_served(server, path):
    assert send(server, path, framed(path, server)) in (200, 201)


@pytest.mark.parametrize("path", ROUTES)
def test_huge_header_values_and_urls_get_431_in_the_routes_format(server, path):
    send(server, path, framed(path, server, [("X-Big", "a" * 70_000)]), {431})
    send(server, path, framed(path, server, [(f"X-H-{i}", "v" * 20) for i in range(5000)]), {431})
    send(server, path, request(path + "?q=" + "z" * 70_000, auth(server)), {431})


@pytest.mark.parametrize("path", ROUTES)
def test_many_small_headers_within_the_limit_are_fine(server, path):
    assert send(server, path, framed(path, server, [(f"X-H-{i}", "v") for i in range(2000)])) in (200, 201)


CONTENT_TYPES = ["text/plain", "application/json; charset=latin-1", "multipart/form-data; boundary=x", "", "\x01\x02",
                 "application/x-www-form-urlencoded", "application/json, text/html", "a" * 5000, "application/json; charset=utf-16"]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("ctype", CONTENT_TYPES)
def test_bad_content_types(server, path, ctype):
    body = body_of(path)
    send(server, path, request(path, [*auth(server), ("Content-Type", ctype), ("Content-Length", str(len(body)))], body))


@pytest.mark.parametrize("path", ROUTES)
def test_bad_content_lengths(server, path):
    body = body_of(path)
    for length in ["abc", "-1", "1e3", " 10 ", "99999999999999999999999", "0x10", "", str(len(body)) + "0" * 30]:
        send(server, path, request(path, [*auth(server), ("Content-Length", length)], body))
    # Two lengths that disagree, a length with chunked framing, a body shorter or longer than said.
    send(server, path, request(path, [*auth(server), ("Content-Length", "5"), ("Content-Length", "7")], body))
    send(server, path, request(path, [*auth(server), ("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")], body))
    if path in (CHAT, MESSAGES):  # one of each format: the wait for the missing bytes is `body_timeout`
        assert send(server, path, request(path, [*auth(server), ("Content-Length", str(len(body) + 50))], body)) in (400, 408)
    send(server, path, request(path, [*auth(server), ("Content-Length", str(len(body) // 2))], body))
    # A declared size beyond the limit is refused before a byte of it is read.
    send(server, path, request(path, [*auth(server), ("Content-Length", str(40 * 2**20))], body[:10]), {401, 413})


@pytest.mark.parametrize("path", ROUTES)
def test_bad_chunked_framing(server, path):
    for chunks in [b"zz\r\nabc\r\n0\r\n\r\n", b"ffffffffffffffffff\r\nabc", b"5\r\nabc\r\n0\r\n\r\n", b"-1\r\n\r\n", b"0\r\n\r\n"]:
        send(server, path, request(path, [*auth(server), ("Transfer-Encoding", "chunked")], chunks))


@pytest.mark.parametrize("path", ROUTES)
def test_duplicate_and_malformed_credentials(server, path):
    good, bad = f"Bearer {server.key}", "Bearer ak_" + "x" * 40
    body = body_of(path)
    length = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    cases = [
        [("Authorization", good), ("Authorization", bad)],
        [("Authorization", bad), ("Authorization", good)],
        [("Authorization", bad), ("x-api-key", server.key)],
        [("Authorization", good), ("x-api-key", "nonsense")],
        [("Authorization", "Bearer")],
        [("Authorization", "Bearer " + "k" * 20_000)],
        [("Authorization", "Basic dXNlcjpwYXNz")],
        [("Authorization", b"Bearer \xff\xfe\xfd")],
        [("Authorization", "Authorization: Bearer Authorization: Bearer " + server.key)],
        [("x-api-key", ""), ("x-api-key", server.key)],
        [("Cookie", "lc_session=" + "s" * 4000 + "; lc_session=x")],
    ]
    for headers in cases:
        send(server, path, request(path, [*headers, *length], body))


@pytest.mark.parametrize("path", ROUTES)
def test_bytes_that_are_not_http_get_the_routes_format(server, path):
    for data in [
        request(path, [("X-A\x00", "b")]),
        request(path, [("Bad Header", "x")]),
        request(path, [("X-Ctl", b"a\x00b")]),
        request(path, [], line=f"POST {path} HTTP/9.9".encode()),
        request(path, [], line=f"POST {path}\x00 HTTP/1.1".encode()),
    ]:
        send(server, path, data, {400})


def test_a_request_line_that_names_no_route(server):
    for line in [b"GARBAGE", b"GET", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/1.1 extra"]:
        send(server, "", request("", [], line=line), {400})
    send(server, "/openai/v1/chat/completions", request(CHAT, auth(server), method="FOO"), {400, 405})
    send(server, "/openai/v1/chat/completions", request(CHAT, auth(server), method="PUT"), {405})


def test_headers_that_never_end_get_408_in_the_routes_format(server):
    reply = raw_request(server.port, f"POST {MESSAGES} HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n".encode(), timeout=10)
    assert reply.status == 408, reply.raw[:200]
    check_envelope(MESSAGES, reply.status, reply.headers, reply.body)


def test_still_healthy(server):
    healthy(server)


def test_every_route_under_other_methods(server, tmp_path):
    """Each route of the app, asked with a method it does not serve (or none at all, or HEAD)."""
    from tests.hostile.test_routes import served

    routes, _ = served(tmp_path)
    for path in sorted({p for _, p in routes}):
        url = path.replace("{model_id:path}", "mock-echo").replace("{action:str}", "enable")
        url = url.replace("{", "").replace("}", "")  # any other parameter: its own name, as a value
        for method in ("OPTIONS", "TRACE", "PUT", "BREW"):
            send(server, url, request(url, auth(server), method=method))
        head = raw_request(server.port, request(url, auth(server), method="HEAD"))
        assert 0 < head.status < 500 and head.body == b"", (url, head.raw[:200])
