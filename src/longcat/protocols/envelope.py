"""Which error body a path gets: Anthropic's under /anthropic, OpenAI's everywhere else (the
OpenAI routes, the platform's and the console's /api/v1, and paths that match nothing). Shared by
the app and by the HTTP server, which answers some requests before they reach the app."""

from __future__ import annotations

from typing import Any

from longcat.canonical import ApiError
from longcat.protocols.anthropic_errors import anthropic_error_body
from longcat.protocols.openai_errors import openai_error_body


def error_body(path: str, err: ApiError) -> dict[str, Any]:
    if path.startswith("/anthropic"):
        return anthropic_error_body(err)
    return openai_error_body(err)
