"""Anthropic Messages <-> canonical.

`decode` turns a `/v1/messages` (or `/v1/messages/count_tokens`) body into a `ChatRequest`;
`encode_message` builds the non-streaming body; `MessageStreamEncoder` turns canonical events
into the Messages stream: `message_start`, then per content block `content_block_start`,
deltas and `content_block_stop`, then one `message_delta` and `message_stop`.

Thinking blocks are signed on the way out and checked on the way back in. The functions that do
it are passed in (`sign_thinking`, `verify_thinking`), so this module holds no key and does no I/O.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from longcat.canonical import (
    DEFAULT_LIMITS,
    ApiError,
    Block,
    ChatRequest,
    Completion,
    Error,
    Event,
    Finish,
    FinishReason,
    ImageBlock,
    Limits,
    Message,
    ResponseFormat,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    Usage,
    invalid,
    shown,
)
from longcat.protocols.anthropic_errors import anthropic_error_body
from longcat.protocols.fields import (
    count_blocks,
    get_bool,
    get_int,
    get_list,
    get_number,
    get_object,
    get_stop,
    get_str,
    json_schema_object,
    wrong_type,
)
from longcat.protocols.json_prefix import JsonObjectPrefix

SignThinking = Callable[[str], str]
VerifyThinking = Callable[[str, str], bool]
# One server-sent event: its name and its JSON data.
Frame = tuple[str, dict[str, Any]]

STOP_REASONS: dict[FinishReason, str] = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
}

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

# ---------------------------------------------------------------------------------------- decode


def decode(
    body: dict[str, Any], *, verify_thinking: VerifyThinking, count_only: bool = False, limits: Limits = DEFAULT_LIMITS
) -> ChatRequest:
    """A Messages request body -> `ChatRequest`. `count_only` is for `count_tokens`, where
    `max_tokens` is not part of the request."""
    model = get_str(body, "model", required=True)
    max_tokens = get_int(body, "max_tokens", minimum=1)
    if max_tokens is None and not count_only:
        raise invalid("'max_tokens' is required: the most tokens the reply may have.", param="max_tokens")

    raw_messages = get_list(body, "messages")
    if not raw_messages:
        raise invalid("'messages' must be a non-empty array of messages.", param="messages")
    system_blocks = body.get("system")
    blocks = count_blocks(raw_messages, limits.blocks) + (len(system_blocks) if isinstance(system_blocks, list) else 0)
    limits.check_counts(len(raw_messages), len(get_list(body, "tools") or []), blocks)
    system = _decode_system(body.get("system"))
    messages = _decode_messages(raw_messages, system, verify_thinking)

    tools = _decode_tools(get_list(body, "tools") or [])
    metadata = get_object(body, "metadata") or {}
    extras: dict[str, Any] = {}
    if isinstance(metadata.get("user_id"), str):
        extras["user_id"] = metadata["user_id"]
    thinking, budget = decode_thinking(body.get("thinking"))
    if budget is not None:
        extras["thinking_budget"] = budget

    return ChatRequest(
        model=model,  # type: ignore[arg-type]
        messages=messages,
        system=system,
        tools=tools,
        tool_choice=_decode_tool_choice(body.get("tool_choice"), tools),
        max_tokens=max_tokens,
        temperature=get_number(body, "temperature", minimum=0, maximum=2),
        top_p=get_number(body, "top_p", minimum=0, maximum=1),
        top_k=get_int(body, "top_k", minimum=0),
        stop=get_stop(body, "stop_sequences"),
        thinking=thinking,
        response_format=_decode_output_format(body),
        stream=bool(get_bool(body, "stream")),
        extras=extras,
    )


def decode_thinking(raw: Any) -> tuple[bool | None, int | None]:
    """`{"type": "enabled", "budget_tokens": N}`, `disabled`, or `adaptive` (the model decides)."""
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        raise wrong_type("thinking", 'an object like {"type": "enabled", "budget_tokens": 2048}', raw)
    kind = raw.get("type")
    if kind == "enabled":
        return True, get_int(raw, "budget_tokens", param="thinking.budget_tokens", minimum=1)
    if kind == "disabled":
        return False, None
    if kind == "adaptive":
        return None, None
    raise invalid("'thinking.type' must be 'enabled', 'disabled' or 'adaptive'.", param="thinking.type")


def _decode_system(raw: Any) -> list[TextBlock]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [TextBlock(raw)] if raw else []
    if not isinstance(raw, list):
        raise wrong_type("system", "a string or an array of text blocks", raw)
    return _text_blocks(raw, "system")


def _text_blocks(raw: list[Any], where: str) -> list[TextBlock]:
    out: list[TextBlock] = []
    for j, block in enumerate(raw):
        at = f"{where}[{j}]"
        if not isinstance(block, dict):
            raise wrong_type(at, "a text block object", block)
        if block.get("type") != "text":
            raise invalid(f"'{at}.type' must be 'text' here; got {shown(block.get('type'))}.", param=f"{at}.type")
        out.append(TextBlock(_required_str(block, "text", at)))
    return out


def _decode_messages(raw: list[Any], system: list[TextBlock], verify: VerifyThinking) -> list[Message]:
    messages: list[Message] = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise wrong_type(where, "an object", item)
        role = item.get("role")
        content = item.get("content")
        if role == "system":
            # Claude Code sends system entries mid-conversation; leading ones join `system`.
            blocks = [TextBlock(content)] if isinstance(content, str) else _text_blocks(_as_list(content, where), f"{where}.content")
            if messages:
                messages.append(Message("system", list(blocks)))
            else:
                system.extend(blocks)
        elif role in ("user", "assistant"):
            messages.append(Message(role, _content_blocks(content, f"{where}.content", verify)))
        else:
            raise invalid(f"'{where}.role' must be 'user' or 'assistant'; got {shown(role)}.", param=f"{where}.role")
    if not messages:
        raise invalid("'messages' must contain at least one user or assistant message.", param="messages")
    return messages


def _as_list(content: Any, where: str) -> list[Any]:
    if not isinstance(content, list):
        raise wrong_type(f"{where}.content", "a string or an array of content blocks", content)
    return content


def _content_blocks(content: Any, where: str, verify: VerifyThinking) -> list[Block]:
    if isinstance(content, str):
        return [TextBlock(content)]
    if not isinstance(content, list):
        raise wrong_type(where, "a string or an array of content blocks", content)
    blocks: list[Block] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(block, dict):
            raise wrong_type(at, "a content block object", block)
        kind = block.get("type")
        if kind == "text":
            blocks.append(TextBlock(_required_str(block, "text", at)))
        elif kind == "image":
            blocks.append(_image(block, at))
        elif kind == "document":
            blocks.append(_document(block, at))
        elif kind == "tool_use":
            blocks.append(_tool_use(block, at))
        elif kind == "tool_result":
            blocks.append(_tool_result(block, at))
        elif kind == "thinking":
            blocks.append(_thinking(block, at, verify))
        elif kind == "redacted_thinking":
            # The platform never issues these; a client may replay one from elsewhere. Its payload
            # is opaque and not ours: carried along unverified, so no engine is ever given it.
            blocks.append(ThinkingBlock("", signature=str(block.get("data", "")), redacted=True))
        else:
            raise invalid(
                f"'{at}.type' {shown(kind)} is not supported; use text, image, document (text), tool_use, "
                "tool_result, thinking or redacted_thinking.",
                param=f"{at}.type",
            )
    return blocks


def _required_str(block: dict[str, Any], key: str, at: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        if value is None:
            raise invalid(f"'{at}.{key}' is required.", param=f"{at}.{key}")
        raise wrong_type(f"{at}.{key}", "a string", value)
    return value


def _image(block: dict[str, Any], at: str) -> ImageBlock:
    source = block.get("source")
    if not isinstance(source, dict):
        raise invalid(f"'{at}.source' must be an object with 'type' base64 or url.", param=f"{at}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = _required_str(source, "media_type", f"{at}.source")
        if media_type not in IMAGE_TYPES:
            raise invalid(
                f"'{at}.source.media_type' must be one of {', '.join(IMAGE_TYPES)}; got {shown(media_type)}.",
                param=f"{at}.source.media_type",
            )
        return ImageBlock(media_type=media_type, data=_required_str(source, "data", f"{at}.source"))
    if kind == "url":
        return ImageBlock(url=_required_str(source, "url", f"{at}.source"))
    raise invalid(f"'{at}.source.type' must be 'base64' or 'url'; got {shown(kind)}.", param=f"{at}.source.type")


def _document(block: dict[str, Any], at: str) -> TextBlock:
    """Plain-text documents are text to a model; other kinds (PDF, files) need an engine that reads them."""
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text":
        return TextBlock(_required_str(source, "data", f"{at}.source"))
    if isinstance(source, dict) and source.get("type") == "content" and isinstance(source.get("content"), list):
        texts = _text_blocks(source["content"], f"{at}.source.content")
        return TextBlock("\n".join(t.text for t in texts))
    raise invalid(
        f"'{at}': only plain-text documents (source type 'text' or 'content') are supported.", param=f"{at}.source"
    )


def _tool_use(block: dict[str, Any], at: str) -> ToolUseBlock:
    call_id = _required_str(block, "id", at)
    name = _required_str(block, "name", at)
    args = block.get("input", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise wrong_type(f"{at}.input", "an object", args)
    return ToolUseBlock(call_id, name, json.dumps(args, ensure_ascii=False))


def _tool_result(block: dict[str, Any], at: str) -> ToolResultBlock:
    call_id = _required_str(block, "tool_use_id", at)
    content = block.get("content")
    parts: list[TextBlock | ImageBlock] = []
    if isinstance(content, str):
        parts.append(TextBlock(content))
    elif isinstance(content, list):
        for k, part in enumerate(content):
            where = f"{at}.content[{k}]"
            if not isinstance(part, dict):
                raise wrong_type(where, "a content block object", part)
            kind = part.get("type")
            if kind == "text":
                parts.append(TextBlock(_required_str(part, "text", where)))
            elif kind == "image":
                parts.append(_image(part, where))
            elif kind == "document":
                parts.append(_document(part, where))
            else:
                raise invalid(f"'{where}.type' must be text, image or document; got {shown(kind)}.", param=f"{where}.type")
    elif content is not None:
        raise wrong_type(f"{at}.content", "a string or an array of content blocks", content)
    is_error = get_bool(block, "is_error", param=f"{at}.is_error")
    return ToolResultBlock(call_id, parts, bool(is_error))


def _thinking(block: dict[str, Any], at: str, verify: VerifyThinking) -> ThinkingBlock:
    text = _required_str(block, "thinking", at)
    signature = block.get("signature")
    if not isinstance(signature, str) or not signature:
        raise invalid(
            f"'{at}.signature' is required: send thinking blocks back exactly as the platform returned them.",
            param=f"{at}.signature",
        )
    if not verify(text, signature):
        raise invalid(
            f"'{at}' has an invalid signature: the thinking text was changed, or it was not written by a model "
            "on this platform. Send thinking blocks back unmodified, or leave them out.",
            param=f"{at}.signature",
        )
    return ThinkingBlock(text, signature=signature, verified=True)


def _decode_tools(raw: list[Any]) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    for i, tool in enumerate(raw):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise wrong_type(at, "an object", tool)
        if tool.get("type") not in (None, "custom"):
            continue  # server tools (web search, code execution…) are for engines that run them
        name = _required_str(tool, "name", at)
        if not name:
            raise invalid(f"'{at}.name' must not be empty.", param=f"{at}.name")
        description = tool.get("description") or ""
        if not isinstance(description, str):
            raise wrong_type(f"{at}.description", "a string", description)
        tools.append(ToolSpec(name, description, json_schema_object(tool.get("input_schema"), f"{at}.input_schema")))
    return tools


def _decode_tool_choice(raw: Any, tools: list[ToolSpec]) -> ToolChoice:
    if raw is None:
        return ToolChoice("auto")
    if not isinstance(raw, dict):
        raise wrong_type("tool_choice", 'an object like {"type": "auto"}', raw)
    parallel = not get_bool(raw, "disable_parallel_tool_use", param="tool_choice.disable_parallel_tool_use")
    kind = raw.get("type")
    if kind in ("auto", "none"):
        return ToolChoice(kind, parallel=parallel)
    if kind == "any":
        return ToolChoice("required", parallel=parallel)
    if kind == "tool":
        name = raw.get("name")
        if not isinstance(name, str) or name not in {t.name for t in tools}:
            raise invalid(f"'tool_choice.name' must name one of the tools; got {shown(name)}.", param="tool_choice.name")
        return ToolChoice("tool", name, parallel=parallel)
    raise invalid("'tool_choice.type' must be 'auto', 'any', 'tool' or 'none'.", param="tool_choice.type")


def _decode_output_format(body: dict[str, Any]) -> ResponseFormat:
    """Structured output: `output_config.format` (or the older `output_format`) with a JSON schema."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None:
        fmt = body.get("output_format")
    if fmt is None:
        return ResponseFormat()
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise invalid(
            "'output_config.format' must be {\"type\": \"json_schema\", \"schema\": {…}}.", param="output_config.format"
        )
    return ResponseFormat("json_schema", fmt["schema"])


