"""Small HTTP pieces the console and the docs site share (neither may import the other)."""

from __future__ import annotations

import ipaddress
from typing import Any

from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No inline script or style anywhere (templates load static files only), no framing, no plugins.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Every page, static file and console JSON answer. `same-origin`: another site never learns a
# console URL (which may carry a verification or reset token); nothing here reads the Referer.
PAGE_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
# The wire API answers with its own `X-Content-Type-Options` (api/asgi.py) and nothing more: it is
# the hot path, and a JSON or SSE body is no page to frame or script.
API_PREFIXES = ("/openai", "/anthropic")
HSTS = (b"strict-transport-security", b"max-age=31536000")


def trusted_peer(peer: str, trusted_proxies: str) -> bool:
    """Whether `peer` (the socket's address) is one of `trusted_proxies` (comma-separated
    addresses or networks): only then do its X-Forwarded-* headers count."""
    allowed = [p.strip() for p in trusted_proxies.split(",") if p.strip()]
    if not peer or not allowed:
        return False
    try:
        addr = ipaddress.ip_address(peer)
        return any(addr in ipaddress.ip_network(p, strict=False) for p in allowed)
    except ValueError:
        return False


class ImmutableStaticFiles(StaticFiles):
    """Static files whose URLs carry a content hash (?v=…), so they may be cached for a year."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


class SecurityHeaders:
    """Pure ASGI middleware adding the security headers to every response but the wire API's.

    Pages, static files and the console's JSON get the full set (a header the route set itself
    is kept) and, when the deployment's `public_url` is https, HSTS. The wire API (`/openai…`,
    `/anthropic…`) is passed straight through: its responses carry `X-Content-Type-Options`
    themselves, and its streams pay for no wrapper around every chunk."""

    def __init__(self, app: ASGIApp, *, https: bool = False) -> None:
        self.app = app
        self.headers: tuple[tuple[bytes, bytes], ...] = PAGE_HEADERS + ((HSTS,) if https else ())
        self.names = frozenset(name for name, _ in self.headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(API_PREFIXES):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: Any = message.get("headers") or []
                present = {bytes(name).lower() for name, _ in headers} & self.names
                message = {**message, "headers": [*headers, *(h for h in self.headers if h[0] not in present)]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def client_address(peer: str, forwarded_for: str, trusted_proxies: str) -> str:
    """The client's address: the socket's peer, or the last X-Forwarded-For entry when that peer
    is a trusted proxy (the one address the proxy itself vouches for)."""
    if forwarded_for and trusted_peer(peer, trusted_proxies):
        forwarded = [p.strip() for p in forwarded_for.split(",") if p.strip()]
        if forwarded:
            return forwarded[-1][:64]
    return peer[:64]
