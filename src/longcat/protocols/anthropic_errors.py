"""Anthropic's error envelope, with the platform's codes added."""

from __future__ import annotations

from typing import Any

from longcat.canonical import ApiError

ANTHROPIC_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "rate_limit": "rate_limit_error",
    "server": "api_error",
    "upstream": "api_error",
    "overloaded": "overloaded_error",
}


def anthropic_error_body(err: ApiError) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message", "code"}}` plus extras (e.g. `retry_after`)."""
    # A body over the size limit has a type of its own in Anthropic's API.
    kind = "request_too_large" if err.status == 413 else ANTHROPIC_TYPES[err.kind]
    error: dict[str, Any] = {"type": kind, "message": err.message, "code": err.code}
    error.update(err.extra)
    return {"type": "error", "error": error}
