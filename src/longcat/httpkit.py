"""Small HTTP pieces the console and the docs site share (neither may import the other)."""

from __future__ import annotations

import ipaddress

from starlette.staticfiles import StaticFiles


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
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response
