"""`/api/v1/openapi.json`: an OpenAPI 3.1 document built from the route table (apispec.Api)."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from longcat.console.apispec import Api, obj

ERROR = obj(error=obj(message={"type": "string"}, type={"type": "string"}, code={"type": "string"}, param={"type": ["string", "null"]}))

PLATFORM = [
    Api("GET", "/api/v1/usage", None, "The day's quota, totals, per-model usage, recent requests and quota ledger", "usage",
        params=(("day", "query", "string", "a Beijing day, YYYY-MM-DD (default today)"), ("limit", "query", "integer", "recent requests, 1-500"))),
    Api("GET", "/api/v1/usage/daily", None, "Usage per day and model, for charts", "usage",
        params=(("days", "query", "integer", "how many days back, 1-366 (default 30)"),)),
]


def document(endpoints: list[Api], base: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for e in [*endpoints, *PLATFORM]:
        op: dict[str, Any] = {
            "summary": e.summary,
            "operationId": re.sub(r"[^a-zA-Z0-9]+", "_", f"{e.method.lower()}_{e.path.removeprefix('/api/v1/')}").strip("_"),
            "tags": [e.tag],
            "parameters": [
                {"name": n, "in": where, "required": where == "path", "schema": {"type": t}, "description": d} for n, where, t, d in e.params
            ],
            "responses": {
                str(e.status): {"description": "OK", "content": {e.produces: {"schema": e.response or {"type": "string" if e.produces != "application/json" else "object"}}}},
                "400": {"description": "invalid input", "content": {"application/json": {"schema": ERROR}}},
                "401": {"description": "not signed in / no valid API key", "content": {"application/json": {"schema": ERROR}}},
                "403": {"description": "not allowed, or the CSRF token is missing", "content": {"application/json": {"schema": ERROR}}},
                "404": {"description": "no such object in this account", "content": {"application/json": {"schema": ERROR}}},
                "429": {"description": "too many requests or attempts", "content": {"application/json": {"schema": ERROR}}},
            },
        }
        if e.auth == "none":
            op["security"] = [{}, {"session": []}]
        elif e.mutation:
            op["security"] = [{"apiKey": []}, {"session": [], "csrf": []}]
        else:
            op["security"] = [{"apiKey": []}, {"session": []}]
        if e.auth == "admin":
            op["description"] = "Administrators only."
        if e.body:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": e.body}}}
        paths.setdefault(e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LongCat API platform: console API",
            "version": "1",
            "description": "Every action of the web console. Authenticate with an API key (`Authorization: Bearer ak_…`) or the "
            "console's session cookie; with the cookie, mutations also need its CSRF token in `X-CSRF-Token` "
            "(returned by sign-in). Errors use the OpenAI error body.",
        },
        "servers": [{"url": base}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "an API key, ak_…"},
                "session": {"type": "apiKey", "in": "cookie", "name": "lc_session"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
            },
            "schemas": {"Error": ERROR},
        },
    }


def handler(endpoints: list[Api]):
    async def openapi(request: Request) -> Response:
        from longcat.console.web import base_url

        return JSONResponse(document(endpoints, base_url(request)))

    return openapi
