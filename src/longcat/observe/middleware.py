"""The ASGI middleware that gives every HTTP request an id, an access line and its metrics.

It sits outside everything else (even the handler of unexpected errors), so every answer counts
and carries `x-request-id`: refusals (401, 403, 413, 429), bad requests, 404s and 500s alike.
Which route served a request is told by `tag_routes`, which wraps each route's app to note its
path template, so the endpoint label never is a raw path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from longcat.httpkit import client_address
from longcat.observe.access import Access, current, new_request_id, request_id_from


class AccessMiddleware:
    def __init__(self, app: ASGIApp, trusted_proxies: str = "") -> None:
        self.app = app
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        acc = self._open(scope)
        header = (b"x-request-id", acc.request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                acc.status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = current.set(acc)
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if not acc.status:
                acc.status = 500
            raise
        finally:
            current.reset(token)
            acc.response_ended()

    def _open(self, scope: Scope) -> Access:
        incoming = forwarded = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value
            elif name == b"x-forwarded-for":
                forwarded = value
        internal = new_request_id()
        peer = scope.get("client")
        host = peer[0] if peer else ""
        if forwarded is not None and self.trusted_proxies:
            host = client_address(host, forwarded.decode("latin-1"), self.trusted_proxies)
        return Access(
            request_id=request_id_from(incoming) or internal,
            internal_id=internal,
            method=scope["method"],
            client=host,
            started=time.perf_counter(),
        )


def _tagged(app: ASGIApp, template: str) -> ASGIApp:
    async def tagged(scope: Scope, receive: Receive, send: Send) -> None:
        acc = current.get()
        if acc is not None:
            acc.endpoint = template
        await app(scope, receive, send)

    return tagged


def tag_routes(routes: Iterable[BaseRoute]) -> None:
    """Make each route note its path template in the current access record when it serves."""
    for route in routes:
        if isinstance(route, Route):
            route.app = _tagged(route.app, route.path)
        elif isinstance(route, Mount):
            route.app = _tagged(route.app, route.path + "/{path}")
