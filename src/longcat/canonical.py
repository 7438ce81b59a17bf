"""The platform's own model of a chat request and of the events a reply is made of.

Every wire format (OpenAI Chat Completions, OpenAI Responses, Anthropic Messages) is a
translation to and from these types, and every engine consumes a `ChatRequest` and yields
`Event`s. No format is translated directly into another: that is what lets any engine serve
any format.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

# --------------------------------------------------------------------------- content blocks


@dataclass(slots=True)
class TextBlock:
    """Plain text."""

    text: str
    type: Literal["text"] = "text"


@dataclass(slots=True)
class ImageBlock:
    """An image, either inline (base64 `data`) or by `url`."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    type: Literal["image"] = "image"


@dataclass(slots=True)
class ToolUseBlock:
    """A tool call the assistant made. `arguments` is the raw JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str
    type: Literal["tool_use"] = "tool_use"


@dataclass(slots=True)
class ToolResultBlock:
    """What a tool returned, sent back by the client for the call `tool_use_id`."""

    tool_use_id: str
    content: list[TextBlock | ImageBlock]
    is_error: bool = False
    type: Literal["tool_result"] = "tool_result"

    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))


@dataclass(slots=True)
class ThinkingBlock:
    """Reasoning text, replayed by clients. `verified`: the platform knows a model wrote it for
    this account (a valid signature or seal, or it remembers handing it out); the gateway gives
    engines verified reasoning only. `signature` is the Anthropic format's proof."""

    text: str
    signature: str | None = None
    redacted: bool = False
    verified: bool = False
    type: Literal["thinking"] = "thinking"


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock
Role = Literal["system", "user", "assistant"]


@dataclass(slots=True)
class Message:
    """One turn. Tool results travel as `ToolResultBlock`s inside a user message.

    `system` messages may appear mid-conversation (Claude Code sends them there).
    """

    role: Role
    content: list[Block]

    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))


# --------------------------------------------------------------------------- request


@dataclass(slots=True)
class ToolSpec:
    """A function the model may call; `parameters` is a JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(slots=True)
class ToolChoice:
    """`auto` (model decides), `none`, `required` (any tool) or `tool` (the one named)."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None
    parallel: bool = True


