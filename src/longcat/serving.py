"""The HTTP server: uvicorn, guarded against clients that hold connections without using them.

uvicorn has no deadline for a request's headers: a connection that sends nothing, or trickles one
header line now and then, stays open forever, and a thousand of them exhaust the file
descriptors. So each connection here gets `header_timeout` seconds to send a request's headers
(from the moment it opens, or from the first byte of each later request), and the number of open
connections is capped: at the cap, the oldest connection that is not in the middle of a request
(still sending headers, or idle between two requests) is closed to make room; when every one is
busy, the new connection is closed instead. A request that is being served is never cut.
The body's own deadline (silence between chunks) is the routes' `BodyReader`.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from typing import Any

log = logging.getLogger("longcat.server")

# File descriptors kept free for everything else: the database, Redis, upstream connections, logs.
FD_MARGIN = 256
MAX_DEFAULT_CONNECTIONS = 10_000

_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\nconnection: close\r\n\r\nThe request headers took too long"
)


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


def connection_cap(setting: int, fd_limit: int) -> int:
    """The configured cap, or what the file descriptors allow less a margin."""
    if setting > 0:
        return setting
    return max(16, min(MAX_DEFAULT_CONNECTIONS, fd_limit - FD_MARGIN))


class ConnectionGuard:
    """Counts open connections and knows which of them may be closed to make room."""

    def __init__(self, cap: int, header_timeout: float) -> None:
        self.cap = cap
        self.header_timeout = header_timeout
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

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._counted = True
            if not guard.opened(self):
                transport.close()
                return
            self._start_header_clock()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._start_header_clock()

        def on_headers_complete(self) -> None:
            self._stop_header_clock()
            guard.busy(self)
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.pipeline:
                guard.idle(self)  # between requests: uvicorn's keep-alive timeout closes it

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
            if not self.transport.is_closing():
                self.transport.write(_TIMEOUT_408)
                self.transport.close()

    return GuardedProtocol


def build_server(app: Any, settings: Any, on_exit) -> Any:
    """The uvicorn server for `app`, guarded, exiting with status 0 on SIGINT / SIGTERM."""
    import uvicorn

    guard = ConnectionGuard(connection_cap(settings.max_connections, raise_fd_limit()), settings.header_timeout)
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
            super().handle_exit(sig, frame)
            self._captured_signals.clear()
            on_exit()

    server = Server(config)
    server.guard = guard  # type: ignore[attr-defined]
    log.debug("at most %d open connections; %g s for a request's headers", guard.cap, guard.header_timeout)
    return server
