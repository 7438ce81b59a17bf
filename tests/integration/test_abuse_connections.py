"""Connections that hold the server without using it: half-sent headers, silent bodies, and more
connections than file descriptors. Real requests must keep succeeding meanwhile."""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest

from tests.support.server import MOCK_CATALOG, Server, free_port, write_config

CAP = 64
HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("abuse-connections")
    config = write_config(
        data / "config.toml",
        f"max_connections = {CAP}\nheader_timeout = {HEADER_TIMEOUT}\nbody_timeout = {BODY_TIMEOUT}\n" + MOCK_CATALOG,
    )
    srv = Server(data, config, free_port()).start()
    srv.key = srv.new_key("conn@example.com")
    yield srv
    srv.stop()


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _half_open(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return s


def _closed_by_server(s: socket.socket) -> bool:
    """True once the server has closed `s` (a 408, or plain end of stream)."""
    s.settimeout(0.01)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def test_half_open_connections_are_closed_and_real_requests_succeed(server):
    before = _open_fds(server.proc.pid)
    slow: list[socket.socket] = []
    ok = failed = 0
    try:
        # Five times the cap of clients that never finish their headers, trickling a header
        # line now and then, while real requests keep coming.
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.key}"}, timeout=10) as client:
            for i in range(CAP * 5):
                slow.append(_half_open(server.port))
                if i % 8 == 0:
                    for s in slow[-40:]:
                        try:
                            s.sendall(b"X-Trickle: 1\r\n")
                        except OSError:
                            pass
                    r = client.post(
                        "/openai/v1/chat/completions",
                        json={"model": "mock-echo", "messages": [{"role": "user", "content": "still served"}]},
                    )
                    if r.status_code == 200 and "still served" in r.text:
                        ok += 1
                    else:
                        failed += 1
                assert time.monotonic() < deadline
            # However many were opened, the server holds about its cap of them, not thousands.
            assert _open_fds(server.proc.pid) <= before + CAP + 8
        assert ok >= CAP * 5 // 8 and failed == 0

        # A connection that is still sending its headers when its time is up is closed.
        late = [_half_open(server.port) for _ in range(5)]
        time.sleep(HEADER_TIMEOUT + 1.5)
        assert all(_closed_by_server(s) for s in late)
        assert httpx.get(server.base_url + "/health", timeout=5).status_code == 200
    finally:
        for s in slow:
            s.close()


def test_a_connection_that_never_sends_anything_is_closed(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        time.sleep(HEADER_TIMEOUT + 1.5)
        assert _closed_by_server(s)
    finally:
        s.close()


def test_a_body_that_stops_arriving_gets_408(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        s.sendall(
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + server.key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"model": "mock-echo", '
        )
        started = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        waited = time.monotonic() - started
    finally:
        s.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert BODY_TIMEOUT - 0.5 <= waited <= BODY_TIMEOUT + 3


def _read_reply(s: socket.socket, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    reply = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    except (TimeoutError, OSError):
        pass
    return reply


def test_huge_headers_get_431_without_a_key(server):
    before = _open_fds(server.proc.pid)
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 4 MB of one header value, never finished
                s.sendall(b"a" * 65536)
        except OSError:
            pass  # the server closed it: what we want
        assert _read_reply(s).startswith(b"HTTP/1.1 431")
    finally:
        s.close()
    assert _open_fds(server.proc.pid) <= before + 2


def test_bytes_that_start_no_request_do_not_keep_a_connection(server):
    """After a response, trickling blank lines (or the rest of a body nobody reads) does not keep
    the connection past the header deadline."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < HEADER_TIMEOUT + 6:
            try:
                s.sendall(b"\r\n")
            except OSError:
                closed = True
                break
            if _closed_by_server(s):
                closed = True
                break
            time.sleep(0.3)
        assert closed and time.monotonic() - started < HEADER_TIMEOUT + 3
    finally:
        s.close()


def test_a_body_must_arrive_in_bounded_time(server):
    """Trickling a byte just under the idle timeout does not hold a request forever: the whole
    body has six idle timeouts to arrive."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        s.sendall(
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + server.key.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        started = time.monotonic()
        s.settimeout(BODY_TIMEOUT * 0.6)
        reply = b""
        while not reply and time.monotonic() - started < BODY_TIMEOUT * 10:
            try:
                s.sendall(b" ")
                reply = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
        waited = time.monotonic() - started
        reply += _rest_of_reply(s, reply)
    finally:
        s.close()
    assert reply.startswith(b"HTTP/1.1 408") and b"took more than" in reply, reply[:300]
    assert BODY_TIMEOUT * 6 - 1 <= waited <= BODY_TIMEOUT * 6 + 3


def _rest_of_reply(s: socket.socket, head: bytes) -> bytes:
    """What is left of a reply whose first bytes were `head` (headers and body may arrive apart)."""
    more = b""
    s.settimeout(5)
    while b"\r\n\r\n" in head + more:
        headers, _, body = (head + more).partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in headers.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        if length is None or len(body) >= length:
            break
        try:
            chunk = s.recv(4096)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        more += chunk
    return more


def test_a_pipelined_request_being_served_is_not_cut_at_the_cap(server):
    """A connection running a pipelined streaming request is being served: connections opened
    to reach the cap meanwhile do not evict it."""
    body = b'{"model": "mock-slow", "stream": true, "max_tokens": 60, "messages": [{"role": "user", "content": "' + b"w " * 60 + b'"}]}'
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    crowd: list[socket.socket] = []
    try:
        s.sendall(
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + server.key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        time.sleep(0.3)
        crowd = [_half_open(server.port) for _ in range(CAP * 2)]
        reply = b""
        s.settimeout(20)
        while b"[DONE]" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        assert b"[DONE]" in reply, reply[-300:]
    finally:
        s.close()
        for c in crowd:
            c.close()


def test_bodies_that_never_finish_cannot_lock_real_requests_out(server):
    """A key holder opening more than the cap of connections that trickle their bodies does not
    keep others out: a connection still sending its body may be closed to make room."""
    trickling: list[socket.socket] = []
    try:
        for _ in range(CAP + 16):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(
                b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + server.key.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            )
            trickling.append(s)
        ok = 0
        for _ in range(5):
            r = httpx.post(
                server.base_url + "/openai/v1/chat/completions",
                headers={"Authorization": f"Bearer {server.key}"},
                json={"model": "mock-echo", "messages": [{"role": "user", "content": "let me in"}]},
                timeout=10,
            )
            ok += r.status_code == 200
        assert ok == 5
    finally:
        for s in trickling:
            s.close()
