"""All console routes: the pages, their `/api/v1/` JSON twins, the OpenAPI document, the static files."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route

from longcat.console import accounts, admin, feedback, keys, openapi, playground, usage
from longcat.console.apispec import Api
from longcat.httpkit import ImmutableStaticFiles

MODULES = (accounts, keys, usage, feedback, playground, admin)


def endpoints() -> list[Api]:
    return [e for m in MODULES for e in m.ENDPOINTS]


def routes() -> list[BaseRoute]:
    table = endpoints()
    out: list[BaseRoute] = [Route(e.path, e.handler, methods=[e.method]) for e in table if e.handler is not None]
    out.append(Route("/api/v1/openapi.json", openapi.handler(table), methods=["GET"]))
    for m in MODULES:
        out += m.PAGES
    out.append(Mount("/static", app=ImmutableStaticFiles(directory=Path(__file__).parent / "static"), name="static"))
    return out
