"""OpenAI Responses API routes (being built)."""

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
