"""Upstreams that are outside the project, for the upstream-engine tests: an ASGI app of the
test's own run on a loopback port (to fail on purpose), and a port that drops every connection."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


@contextmanager
def serve_app(app, port: int) -> Iterator[None]:
    """Run an ASGI app on 127.0.0.1:`port` in a thread for the duration of the block."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the fake upstream did not start"
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def dropping_port() -> Iterator[tuple[int, list[int]]]:
    """A port that accepts connections and closes them at once; yields (port, one entry per
    connection accepted)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()
    accepted: list[int] = []

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(5)
        listener.close()
