"""Strict checks of what the platform emits on the Anthropic side.

Every event is validated against the installed `anthropic` SDK's own types, with no unknown
fields anywhere (the SDK's models accept extras silently, so we look for them ourselves), and the
stream as a whole is checked for the order Anthropic clients rely on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from pydantic import BaseModel, TypeAdapter

_EVENT = TypeAdapter(RawMessageStreamEvent)
_MESSAGE = TypeAdapter(Message)
_ERROR = TypeAdapter(ErrorResponse)

# The platform's additions to Anthropic's error object (REFERENCE.md: "with the same codes added").
ERROR_EXTRAS = {"code", "retry_after"}


def no_extras(model: Any, where: str = "") -> None:
    """Fail if any pydantic model in the tree kept fields its type does not declare."""
    if isinstance(model, BaseModel):
        extra = model.model_extra or {}
        assert not extra, f"unknown fields at {where or type(model).__name__}: {sorted(extra)}"
        for name in type(model).model_fields:
            no_extras(getattr(model, name), f"{where}.{name}")
    elif isinstance(model, (list, tuple)):
        for i, item in enumerate(model):
            no_extras(item, f"{where}[{i}]")
    elif isinstance(model, dict):
        for key, item in model.items():
            no_extras(item, f"{where}.{key}")


def strict_event(data: dict[str, Any]) -> Any:
    """One stream event, validated as the SDK types it (ping and error included)."""
    if data.get("type") == "ping":
        assert data == {"type": "ping"}, data
        return data
    if data.get("type") == "error":
        parsed = _ERROR.validate_python(data, strict=True)
        extra = set(parsed.error.model_extra or {})
        assert extra <= ERROR_EXTRAS, extra
        assert "code" in extra, "the platform's error code is missing"
        return parsed
    parsed = _EVENT.validate_python(data, strict=True)
    no_extras(parsed, data["type"])
    return parsed


def strict_message(body: dict[str, Any]) -> Message:
    parsed = _MESSAGE.validate_python(body, strict=True)
    no_extras(parsed, "message")
    return parsed


def parse_sse(raw: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, data) for each server-sent event in a whole response body."""
    out = []
    for chunk in raw.replace("\r\n", "\n").split("\n\n"):
        if not chunk.strip():
            continue
        name = None
        data = []
        for line in chunk.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        out.append((name, json.loads("\n".join(data))))
    return out


@dataclass
class StreamSummary:
    """What a checked stream said, accumulated."""

    blocks: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage_start: dict[str, Any] = field(default_factory=dict)
    usage_end: dict[str, Any] = field(default_factory=dict)
    pings: int = 0
    error: dict[str, Any] | None = None
    names: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(b.get("text", "") for b in self.blocks if b["type"] == "text")

    @property
    def tool_uses(self) -> list[dict[str, Any]]:
        return [b for b in self.blocks if b["type"] == "tool_use"]


def check_stream(events: list[tuple[str | None, dict[str, Any]]]) -> StreamSummary:
    """Validate every event strictly and the stream's order; returns the accumulated message.

    Order: `message_start` first; each block started (indexes 0, 1, 2, …) before its deltas, with
    deltas of its own kind, and stopped exactly once before the next starts; thinking blocks carry
    a signature before they stop; then exactly one `message_delta` and `message_stop` last. An
    `error` event may end the stream instead. Pings may come anywhere after `message_start`.
    """
    out = StreamSummary()
    assert events, "empty stream"
    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    state = "start"  # start -> message -> delta -> stopped | errored
    open_index: int | None = None
    for name, data in events:
        parsed = strict_event(data)
        kind = data["type"]
        if kind not in ("ping", "error"):
            # The SDK's own accumulator, which parses tool arguments as they stream.
            snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=json_bufs)
        assert name == kind, f"SSE event name {name!r} differs from data type {kind!r}"
        out.names.append(kind)
        assert state not in ("stopped", "errored"), f"{kind} after the end of the stream"
        if kind == "ping":
            assert state != "start", "ping before message_start"
            out.pings += 1
            continue
        if kind == "error":
            out.error = data["error"]
            state = "errored"
            continue
        if state == "start":
            assert kind == "message_start", f"first event is {kind}"
            message = data["message"]
            assert message["content"] == [] and message["stop_reason"] is None
            assert isinstance(message["usage"]["input_tokens"], int)
            assert isinstance(message["usage"]["output_tokens"], int)
            out.usage_start = message["usage"]
            state = "message"
            continue
        assert state == "message" or kind == "message_stop", f"{kind} after message_delta"
        if kind == "content_block_start":
            assert open_index is None, "a block started before the previous one stopped"
            assert data["index"] == len(out.blocks), f"index {data['index']}, expected {len(out.blocks)}"
            block = dict(data["content_block"])
            if block["type"] == "tool_use":
                assert block["input"] == {}
                block["partial_json"] = ""
            out.blocks.append(block)
            open_index = data["index"]
        elif kind == "content_block_delta":
            assert data["index"] == open_index, f"delta for block {data['index']}, open is {open_index}"
            block, delta = out.blocks[open_index], data["delta"]
            allowed = {
                "text": {"text_delta"},
                "thinking": {"thinking_delta", "signature_delta"},
                "tool_use": {"input_json_delta"},
            }[block["type"]]
            assert delta["type"] in allowed, f"{delta['type']} in a {block['type']} block"
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                assert not block["signature"], "thinking after the signature"
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                block["partial_json"] += delta["partial_json"]
        elif kind == "content_block_stop":
            assert data["index"] == open_index, f"stop for block {data['index']}, open is {open_index}"
            block = out.blocks[open_index]
            if block["type"] == "thinking":
                assert block["signature"], "a thinking block stopped without a signature"
            if block["type"] == "tool_use":
                block["input"] = json.loads(block.pop("partial_json") or "{}")
                assert isinstance(block["input"], dict)
            open_index = None
        elif kind == "message_delta":
            assert open_index is None, "message_delta while a block is open"
            assert data["delta"]["stop_reason"] is not None
            assert isinstance(data["usage"]["output_tokens"], int)
            assert isinstance(data["usage"].get("input_tokens"), int)
            out.stop_reason = data["delta"]["stop_reason"]
            out.stop_sequence = data["delta"]["stop_sequence"]
            out.usage_end = data["usage"]
            state = "delta"
        elif kind == "message_stop":
            assert state == "delta", "message_stop without a message_delta"
            state = "stopped"
        else:  # pragma: no cover - strict_event already rejects unknown types
            raise AssertionError(kind)
    assert state in ("stopped", "errored"), f"the stream ended in state {state!r}"
    if state == "stopped":
        sdk = [(b.type, getattr(b, "text", None) or getattr(b, "input", None) or getattr(b, "thinking", None))
               for b in snapshot.content]
        ours = [(b["type"], b.get("text") or b.get("input") or b.get("thinking")) for b in out.blocks]
        assert sdk == ours, (sdk, ours)
    return out
