"""The route table of the `/api/v1/` endpoints: each entry is both a route and its OpenAPI entry,
so the document cannot drift from what is served."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, frozen=True)
class Api:
    method: str
    path: str
    handler: Callable | None  # None: served elsewhere (api/platform.py), listed here for the document
    summary: str
    tag: str
    auth: str = "user"  # none | user | admin
    mutation: bool = False
    params: tuple[tuple[str, str, str, str], ...] = ()  # (name, in, type, description)
    body: dict[str, Any] | None = None  # JSON schema of the request body
    response: dict[str, Any] | None = None  # JSON schema of the 2xx body
    status: int = 200
    produces: str = "application/json"
    extra: dict[str, Any] = field(default_factory=dict)


def obj(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


S = {"type": "string"}
I = {"type": "integer"}  # noqa: E741
B = {"type": "boolean"}
N = {"type": "number"}
NI = {"type": ["integer", "null"]}
NS = {"type": ["string", "null"]}


def arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}
