"""OpenAI Chat Completions <-> canonical.

`decode` turns a request body into a `ChatRequest` (raising `ApiError` with a message that names
the offending field); `encode_completion` builds the non-streaming body; `ChatStreamEncoder` turns
canonical events into `chat.completion.chunk` objects.
"""

from __future__ import annotations

import json
import secrets
import time
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
    ImageBlock,
    Limits,
    Message,
    ResponseFormat,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    Usage,
    invalid,
    shown,
)
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
from longcat.protocols.openai_errors import openai_error_body

FINISH_REASONS = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "error": "stop",
}

# ---------------------------------------------------------------------------------------- decode


def decode(body: dict[str, Any], *, limits: Limits = DEFAULT_LIMITS) -> ChatRequest:
    model = get_str(body, "model", required=True)
    raw_messages = get_list(body, "messages")
    if not raw_messages:
        raise invalid("'messages' must be a non-empty array of messages.", param="messages")
    limits.check_counts(len(raw_messages), len(get_list(body, "tools") or []), count_blocks(raw_messages, limits.blocks))

    n = get_int(body, "n", minimum=1)
    if n is not None and n > 1:
        raise invalid("'n' greater than 1 is not supported; send one request per completion.", param="n")

    max_tokens = get_int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = get_int(body, "max_tokens", minimum=1)

    system, messages = _decode_messages(raw_messages)
    tools = _decode_tools(get_list(body, "tools") or [])
    tool_choice = _decode_tool_choice(body.get("tool_choice"), tools)
    parallel = get_bool(body, "parallel_tool_calls")
    if parallel is not None:
        tool_choice.parallel = parallel

    stream = bool(get_bool(body, "stream"))
    stream_options = get_object(body, "stream_options") or {}
    include_usage = bool(get_bool(stream_options, "include_usage", param="stream_options.include_usage"))

    return ChatRequest(
        model=model,  # type: ignore[arg-type]
        messages=messages,
        system=system,
        tools=tools,
        tool_choice=tool_choice,
        max_tokens=max_tokens,
        temperature=get_number(body, "temperature", minimum=0, maximum=2),
        top_p=get_number(body, "top_p", minimum=0, maximum=1),
        top_k=get_int(body, "top_k", minimum=0),
        stop=get_stop(body, "stop"),
        seed=get_int(body, "seed"),
        thinking=decode_thinking(body),
        response_format=_decode_response_format(get_object(body, "response_format")),
        stream=stream,
        # `ignore_eos` (as in vLLM and llama.cpp's server): generate max_tokens whatever the
        # model says; for benchmarks. Engines that cannot honour it ignore it.
        extras={"include_usage": include_usage, "ignore_eos": bool(get_bool(body, "ignore_eos"))},
    )


def decode_thinking(body: dict[str, Any]) -> bool | None:
    """`thinking: {"type": "enabled" | "disabled" | "adaptive"}`; adaptive leaves it to the model."""
    thinking = body.get("thinking")
    if thinking is None:
        effort = body.get("reasoning_effort")
        if isinstance(effort, str):
            return effort not in ("none", "minimal")
        return None
    if isinstance(thinking, bool):
        return thinking
    if not isinstance(thinking, dict):
        raise wrong_type("thinking", "an object like {\"type\": \"enabled\"}", thinking)
    kind = thinking.get("type")
    if kind == "enabled":
        return True
    if kind == "disabled":
        return False
    if kind in ("adaptive", "auto", None):
        return None
    raise invalid("'thinking.type' must be 'enabled', 'disabled' or 'adaptive'.", param="thinking.type")


def _decode_messages(raw: list[Any]) -> tuple[list[TextBlock], list[Message]]:
    system: list[TextBlock] = []
    messages: list[Message] = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise wrong_type(where, "an object", item)
        role = item.get("role")
        if role in ("system", "developer"):
            blocks = _text_only(item.get("content"), f"{where}.content")
            if not messages:
                system.extend(blocks)
            else:
                messages.append(Message("system", list(blocks)))
        elif role == "user":
            messages.append(Message("user", _content_blocks(item.get("content"), f"{where}.content")))
        elif role == "assistant":
            messages.append(Message("assistant", _assistant_blocks(item, where)))
        elif role in ("tool", "function"):
            call_id = item.get("tool_call_id") if role == "tool" else item.get("name")
            if not isinstance(call_id, str) or not call_id:
                raise invalid(f"'{where}.tool_call_id' is required for tool messages.", param=f"{where}.tool_call_id")
            result = ToolResultBlock(call_id, list(_text_or_images(item.get("content"), f"{where}.content")))
            # Consecutive tool messages answer one assistant turn: keep them together.
            last = messages[-1] if messages else None
            if last is not None and last.role == "user" and all(isinstance(b, ToolResultBlock) for b in last.content):
                last.content.append(result)
            else:
                messages.append(Message("user", [result]))
        else:
            raise invalid(
                f"'{where}.role' must be one of system, developer, user, assistant or tool; got {shown(role)}.",
                param=f"{where}.role",
            )
    if not messages:
        raise invalid("'messages' must contain at least one user or assistant message.", param="messages")
    return system, messages


def _text_only(content: Any, where: str) -> list[TextBlock]:
    blocks = _content_blocks(content, where)
    if any(not isinstance(b, TextBlock) for b in blocks):
        raise invalid(f"'{where}' may only contain text.", param=where)
    return blocks  # type: ignore[return-value]


def _text_or_images(content: Any, where: str) -> list[TextBlock | ImageBlock]:
    return [b for b in _content_blocks(content, where) if isinstance(b, (TextBlock, ImageBlock))]


