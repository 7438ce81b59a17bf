"""Reading what the server sends: SSE parsing and strict validation against the SDKs' own types."""

from __future__ import annotations

import json
from typing import Any

import httpx
from pydantic import TypeAdapter


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) for every SSE message in a complete stream body."""
    messages = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        messages.append((event, "\n".join(data)))
    return messages


def strict(model: Any, obj: dict[str, Any]) -> Any:
    """Validate `obj` against an SDK type in strict mode (no type coercion)."""
    return TypeAdapter(model).validate_python(obj, strict=True)


def post_stream(base_url: str, path: str, key: str, body: dict[str, Any], timeout: float = 60) -> tuple[int, str]:
    with httpx.Client(timeout=timeout) as client:
        r = client.post(base_url + path, json=body, headers={"Authorization": f"Bearer {key}"})
        return r.status_code, r.text


def chat_chunks(text: str) -> list[dict[str, Any]]:
    """The JSON chunks of a Chat Completions stream; asserts it ends with [DONE]."""
    messages = parse_sse(text)
    assert messages and messages[-1][1] == "[DONE]", f"stream does not end with [DONE]: {text[-300:]}"
    return [json.loads(data) for _, data in messages[:-1]]
