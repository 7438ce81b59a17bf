"""A small HTTP/1.1 client for the upstream model servers: keep-alive connections, streamed
bodies, and nothing else on the way.

Why not httpx: in front of a fast upstream, httpx, httpcore and h11 were the largest part of the
gateway's own time per request (about 45 % of the event loop at 32 concurrent requests, measured
with py-spy): building a `Request`, the pool's bookkeeping, and h11's pure-Python parser on every
chunk of every stream. The upstreams are model servers the operator runs (vLLM, SGLang,
llama.cpp's server, Ollama) or an API endpoint: they speak HTTP/1.1 with JSON bodies and SSE
replies, which this client covers with an `asyncio.Protocol` per connection and llhttp's C parser
(`httptools`, which uvicorn already brings).

What it does not do, on purpose: HTTP/2, redirects, cookies, proxies (`HTTP(S)_PROXY` is not
read), compressed bodies (it asks for `identity`).

Timeouts: `connect_timeout` for the TCP (and TLS) handshake; `read_timeout` for each silence
while a response is awaited or streamed (one timer per request, re-armed lazily, not one per
chunk); `pool_timeout` for a free connection when all `max_connections` are busy.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterator
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

# A connection idle for longer than this is not reused (servers close theirs after ~5 s: uvicorn,
# which vLLM and SGLang run on, uses 5 s by default).
KEEPALIVE_EXPIRY = 4.0
# Reading pauses while this much body is buffered and unread (a slow client downstream).
HIGH_WATER = 1 << 20
LOW_WATER = 1 << 18


class HttpError(Exception):
    """The request failed on the way; the message never holds a URL's credentials or a header."""


class ConnectFailed(HttpError):
    """No connection could be made (refused, unreachable, DNS, TLS, connect timeout): the request was not sent."""


class Dropped(HttpError):
    """The connection closed, or the server sent something that is not HTTP, before the response was complete."""


class ReadTimeout(HttpError):
    """The server was silent for longer than the read timeout."""


class PoolTimeout(HttpError):
    """Every connection stayed busy for longer than the pool timeout."""


class Headers:
    """A response's headers, by lower-case name (repeated headers joined with ", ")."""

    __slots__ = ("_map",)

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        m: dict[str, str] = {}
        for name, value in pairs:
            k = name.decode("latin-1").lower()
            v = value.decode("latin-1")
            m[k] = f"{m[k]}, {v}" if k in m else v
        self._map = m

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._map.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self._map.items())

    def __repr__(self) -> str:
        return f"Headers({sorted(self._map)})"