@dataclass(slots=True)
class ResponseFormat:
    """Free text, any JSON object, or JSON matching `schema`."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None


@dataclass(slots=True)
class ChatRequest:
    """A format-neutral chat request. `max_tokens=None` means "the platform default"."""

    model: str
    messages: list[Message]
    system: list[TextBlock] = field(default_factory=list)
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    thinking: bool | None = None
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    stream: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    def system_text(self) -> str:
        return "\n\n".join(b.text for b in self.system)

    def text_chars(self) -> int:
        """Characters of text the prompt carries (system, messages, tool calls and results, tool
        definitions). Divided by an engine's longest token, a lower bound on the prompt's tokens
        that costs no tokenization: how an absurdly long prompt is refused before any work is
        spent on it."""
        total = sum(len(b.text) for b in self.system)
        for tool in self.tools:
            total += len(tool.name) + len(tool.description) + _json_chars(tool.parameters)
        for m in self.messages:
            for b in m.content:
                if isinstance(b, TextBlock):
                    total += len(b.text)
                elif isinstance(b, ToolUseBlock):
                    total += len(b.name) + len(b.arguments)
                elif isinstance(b, ToolResultBlock):
                    total += sum(len(c.text) for c in b.content if isinstance(c, TextBlock))
        return total

    def has_images(self) -> bool:
        for m in self.messages:
            for b in m.content:
                if isinstance(b, ImageBlock):
                    return True
                if isinstance(b, ToolResultBlock) and any(isinstance(c, ImageBlock) for c in b.content):
                    return True
        return False


@dataclass(slots=True)
class Sampling:
    """The sampling values an engine really generates a request's reply with (some formats report
    them). `None` where the engine cannot know: an upstream server applies its own default."""

    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


def _json_chars(value: Any) -> int:
    """Characters of the strings in a JSON value (what a tool's schema puts in the prompt, at least)."""
    total = 0
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            total += len(node)
        elif isinstance(node, dict):
            total += sum(len(k) for k in node if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return total


# --------------------------------------------------------------------------- events

FinishReason = Literal["stop", "length", "tool_calls", "stop_sequence", "content_filter", "error"]


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True)
class ThinkingSignature:
    """Closes a thinking block with a signature the platform can later verify."""

    signature: str


@dataclass(slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str


@dataclass(slots=True)
class ToolCallEnd:
    index: int


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class Finish:
    reason: FinishReason
    stop_sequence: str | None = None


@dataclass(slots=True)
class Error:
    """An engine failure after the stream started; encoders turn it into the format's error event."""

    error: ApiError


Event = (
    TextDelta
    | ThinkingDelta
    | ThinkingSignature
    | ToolCallStart
    | ToolCallDelta
    | ToolCallEnd
    | Usage
    | Finish
    | Error
)


def new_tool_call_id() -> str:
    """Ids that every client accepts: `^[a-zA-Z0-9_-]+$`."""
    return "call_" + secrets.token_hex(12)


# --------------------------------------------------------------------------- collected reply


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Completion:
    """A whole reply, collected from events: what non-streaming responses are built from."""

    text: str = ""
    thinking: str = ""
    thinking_signature: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish: Finish = field(default_factory=lambda: Finish("stop"))
    # Order in which content kinds first appeared, e.g. ["thinking", "text", "tool_use"].
    order: list[str] = field(default_factory=list)


class Collector:
    """Folds events, one at a time, into a `Completion`. An `Error` event is raised."""

    def __init__(self) -> None:
        self.out = Completion()
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._calls: dict[int, ToolCall] = {}
        self._args: dict[int, list[str]] = {}

    def _saw(self, kind: str) -> None:
        if kind not in self.out.order:
            self.out.order.append(kind)

    def add(self, ev: Event) -> None:
        if isinstance(ev, TextDelta):
            self._saw("text")
            self._text.append(ev.text)
        elif isinstance(ev, ThinkingDelta):
            self._saw("thinking")
            self._thinking.append(ev.text)
        elif isinstance(ev, ThinkingSignature):
            self.out.thinking_signature = ev.signature
        elif isinstance(ev, ToolCallStart):
            self._saw("tool_use")
            self._calls[ev.index] = ToolCall(ev.id, ev.name, "")
            self._args[ev.index] = []
        elif isinstance(ev, ToolCallDelta):
            self._args.setdefault(ev.index, []).append(ev.arguments)
        elif isinstance(ev, Usage):
            self.out.usage = ev
        elif isinstance(ev, Finish):
            self.out.finish = ev
        elif isinstance(ev, Error):
            raise ev.error

    def result(self) -> Completion:
        self.out.text = "".join(self._text)
        self.out.thinking = "".join(self._thinking)
        self.out.tool_calls = []
        for i in sorted(self._calls):
            call = self._calls[i]
            self.out.tool_calls.append(ToolCall(call.id, call.name, "".join(self._args.get(i, [])) or "{}"))
        return self.out


async def collect(events: AsyncIterator[Event]) -> Completion:
    """Fold a stream of events into one `Completion`. An `Error` event is raised."""
    collector = Collector()
    try:
        async for ev in events:
            collector.add(ev)
    finally:
        # Stop the producer now, not whenever the generator is garbage collected.
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    return collector.result()


# --------------------------------------------------------------------------- errors

ErrorKind = Literal[
    "invalid_request",
    "authentication",
    "permission",
    "not_found",
    "rate_limit",
    "server",
    "upstream",
    "overloaded",
]

_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "rate_limit": 429,
    "server": 500,
    "upstream": 502,
    "overloaded": 503,
}


class ApiError(Exception):
    """An error the client should see, in whatever format it speaks.

    `code` is the platform's code (`invalid_parameter`, `invalid_api_key`, `insufficient_quota`,
    `rate_limit_exceeded`, `context_length_exceeded`, …). `message` must be safe to show: it never
    contains secrets.
    """

    def __init__(
        self,
        kind: ErrorKind,
        code: str,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.param = param
        self.status = status or _STATUS[kind]
        self.headers = headers or {}
        self.extra = extra or {}

    def __repr__(self) -> str:
        return f"ApiError({self.kind!r}, {self.code!r}, {self.message!r})"


def shown(value: Any, limit: int = 60) -> str:
    """`repr(value)` for an error message, cut to `limit` characters: a message quotes what the
    client sent, and a 2 MB model name must not come back as a 2 MB error."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def invalid(message: str, *, param: str | None = None, code: str = "invalid_parameter") -> ApiError:
    """Shorthand for the most common error: a 400 about the request body."""
    return ApiError("invalid_request", code, message, param=param)


@dataclass(slots=True, frozen=True)
class Limits:
    """Bounds on a request's shape (the `max_*` settings). Far beyond any real conversation (and
    any context window), and cheap to refuse: decoders check them before building anything."""

    messages: int = 20_000  # messages, or a Responses request's input items
    tools: int = 1_000
    blocks: int = 50_000  # content blocks in all: a message's, a system prompt's, a tool result's

    def check_counts(self, messages: int, tools: int, blocks: int = 0) -> None:
        """A 400 for a request with more messages, tools or content blocks than any real one has."""
        if messages > self.messages or tools > self.tools:
            raise invalid(
                f"A request may hold at most {self.messages:,} messages and {self.tools:,} tools.",
                param="messages" if messages > self.messages else "tools",
            )
        if blocks > self.blocks:
            raise invalid(f"A request may hold at most {self.blocks:,} content blocks in all.", param="messages")


DEFAULT_LIMITS = Limits()


RATE_LIMIT_MESSAGE = "Request rate limit exceeded, please try again later"


def retry_seconds(wait: float) -> int:
    """What `Retry-After` says: whole seconds, never 0 for a refused request."""
    return max(1, math.ceil(wait - 1e-9))


def rate_limited(wait: float) -> ApiError:
    """The seed's 429 body, with the real wait in `retry_after` and in `Retry-After`."""
    seconds = retry_seconds(wait)
    return ApiError(
        "rate_limit",
        "rate_limit_exceeded",
        RATE_LIMIT_MESSAGE,
        headers={"Retry-After": str(seconds)},
        extra={"retry_after": seconds},
    )
