"""The HTTP server: uvicorn, guarded against clients that hold connections without using them.

uvicorn has no deadline for a request's headers and no bound on their size: a connection that
sends nothing, or trickles one header line now and then, stays open forever, and a thousand of
them exhaust the file descriptors; a 20 MB header is held in memory. So here:
- each connection gets `header_timeout` seconds to send a request's headers, counted from the
  moment it opens or its previous response ended (bytes that start no request do not reset it);
- headers larger than `max_header_kb` are answered 431 and the connection closed;
- the number of open connections is capped: at the cap, the oldest connection that is not being
  served (still sending its headers or body, or idle between two requests) is closed to make
  room; when every one is being served, the new connection is closed instead. A request whose
  body has arrived is never cut.
The body's own deadlines (silence between chunks, and in all) are the routes' `BodyReader`.
What the server answers on its own (431, 408, and 400 for bytes that are not HTTP) is the error
body of the route the request named, as the app's errors are.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import resource
from collections import OrderedDict
from typing import Any

from longcat import jsonutil
from longcat.canonical import ApiError
from longcat.protocols.envelope import error_body

log = logging.getLogger("longcat.server")

# File descriptors kept free for everything else: the database, Redis, upstream connections, logs.
FD_MARGIN = 256
MAX_DEFAULT_CONNECTIONS = 10_000
MAX_HEADER_BYTES = 64 * 1024  # the default of the `max_header_kb` setting
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def error_reply(url: bytes, err: ApiError) -> bytes:
    """A whole HTTP response for `err`, in the error format of the path in `url` (as far as it
    arrived), closing the connection."""
    path = url.split(b"?", 1)[0].decode("latin-1")
    body = jsonutil.dumps(error_body(path, err))
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nx-content-type-options: nosniff\r\nconnection: close\r\n" % (
        err.status, _REASONS[err.status])
    return head + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


_HEAD_BYTES = 4096


class _HeadersTooLarge(Exception):
    """Raised in a parser callback to stop parsing headers over the limit."""


def headers_too_slow() -> ApiError:
    return ApiError("invalid_request", "request_timeout", "The request headers took too long.", status=408)


def headers_too_large(limit: int) -> ApiError:
    return ApiError(
        "invalid_request", "headers_too_large", f"The request headers are larger than {limit / 1024:g} KiB.", status=431
    )


def not_http() -> ApiError:
    return ApiError("invalid_request", "invalid_http", "The request is not valid HTTP/1.1.")


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one (as far as 65,536); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard if hard != resource.RLIM_INFINITY else 65536, 65536)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def keep_big_blocks_returnable() -> None:
    """Blocks of a megabyte and more (request bodies, their text) always come from mmap, so they
    go back to the system when freed. glibc otherwise raises that threshold after the first big
    free and keeps such blocks in its heap: four 28 MB bodies left the process 110 MB bigger."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc


_M_MMAP_THRESHOLD = -3


def connection_cap(setting: int, fd_limit: int) -> int:
    """The configured cap, or what the file descriptors allow less a margin."""
    if setting > 0:
        return setting
    return max(16, min(MAX_DEFAULT_CONNECTIONS, fd_limit - FD_MARGIN))