@lru_cache(maxsize=256)
def _target(url: str) -> tuple[tuple[str, str, int], bytes, bytes]:
    """(pool key (scheme, host, port), Host header value, request target) of an absolute URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {scheme}://…")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    host_header = (f"[{host}]" if ":" in host else host) + ("" if port == default else f":{port}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, host, port), host_header.encode("idna"), target.encode("ascii", "strict")


class _Conn(asyncio.Protocol):
    """One keep-alive connection; serves one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int]) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reused = False  # served a request before this one
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.header_pairs: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.framed = False  # content-length or chunked: the end of the body is known without EOF
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.error: HttpError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.last_data = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timeout = 0.0
        self.got_bytes = False
        self.keep_alive = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        self.got_bytes = True
        if self.complete or self.timer is None:
            # Bytes with no request waiting for them: the connection cannot be trusted any more.
            self._fail(Dropped("the server sent data outside a response"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Dropped("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(Dropped(f"the server's response is not valid HTTP/1.1 ({exc})"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None and not self.complete:
            if self.headers_done and not self.framed:
                self.complete = True  # a body delimited by the end of the connection
            elif self.error is None:
                self.error = Dropped("the server closed the connection before the response was complete")
        self._wake()

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_pairs.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:
            # An interim response (100 Continue): the real one follows.
            self.header_pairs = []
            return
        self.headers_done = True
        for name, value in self.header_pairs:
            n = name.lower()
            if n == b"content-length" or (n == b"transfer-encoding" and b"chunked" in value.lower()):
                self.framed = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # the end of an interim response
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- the request's side

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, error: HttpError) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def _on_timer(self) -> None:
        if self.complete or self.closed or self.timer is None:
            return
        now = self.loop.time()
        if self.paused:
            # Reading is paused because our own reader is behind: not the server's silence.
            self.last_data = now
        due = self.last_data + self.timeout
        if now >= due:
            self.timer = None
            self._fail(ReadTimeout(f"the server was silent for {self.timeout:g} s"))
        else:
            self.timer = self.loop.call_at(due, self._on_timer)

    def begin(self, data: bytes, timeout: float) -> None:
        self._reset()
        self.timeout = timeout
        self.last_data = self.loop.time()
        self.timer = self.loop.call_at(self.last_data + timeout, self._on_timer)
        assert self.transport is not None
        self.transport.write(data)

    def end(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def wait(self) -> None:
        """Until something happens: data, the headers, the end, an error."""
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def take(self) -> bytes:
        if len(self.chunks) == 1:
            data = self.chunks.popleft()
        else:
            data = b"".join(self.chunks)
            self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """A response whose body is read as it arrives. Close it (or read it to its end) to give the
    connection back; closing it early closes the connection, which ends the request upstream."""

    __slots__ = ("status_code", "headers", "url", "_conn", "_pool", "_done")

    def __init__(self, conn: _Conn, pool: Pool, url: str) -> None:
        self.status_code = conn.status
        self.headers = Headers(conn.header_pairs)
        self.url = url
        self._conn = conn
        self._pool = pool
        self._done = False

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while not self._done:
            if conn.chunks:
                yield conn.take()
            elif conn.error is not None:
                error = conn.error
                await self.aclose()
                raise error
            elif conn.complete:
                await self.aclose()
                return
            else:
                await conn.wait()

    async def aread(self) -> bytes:
        parts = [piece async for piece in self.aiter_bytes()]
        return b"".join(parts)

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        conn = self._conn
        conn.end()
        self._pool.release(conn, conn.reusable() and not conn.chunks)


class Pool:
    """Keep-alive connections to any number of hosts, `max_connections` open in all."""

    def __init__(
        self,
        *,
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        pool_timeout: float = 10.0,
        max_connections: int = 64,
    ) -> None:
        self.static = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in (headers or {}).items())
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self.max_connections = max_connections
        self.total = 0  # open connections, idle ones included
        self.idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.is_closed = False

    @property
    def in_use(self) -> int:
        return self.total - sum(len(v) for v in self.idle.values())

    async def send(self, method: str, url: str, body: bytes, headers: dict[str, str] | None = None) -> Response:
        """Send a request; returns once the response's status and headers are in."""
        key, host, target = _target(url)
        head = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n", self.static]
        if headers:
            head.append(b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()))
        head.append(b"accept-encoding: identity\r\ncontent-length: %d\r\n\r\n" % len(body))
        data = b"".join(head) + body
        while True:
            conn = await self._acquire(key)
            try:
                conn.begin(data, self.read_timeout)
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait()
            except Dropped:
                conn.end()
                self.release(conn, False)
                if conn.reused and not conn.got_bytes:
                    # A kept-alive connection the server had closed as we wrote to it (its
                    # idle timeout): nothing reached a request handler, so a fresh one is used.
                    continue
                raise
            except BaseException:
                conn.end()
                self.release(conn, False)
                raise
            return Response(conn, self, url)

    async def _acquire(self, key: tuple[str, str, int]) -> _Conn:
        loop = asyncio.get_running_loop()
        while True:
            if self.is_closed:
                raise HttpError("the client is closed")
            idle = self.idle.get(key)
            now = loop.time()
            while idle:
                conn = idle.pop()  # the most recently used: the least likely to have been closed
                if not conn.closed and now - conn.idle_since < KEEPALIVE_EXPIRY:
                    conn.reused = True
                    return conn
                conn.close()
                self.total -= 1
            if self.total < self.max_connections:
                self.total += 1
                try:
                    return await self._connect(loop, key)
                except BaseException:
                    self.total -= 1
                    self._wake_one()
                    raise
            if self._close_oldest_idle():
                continue
            await self._wait_for_room(loop)

    async def _connect(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int]) -> _Conn:
        scheme, host, port = key
        tls = None
        if scheme == "https":
            tls = self.ssl_context or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop, key), host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise ConnectFailed(f"no connection within {self.connect_timeout:g} s") from None
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS handshake failed ({exc.reason or type(exc).__name__})") from None
        except OSError as exc:
            # "Connection refused", "Name or service not known"…: the reason, not the address.
            reason = os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0 else exc.strerror
            raise ConnectFailed((reason or type(exc).__name__).lower()) from None
        return conn

    def _close_oldest_idle(self) -> bool:
        oldest: _Conn | None = None
        for conns in self.idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is None:
            return False
        self.idle[oldest.key].remove(oldest)
        oldest.close()
        self.total -= 1
        return True

    async def _wait_for_room(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter = loop.create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.pool_timeout):
                await waiter
        except TimeoutError:
            raise PoolTimeout(f"all {self.max_connections} connections stayed busy for {self.pool_timeout:g} s") from None
        finally:
            if waiter in self.waiters:
                self.waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def release(self, conn: _Conn, reusable: bool) -> None:
        if reusable and not self.is_closed:
            conn.idle_since = conn.loop.time()
            self.idle.setdefault(conn.key, []).append(conn)
        else:
            conn.close()
            self.total -= 1
        self._wake_one()

    async def aclose(self) -> None:
        self.is_closed = True
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
                self.total -= 1
        self.idle.clear()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
