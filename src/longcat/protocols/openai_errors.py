"""The OpenAI error body, shared by Chat Completions, Responses and the model routes."""

from __future__ import annotations

from typing import Any

from longcat.canonical import ApiError

OPENAI_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "invalid_request_error",
    "rate_limit": "rate_limit_error",
    "server": "server_error",
    "upstream": "server_error",
    "overloaded": "server_error",
}


def openai_error_body(err: ApiError) -> dict[str, Any]:
    """`{"error": {"message", "type", "code", "param"}}` plus any extra fields (e.g. `retry_after`).

    The 429 body keeps the seed's exact key order: code, message, type, retry_after.
    """
    if err.kind == "rate_limit":
        body: dict[str, Any] = {"code": err.code, "message": err.message, "type": OPENAI_TYPES[err.kind]}
    else:
        body = {"message": err.message, "type": OPENAI_TYPES[err.kind], "param": err.param, "code": err.code}
    body.update(err.extra)
    return {"error": body}