# ---------------------------------------------------------------------------------------- encode


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def usage_body(usage: Usage) -> dict[str, Any]:
    """Anthropic counts cache reads apart: total prompt = input_tokens + cache_read_input_tokens."""
    cached = min(usage.cached_tokens, usage.input_tokens)
    return {
        "input_tokens": usage.input_tokens - cached,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def tool_input(arguments: str) -> dict[str, Any]:
    """The parsed arguments; a model that wrote something else than a JSON object gets it wrapped."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError):  # not JSON, nested absurdly deep, or a 5,000-digit number
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def encode_message(done: Completion, *, model: str, message_id: str, sign_thinking: SignThinking) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for kind in done.order:
        if kind == "thinking" and done.thinking:
            content.append({"type": "thinking", "thinking": done.thinking, "signature": sign_thinking(done.thinking)})
        elif kind == "text" and done.text:
            content.append({"type": "text", "text": done.text})
        elif kind == "tool_use":
            content.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(c.arguments)} for c in done.tool_calls
            )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS[done.finish.reason],
        "stop_sequence": done.finish.stop_sequence,
        "usage": usage_body(done.usage),
    }


def error_frame(err: ApiError) -> Frame:
    return "error", anthropic_error_body(err)


class MessageStreamEncoder:
    """Canonical events -> Messages stream events, in the order clients check.

    Blocks open on their first delta and close when another kind starts or the message ends, so
    every block is opened before its deltas and closed exactly once, with increasing indexes.
    A thinking block is closed with a `signature_delta` over its whole text. Tool arguments pass
    through `JsonObjectPrefix`, so clients that parse them as they arrive always can. Engines
    report tool calls one after another; a delta for a call whose block was already closed is
    dropped rather than breaking the stream.
    """

    def __init__(
        self,
        *,
        model: str,
        input_tokens: int,
        sign_thinking: SignThinking,
        message_id: str | None = None,
        live_usage: Usage | None = None,
    ) -> None:
        self.model = model
        self.id = message_id or new_message_id()
        self.input_tokens = input_tokens
        # The request's usage as the engine keeps it: by the first event it knows how much of the
        # prompt came from cache, so message_start can split input the way message_delta will.
        self.live_usage = live_usage
        self.sign_thinking = sign_thinking
        self.done = False
        self._next_index = 0
        self._open: str | None = None  # "text" | "thinking" | "tool_use"
        self._open_tool: int | None = None  # canonical index of the open tool call
        self._thinking: list[str] = []
        self._arguments = JsonObjectPrefix()
        self._usage = Usage(input_tokens=input_tokens)

    def start(self) -> list[Frame]:
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_body(self._start_usage()),
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _start_usage(self) -> Usage:
        live = self.live_usage
        if live is not None and live.input_tokens:
            return Usage(input_tokens=live.input_tokens, cached_tokens=live.cached_tokens)
        return Usage(input_tokens=self.input_tokens)

    @staticmethod
    def ping() -> Frame:
        return "ping", {"type": "ping"}

    def encode(self, event: Event) -> list[Frame]:
        if self.done:
            return []
        if isinstance(event, TextDelta):
            if not event.text:
                return []
            out = self._ensure_open("text", {"type": "text", "text": ""})
            return out + [self._delta({"type": "text_delta", "text": event.text})]
        if isinstance(event, ThinkingDelta):
            if not event.text:
                return []
            out = self._ensure_open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self._thinking.append(event.text)
            return out + [self._delta({"type": "thinking_delta", "thinking": event.text})]
        if isinstance(event, ToolCallStart):
            out = self._close()
            out += self._open_block("tool_use", {"type": "tool_use", "id": event.id, "name": event.name, "input": {}})
            self._open_tool = event.index
            self._arguments = JsonObjectPrefix()
            return out
        if isinstance(event, ToolCallDelta):
            if self._open != "tool_use" or event.index != self._open_tool:
                return []
            text = self._arguments.feed(event.arguments)
            return [self._delta({"type": "input_json_delta", "partial_json": text})] if text else []
        if isinstance(event, ToolCallEnd):
            return self._close() if self._open == "tool_use" and event.index == self._open_tool else []
        if isinstance(event, Usage):
            self._usage = event
            return []
        if isinstance(event, Finish):
            return self._finish(event)
        if isinstance(event, Error):
            return [self.error(event.error)]
        return []  # ThinkingSignature: the platform signs thinking itself, in `_close`

    def finish(self) -> list[Frame]:
        """Closes a stream whose engine ended without a `Finish` (never after an error)."""
        return [] if self.done else self._finish(Finish("stop"))

    def error(self, err: ApiError) -> Frame:
        self.done = True
        return error_frame(err)

    # ------------------------------------------------------------------ blocks

    def _delta(self, delta: dict[str, Any]) -> Frame:
        return "content_block_delta", {"type": "content_block_delta", "index": self._next_index - 1, "delta": delta}

    def _ensure_open(self, kind: str, block: dict[str, Any]) -> list[Frame]:
        if self._open == kind:
            return []
        return self._close() + self._open_block(kind, block)

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[Frame]:
        self._open = kind
        index = self._next_index
        self._next_index += 1
        return [("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})]

    def _close(self) -> list[Frame]:
        if self._open is None:
            return []
        out: list[Frame] = []
        if self._open == "thinking":
            signature = self.sign_thinking("".join(self._thinking))
            out.append(self._delta({"type": "signature_delta", "signature": signature}))
            self._thinking = []
        elif self._open == "tool_use":
            rest = self._arguments.close()  # an engine's call that ended early or malformed
            if rest:
                out.append(self._delta({"type": "input_json_delta", "partial_json": rest}))
        out.append(("content_block_stop", {"type": "content_block_stop", "index": self._next_index - 1}))
        self._open = None
        self._open_tool = None
        return out

    def _finish(self, finish: Finish) -> list[Frame]:
        out = self._close()
        self.done = True
        usage = usage_body(self._usage)
        delta = {"stop_reason": STOP_REASONS[finish.reason], "stop_sequence": finish.stop_sequence}
        out.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(("message_stop", {"type": "message_stop"}))
        return out
