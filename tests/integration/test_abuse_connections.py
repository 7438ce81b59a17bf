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
