"""Tool calls written as text by models that have no native tool-call channel.

The embedded engine prompts the model to answer a call as

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

This module renders that instruction and parses such output while it streams: plain text is
released as soon as it cannot be the start of a `<tool_call>` tag, and each complete call becomes
one (name, arguments-JSON) pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from longcat.canonical import ToolSpec

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


def tools_prompt(tools: list[ToolSpec]) -> str:
    """The system-prompt section that tells the model which functions exist and how to call them."""
    specs = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}, ensure_ascii=False)
        for t in tools
    )
    return (
        "You can call functions to help answer. The functions you may call are:\n"
        f"<tools>\n{specs}\n</tools>\n"
        "To call a function, answer with exactly this and nothing else:\n"
        f'{OPEN}\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n{CLOSE}'
    )


def render_call(name: str, arguments: str) -> str:
    """How an earlier call is shown to the model when the conversation is replayed."""
    try:
        args: Any = json.loads(arguments) if arguments else {}
        call = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, nested absurdly deep, or a 5,000-digit number
        call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN}\n{call}\n{CLOSE}"


@dataclass(slots=True)
class ParsedCall:
    name: str
    arguments: str


def parse_call_body(body: str) -> list[ParsedCall] | None:
    """The calls in the text between the tags, or None when it is not a well-formed call."""
    try:
        data = json.loads(body.strip())
    except (ValueError, RecursionError):
        return None
    items = data if isinstance(data, list) else [data]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            return None
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except (ValueError, RecursionError):
                return None
        if not isinstance(args, dict):
            return None
        try:
            calls.append(ParsedCall(item["name"], json.dumps(args, ensure_ascii=False)))
        except (ValueError, RecursionError):
            return None
    return calls or None


class ToolCallTextParser:
    """Feed text as it streams; get back ("text", str) and ("call", ParsedCall) items in order."""

    __slots__ = ("_buf", "_in_call")

    def __init__(self) -> None:
        self._buf = ""
        self._in_call = False

    def feed(self, text: str) -> list[tuple[str, Any]]:
        self._buf += text
        out: list[tuple[str, Any]] = []
        while True:
            if not self._in_call:
                at = self._buf.find(OPEN)
                if at == -1:
                    keep = _partial_suffix(self._buf, OPEN)
                    ready = self._buf[: len(self._buf) - keep]
                    if ready:
                        out.append(("text", ready))
                    self._buf = self._buf[len(self._buf) - keep :]
                    return out
                if at:
                    out.append(("text", self._buf[:at]))
                self._buf = self._buf[at + len(OPEN) :]
                self._in_call = True
            else:
                end = self._buf.find(CLOSE)
                if end == -1:
                    return out
                body, self._buf = self._buf[:end], self._buf[end + len(CLOSE) :]
                self._in_call = False
                out.extend(_call_items(body))

    def finish(self) -> list[tuple[str, Any]]:
        """End of output: an unterminated call is still used if its JSON is complete."""
        rest, self._buf = self._buf, ""
        if self._in_call:
            self._in_call = False
            return _call_items(rest)
        return [("text", rest)] if rest else []


def _call_items(body: str) -> list[tuple[str, Any]]:
    calls = parse_call_body(body)
    if calls is None:
        return [("text", f"{OPEN}{body}{CLOSE}")]
    return [("call", c) for c in calls]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
