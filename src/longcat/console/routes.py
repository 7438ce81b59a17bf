"""All console routes: the pages, their `/api/v1/` JSON twins, the OpenAPI document, the static files."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from longcat.console import accounts, admin, feedback, keys, openapi, playground, usage
from longcat.console.apispec import Api

MODULES = (accounts, keys, usage, feedback, playground, admin)


def endpoints() -> list[Api]:
    return [e for m in MODULES for e in m.ENDPOINTS]


class _Static(StaticFiles):
    """Static files: their URLs carry a content hash (?v=…), so they may be cached for a year."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def routes() -> list[BaseRoute]:
    table = endpoints()
    out: list[BaseRoute] = [Route(e.path, e.handler, methods=[e.method]) for e in table if e.handler is not None]
    out.append(Route("/api/v1/openapi.json", openapi.handler(table), methods=["GET"]))
    for m in MODULES:
        out += m.PAGES
    out.append(Mount("/static", app=_Static(directory=Path(__file__).parent / "static"), name="static"))
    return out