class ConnectionGuard:
    """Counts open connections and knows which of them may be closed to make room."""

    def __init__(self, cap: int, header_timeout: float, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.cap = cap
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.open = 0
        self._idle: OrderedDict[Any, None] = OrderedDict()  # not in a request, oldest first
        self.evicted = 0

    def opened(self, conn: Any) -> bool:
        """A new connection; False when it must be closed (the cap is reached, all are busy)."""
        self.open += 1
        if self.open > self.cap:
            victim = next(iter(self._idle), None)
            if victim is None:
                return False
            self._idle.pop(victim)
            self.evicted += 1
            victim.transport.close()
        self._idle[conn] = None
        return True

    def busy(self, conn: Any) -> None:
        self._idle.pop(conn, None)

    def idle(self, conn: Any) -> None:
        self._idle.pop(conn, None)
        self._idle[conn] = None

    def closed(self, conn: Any) -> None:
        self._idle.pop(conn, None)
        self.open -= 1


def guarded_protocol(guard: ConnectionGuard) -> type:
    """uvicorn's httptools protocol with the guard's header deadline and connection cap."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _counted = False
        _header_bytes = 0  # bytes received while the current headers are incomplete
        _parsed_bytes = 0  # the current request line's and headers' bytes, as the parser reads them
        _in_headers = True
        _head = b""  # the current request's first bytes: its path, for an error before the parser has it
        _refusal: ApiError | None = None  # why a parser callback stopped the parser

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._counted = True
            if not guard.opened(self):
                transport.close()
                return
            self._start_header_clock()

        def data_received(self, data: bytes) -> None:
            if self._in_headers and len(self._head) < _HEAD_BYTES:
                self._head += data[: _HEAD_BYTES - len(self._head)]
            super().data_received(data)
            if self._in_headers and not self.transport.is_closing():
                # Headers that never end: the parser holds them without a callback.
                self._header_bytes += len(data)
                if self._header_bytes > guard.max_header_bytes:
                    self._refuse(headers_too_large(guard.max_header_bytes))

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._count_parsed(len(url))

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self._count_parsed(len(name) + len(value) + 4)

        def _count_parsed(self, n: int) -> None:
            """Headers that arrive whole in one read are counted here, as the parser reads them;
            past the limit the parser is stopped (uvicorn then calls `send_400_response`)."""
            self._parsed_bytes += n
            if self._parsed_bytes > guard.max_header_bytes:
                self._refusal = headers_too_large(guard.max_header_bytes)
                raise _HeadersTooLarge

        def send_400_response(self, msg: str) -> None:
            # What the parser refused (uvicorn's own answer is plain text).
            err, self._refusal = self._refusal or not_http(), None
            self._refuse(err)

        def _refuse(self, err: ApiError) -> None:
            self._stop_header_clock()
            if not self.transport.is_closing():
                self.transport.write(error_reply(self._url(), err))
                self.transport.close()

        def _url(self) -> bytes:
            """The request's path, from the parser, else from the request line as it arrived."""
            url = getattr(self, "url", b"")
            if not url and self._head:
                words = self._head.split(b"\r\n", 1)[0].split(b" ")
                url = words[1] if len(words) > 1 else b""
            return url

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._parsed_bytes = 0
            self._in_headers = True
            if self._header_timer is None:
                self._start_header_clock()

        def on_headers_complete(self) -> None:
            self._stop_header_clock()
            self._in_headers = False
            self._header_bytes = 0
            self._head = b""
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            if self.cycle is not None and not self.cycle.response_complete:
                guard.busy(self)  # its body has arrived: it is being served, never cut

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.cycle is None or self.cycle.response_complete:
                # Between requests (none pipelined is running): uvicorn's keep-alive timeout
                # closes it, and the header clock bounds anything that starts no request.
                guard.idle(self)
                if self._header_timer is None and not self.transport.is_closing():
                    self._in_headers = True
                    self._start_header_clock()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_clock()
            if self._counted:
                self._counted = False
                guard.closed(self)
            super().connection_lost(exc)

        def _start_header_clock(self) -> None:
            self._header_timer = self.loop.call_later(guard.header_timeout, self._headers_too_slow)

        def _stop_header_clock(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            self._refuse(headers_too_slow())

    return GuardedProtocol


def build_server(app: Any, settings: Any, on_exit, *, on_started=None, ignore_sigint: bool = False) -> Any:
    """The uvicorn server for `app`, guarded, exiting with status 0 on SIGINT / SIGTERM.

    For a worker of `longcat serve --workers N` (supervisor.py): `on_started` is called once it
    accepts connections, and SIGINT is left to the parent (`ignore_sigint`). The connection guard
    is per process: `max_connections` bounds each worker's own connections."""
    import signal

    import uvicorn

    keep_big_blocks_returnable()
    guard = ConnectionGuard(
        connection_cap(settings.max_connections, raise_fd_limit()), settings.header_timeout, settings.max_header_kb * 1024
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(guard),
        log_config=None,
        access_log=False,
        # The gateway ends what outlives the grace period itself, with a proper error event;
        # uvicorn's own cut-off comes a little later, as a last resort.
        timeout_graceful_shutdown=settings.shutdown_grace + 3,
        lifespan="on",
        # X-Forwarded-* are believed only from the `trusted_proxies` setting (console/web.py),
        # not from whatever uvicorn trusts by default (127.0.0.1).
        proxy_headers=False,
    )

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGINT/SIGTERM after a graceful shutdown, so the process would die
        of the signal; a clean stop should exit with status 0."""

        def handle_exit(self, sig, frame) -> None:
            if ignore_sigint and sig == signal.SIGINT:
                return
            super().handle_exit(sig, frame)
            self._captured_signals.clear()
            on_exit()

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started and on_started is not None:
                on_started()

    server = Server(config)
    server.guard = guard  # type: ignore[attr-defined]
    log.debug("at most %d open connections; %g s for a request's headers", guard.cap, guard.header_timeout)
    return server
