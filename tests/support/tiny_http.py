"""A loopback HTTP/1.1 server in the test's own event loop, answering each request from a
function: for unit tests of the upstream engines that want real sockets but no subprocess."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(value).encode())

    @classmethod
    def sse(cls, body: bytes) -> Reply:
        return cls(200, body, "text/event-stream")


_REASONS = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}


@asynccontextmanager
async def tiny_server(handler: Callable[[str, Any], Reply]) -> AsyncIterator[str]:
    """Serves `handler(path, json_body) -> Reply` on a free loopback port; yields its root URL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                path = head[0].split(" ")[1]
                headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in head[1:] if line)}
                raw = await reader.readexactly(int(headers.get("content-length", 0)))
                reply = handler(path, json.loads(raw) if raw else None)
                writer.write(
                    f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}\r\n"
                    f"content-type: {reply.content_type}\r\ncontent-length: {len(reply.body)}\r\n\r\n".encode()
                    + reply.body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