def _content_blocks(content: Any, where: str) -> list[Block]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextBlock(content)]
    if not isinstance(content, list):
        raise wrong_type(where, "a string or an array of content parts", content)
    blocks: list[Block] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if isinstance(part, str):
            blocks.append(TextBlock(part))
            continue
        if not isinstance(part, dict):
            raise wrong_type(at, "a content part object", part)
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise wrong_type(f"{at}.text", "a string", text)
            blocks.append(TextBlock(text))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise invalid(f"'{at}.image_url.url' must be a URL or a data: URI.", param=f"{at}.image_url")
            blocks.append(image_from_url(url))
        elif kind == "refusal":
            blocks.append(TextBlock(str(part.get("refusal", ""))))
        else:
            raise invalid(
                f"'{at}.type' {shown(kind)} is not supported; use 'text' or 'image_url'.",
                param=f"{at}.type",
            )
    return blocks


def image_from_url(url: str) -> ImageBlock:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0] or None
        return ImageBlock(media_type=media_type, data=data)
    return ImageBlock(url=url)


def _assistant_blocks(item: dict[str, Any], where: str) -> list[Block]:
    blocks: list[Block] = []
    reasoning = item.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        blocks.append(ThinkingBlock(reasoning))
    blocks.extend(b for b in _content_blocks(item.get("content"), f"{where}.content") if not (isinstance(b, TextBlock) and not b.text))
    calls = item.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise wrong_type(f"{where}.tool_calls", "an array", calls)
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(f"'{at}.function.name' is required.", param=f"{at}.function")
        args = fn.get("arguments", "{}")
        if not isinstance(args, str):
            args = json.dumps(args)
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid(f"'{at}.id' is required.", param=f"{at}.id")
        blocks.append(ToolUseBlock(call_id, fn["name"], args or "{}"))
    return blocks


def _decode_tools(raw: list[Any]) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    for i, tool in enumerate(raw):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise wrong_type(at, "an object", tool)
        if tool.get("type", "function") != "function":
            continue  # other tool kinds are for other engines; skipping them is not an error
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise invalid(f"'{at}.function.name' is required.", param=f"{at}.function.name")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise wrong_type(f"{at}.function.description", "a string", description)
        tools.append(ToolSpec(fn["name"], description, json_schema_object(fn.get("parameters"), f"{at}.function.parameters")))
    return tools


def _decode_tool_choice(raw: Any, tools: list[ToolSpec]) -> ToolChoice:
    if raw is None:
        return ToolChoice("auto")
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw)
    if isinstance(raw, dict):
        name = (raw.get("function") or {}).get("name") if isinstance(raw.get("function"), dict) else raw.get("name")
        if raw.get("type") in ("function", None) and isinstance(name, str):
            if name not in {t.name for t in tools}:
                raise invalid(f"'tool_choice' names the function {shown(name)}, which is not in 'tools'.", param="tool_choice")
            return ToolChoice("tool", name)
    raise invalid(
        "'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", \"function\": {\"name\": …}}.",
        param="tool_choice",
    )


def _decode_response_format(raw: dict[str, Any] | None) -> ResponseFormat:
    if raw is None:
        return ResponseFormat()
    kind = raw.get("type")
    if kind == "text":
        return ResponseFormat()
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise invalid("'response_format.json_schema.schema' must be a JSON schema object.", param="response_format")
        return ResponseFormat("json_schema", spec["schema"], spec.get("name"))
    raise invalid("'response_format.type' must be 'text', 'json_object' or 'json_schema'.", param="response_format")


# ---------------------------------------------------------------------------------------- encode


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def encode_completion(done: Completion, *, model: str, completion_id: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": done.text if (done.text or not done.tool_calls) else None}
    if done.thinking:
        message["reasoning_content"] = done.thinking
    if done.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in done.tool_calls
        ]
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": FINISH_REASONS[done.finish.reason], "logprobs": None}
    if done.finish.stop_sequence is not None:
        choice["stop_reason"] = done.finish.stop_sequence  # as vLLM reports it (see the stream encoder)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage_body(done.usage),
    }


class ChatStreamEncoder:
    """Canonical events -> `chat.completion.chunk` dicts, one or none per event."""

    def __init__(self, *, model: str, include_usage: bool, completion_id: str | None = None) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = completion_id or new_completion_id()
        self.created = int(time.time())
        self._usage: Usage | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def start(self) -> list[dict[str, Any]]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def encode(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, TextDelta):
            return [self._chunk({"content": event.text})]
        if isinstance(event, ThinkingDelta):
            return [self._chunk({"reasoning_content": event.text})]
        if isinstance(event, ToolCallStart):
            call = {"index": event.index, "id": event.id, "type": "function", "function": {"name": event.name, "arguments": ""}}
            return [self._chunk({"tool_calls": [call]})]
        if isinstance(event, ToolCallDelta):
            return [self._chunk({"tool_calls": [{"index": event.index, "function": {"arguments": event.arguments}}]})]
        if isinstance(event, Usage):
            self._usage = event
            return []
        if isinstance(event, Finish):
            out = [self._chunk({}, FINISH_REASONS[event.reason])]
            if event.stop_sequence is not None:
                # Which stop sequence ended the reply, as vLLM reports it: OpenAI's finish_reason
                # "stop" cannot tell, and a gateway in front of us needs it for Anthropic clients.
                out[0]["choices"][0]["stop_reason"] = event.stop_sequence
            if self.include_usage:
                out.append(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage_body(self._usage or Usage()),
                    }
                )
            return out
        if isinstance(event, Error):
            return [self.error(event.error)]
        return []

    def error(self, err: ApiError) -> dict[str, Any]:
        return openai_error_body(err)
