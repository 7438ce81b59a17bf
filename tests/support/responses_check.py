"""Strict checks of what the Responses API emits: every event and every response object is
validated against the installed `openai` SDK's own types (strict mode, and no field the type
does not know) and against the Open Responses specification (tests/support/open_responses.py),
and a stream's events must fit together: one sequence, consistent item ids and indexes, deltas
that add up to their `.done` values, and exactly one terminal event."""

from __future__ import annotations

import copy
import json
from typing import Any

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from tests.support import open_responses
from tests.support.wire import parse_sse

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
# `ResponseError.code` in the SDK lists only OpenAI's own codes; the platform reports its own
# (Codex acts on `context_length_exceeded`, `insufficient_quota`, …). These codes are checked
# here, and the rest of the failed response is validated with a code the type knows.
PLATFORM_CODES = {
    "context_length_exceeded",
    "insufficient_quota",
    "rate_limit_exceeded",
    "invalid_parameter",
    "internal_error",
    "upstream_error",
    "overloaded",
}

# Fields Open Responses requires of the response object that the SDK's `Response` type does not
# define (the SDK keeps them as extras); open_responses checks their types.
SPEC_ONLY_FIELDS = frozenset({"presence_penalty", "frequency_penalty", "store"})
# What the platform sends in the SDK's terms, outside the specification, and the specification
# checks leave aside: reasoning text events under the SDK's (and Codex's) names, which the
# specification calls `response.reasoning.delta` / `.done`, and the echo of `namespace` tools,
# which only clients that send them (Codex) get back.
SDK_ONLY_EVENTS = frozenset({"response.reasoning_text.delta", "response.reasoning_text.done"})
SDK_ONLY_TOOLS = frozenset({"namespace"})

_EVENT = TypeAdapter(ResponseStreamEvent)
_RESPONSE = TypeAdapter(Response)


def _no_extras(value: Any, path: str = "$") -> None:
    """The SDK's models accept unknown fields; the platform must not send any but those the
    specification requires."""
    if isinstance(value, BaseModel):
        extra = set(value.__pydantic_extra__ or {}) - (SPEC_ONLY_FIELDS if isinstance(value, Response) else set())
        assert not extra, f"{path}: fields the SDK type {type(value).__name__} does not define: {sorted(extra)}"
        for name in type(value).model_fields:
            _no_extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_extras(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_extras(v, f"{path}.{k}")


def _sdk_codes(obj: dict[str, Any]) -> dict[str, Any]:
    error = obj.get("error")
    if isinstance(error, dict) and error.get("code") in PLATFORM_CODES:
        obj = copy.deepcopy(obj)
        obj["error"]["code"] = "server_error"
    return obj


def _spec_view(obj: dict[str, Any]) -> dict[str, Any]:
    """A response object (or an event carrying one) without the SDK-only tools."""
    if isinstance(obj.get("response"), dict):
        return dict(obj, response=_spec_view(obj["response"]))
    tools = obj.get("tools")
    if isinstance(tools, list):
        obj = dict(obj, tools=[t for t in tools if not (isinstance(t, dict) and t.get("type") in SDK_ONLY_TOOLS)])
    return obj


def check_response(body: dict[str, Any]) -> Response:
    open_responses.check_response(_spec_view(body))
    model = _RESPONSE.validate_python(_sdk_codes(body), strict=True)
    _no_extras(model)
    assert body["object"] == "response" and body["id"].startswith("resp_")
    if body["status"] in ("completed", "incomplete", "failed"):
        usage = body["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    return model


def check_event(event: dict[str, Any]) -> Any:
    if event.get("type") not in SDK_ONLY_EVENTS:
        open_responses.check_event(_spec_view(event))
    if event.get("type") in TERMINAL or event.get("type") in ("response.created", "response.in_progress"):
        check_response(event["response"])
        event = dict(event, response=_sdk_codes(event["response"]))
    model = _EVENT.validate_python(event, strict=True)
    _no_extras(model)
    return model


def stream_events(text: str) -> list[dict[str, Any]]:
    """The events of an SSE body; each frame's `event:` name must equal its `type`."""
    events = []
    for name, data in parse_sse(text):
        event = json.loads(data)
        assert name == event["type"], f"SSE event name {name!r} differs from type {event['type']!r}"
        events.append(event)
    return events


def check_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Validate a whole stream; returns the final response object."""
    assert events, "empty stream"
    for event in events:
        check_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] in TERMINAL, events[-1]["type"]
    assert sum(e["type"] in TERMINAL for e in events) == 1
    response_id = events[0]["response"]["id"]
    assert all(e["response"]["id"] == response_id for e in events if "response" in e)

    added: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    text: dict[tuple[str, int], str] = {}
    args: dict[str, str] = {}
    for e in events[2:-1]:
        kind = e["type"]
        if kind == "response.output_item.added":
            assert e["output_index"] == len(added), "output_index must count up from 0"
            assert e["item"]["id"] not in {i["id"] for i in added.values()}
            added[e["output_index"]] = e["item"]
            continue
        index = e["output_index"]
        assert index in added and index not in done, f"{kind} outside its item's lifetime"
        item_id = added[index]["id"]
        if kind == "response.output_item.done":
            assert e["item"]["id"] == item_id and e["item"]["type"] == added[index]["type"]
            done[index] = e["item"]
            continue
        assert e["item_id"] == item_id, f"{kind}: item_id {e['item_id']} is not the item at output_index {index}"
        if kind in ("response.output_text.delta", "response.reasoning_text.delta"):
            key = (item_id, e["content_index"])
            text[key] = text.get(key, "") + e["delta"]
        elif kind in ("response.output_text.done", "response.reasoning_text.done"):
            assert e["text"] == text.get((item_id, e["content_index"]), "")
        elif kind == "response.function_call_arguments.delta":
            args[item_id] = args.get(item_id, "") + e["delta"]
        elif kind == "response.function_call_arguments.done":
            assert e["arguments"] == (args.get(item_id) or "{}")
    assert sorted(done) == sorted(added), "every output item must be done before the stream ends"

    final = events[-1]["response"]
    assert final["output"] == [done[i] for i in sorted(done)]
    for item in final["output"]:
        if item["type"] == "message":
            assert item["content"][0]["text"] == text.get((item["id"], 0), "")
    status = {"response.completed": "completed", "response.incomplete": "incomplete", "response.failed": "failed"}
    assert final["status"] == status[events[-1]["type"]]
    assert final["usage"] is not None
    return final


def output_text(response: dict[str, Any]) -> str:
    return "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )
