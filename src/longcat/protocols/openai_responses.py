"""OpenAI Responses API <-> canonical.

`decode` turns a request body into a `ResponsesRequest`: the canonical `ChatRequest` plus what
the response object echoes back. A conversation continued with `previous_response_id` arrives as
`history`: the input and output items of the stored response, which come first.

`ResponseEncoder` turns canonical events into Responses stream events and builds the response
object as it goes; the non-streaming body is that same object, so both paths agree by
construction. Everything here is pure: no I/O, no clock besides `created_at`.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from longcat.canonical import (
    DEFAULT_LIMITS,
    ApiError,
    Block,
    ChatRequest,
    Error,
    Event,
    Finish,
    ImageBlock,
    Limits,
    Message,
    ResponseFormat,
    Sampling,
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
from longcat.protocols.fields import (
    count_blocks,
    get_bool,
    get_int,
    get_list,
    get_number,
    get_object,
    get_str,
    json_schema_object,
    wrong_type,
)
from longcat.protocols.openai_chat import decode_thinking, image_from_url
from longcat.protocols.openai_errors import OPENAI_TYPES

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
REASONING_SUMMARIES = ("auto", "concise", "detailed")
# Seal and open the `encrypted_content` of reasoning items (bound to the key and the account).
Seal = Callable[[str], str]
OpenSeal = Callable[[Any], "str | None"]
# What the response reports for a sampling value neither the request nor the engine names (an
# upstream server applying its own default): the OpenAI API's defaults, i.e. plain sampling.
UNKNOWN_SAMPLING = Sampling(temperature=1.0, top_p=1.0, presence_penalty=0.0, frequency_penalty=0.0)
# Request fields as the canonical model names them -> as this format does, for error `param`s.
_FIELD_NAMES = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format"}


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(16)


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# ---------------------------------------------------------------------------------------- decode


@dataclass(slots=True)
class ResponsesRequest:
    """A decoded request: the canonical request and what the response object echoes back.

    `items` is the whole conversation as input items (stored history first), which is what a
    stored response keeps so a later `previous_response_id` can continue from it.
    """

    chat: ChatRequest
    items: list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    include: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    prompt_cache_key: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    reasoning: dict[str, Any] = field(default_factory=lambda: {"effort": None, "summary": None})
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    # Canonical tool name -> (namespace, name) for the functions of `namespace` tools.
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)
    truncation: str = "disabled"
    user: str | None = None
    safety_identifier: str | None = None


def previous_response_id(body: dict[str, Any]) -> str | None:
    """Read before `decode`: the route must fetch the stored response it names first."""
    value = get_str(body, "previous_response_id")
    return value or None


def decode(
    body: dict[str, Any],
    history: list[dict[str, Any]] | None = None,
    *,
    open_seal: OpenSeal | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ResponsesRequest:
    """The request as a canonical one. `open_seal` opens the `encrypted_content` of replayed
    reasoning items (see `gateway.signing`): reasoning it opens is verified, other reasoning is
    carried unverified (the gateway decides what an engine may see)."""
    model = get_str(body, "model", required=True)
    for unsupported, hint in (("background", "run the request in the foreground"), ("conversation", "use previous_response_id")):
        if body.get(unsupported) not in (None, False):
            raise invalid(f"'{unsupported}' is not supported on this platform; {hint}.", param=unsupported)

    raw_items = _input_items(body.get("input"))
    limits.check_counts(
        len(raw_items) + len(history or []),
        len(get_list(body, "tools") or []),
        count_blocks(raw_items, limits.blocks) + count_blocks(history or [], limits.blocks),
    )
    own_items = [_kept(item) for item in raw_items]
    items = list(history or []) + own_items
    system, messages = _conversation(items, len(history or []), open_seal)
    instructions = get_str(body, "instructions")
    if instructions:
        system.insert(0, TextBlock(instructions))

    tools, tools_echo, namespaced = _decode_tools(get_list(body, "tools") or [])
    tool_choice, choice_echo = _decode_tool_choice(body.get("tool_choice"), tools)
    parallel = get_bool(body, "parallel_tool_calls")
    if parallel is not None:
        tool_choice.parallel = parallel

    reasoning = get_object(body, "reasoning") or {}
    text = get_object(body, "text") or {}
    response_format, format_echo = _decode_format(get_object(text, "format", param="text.format"))
    text_echo: dict[str, Any] = {"format": format_echo}
    if text.get("verbosity") in ("low", "medium", "high"):
        text_echo["verbosity"] = text["verbosity"]

    include = get_list(body, "include") or []
    if not all(isinstance(i, str) for i in include):
        raise wrong_type("include", "an array of strings", include)
    prompt_cache_key = get_str(body, "prompt_cache_key")
    max_output_tokens = get_int(body, "max_output_tokens", minimum=1)
    max_tool_calls = get_int(body, "max_tool_calls", minimum=1)
    store = get_bool(body, "store")
    truncation = get_str(body, "truncation") or "disabled"
    if truncation not in ("auto", "disabled"):
        raise invalid("'truncation' must be 'auto' or 'disabled'.", param="truncation")

    chat = ChatRequest(
        model=model,  # type: ignore[arg-type]
        messages=messages,
        system=system,
        tools=tools,
        tool_choice=tool_choice,
        max_tokens=max_output_tokens,
        temperature=get_number(body, "temperature", minimum=0, maximum=2),
        top_p=get_number(body, "top_p", minimum=0, maximum=1),
        thinking=_decode_thinking(body, reasoning),
        response_format=response_format,
        stream=bool(get_bool(body, "stream")),
        extras={"prompt_cache_key": prompt_cache_key} if prompt_cache_key else {},
    )
    return ResponsesRequest(
        chat=chat,
        items=items,
        instructions=instructions,
        previous_response_id=previous_response_id(body),
        store=True if store is None else store,
        include=include,
        metadata=_decode_metadata(body.get("metadata")),
        prompt_cache_key=prompt_cache_key,
        max_output_tokens=max_output_tokens,
        max_tool_calls=max_tool_calls,
        reasoning={
            "effort": reasoning.get("effort") if reasoning.get("effort") in REASONING_EFFORTS else None,
            "summary": reasoning.get("summary") if reasoning.get("summary") in REASONING_SUMMARIES else None,
        },
        text=text_echo,
        tools=tools_echo,
        namespaced=namespaced,
        tool_choice=choice_echo,
        truncation=truncation,
        user=get_str(body, "user"),
        safety_identifier=get_str(body, "safety_identifier"),
    )


def _input_items(raw: Any) -> list[dict[str, Any]]:
    """`input` as a list of items: a plain string is one user message."""
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise wrong_type("input", "a string or an array of input items", raw)
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise wrong_type(f"input[{i}]", "an object", item)
    return raw


# The fields of input items (and of their content parts) that mean something here: what a stored
# conversation keeps. Anything else a client adds is dropped, so it is neither stored nor
# carried along every later turn of a `previous_response_id` chain.
_ITEM_FIELDS = {
    "message": {"content"},
    "function_call": {"call_id", "name", "arguments", "namespace"},
    "custom_tool_call": {"call_id", "name", "input"},
    "function_call_output": {"call_id", "output"},
    "custom_tool_call_output": {"call_id", "output"},
    "reasoning": {"summary", "content", "encrypted_content"},
}
_COMMON_FIELDS = {"type", "id", "role", "status"}
_PART_FIELDS = {"type", "text", "image_url", "file_id", "file_data", "filename", "detail"}


def _kept(item: dict[str, Any]) -> dict[str, Any]:
    kind = item.get("type", "message" if "role" in item else None)
    fields = _COMMON_FIELDS | _ITEM_FIELDS.get(kind, set()) if isinstance(kind, str) else _COMMON_FIELDS
    kept = {k: v for k, v in item.items() if k in fields}
    for key in ("content", "output", "summary"):
        if isinstance(kept.get(key), list):
            kept[key] = [{k: v for k, v in p.items() if k in _PART_FIELDS} if isinstance(p, dict) else p for p in kept[key]]
    return kept


def _conversation(items: list[dict[str, Any]], offset: int, open_seal: OpenSeal | None) -> tuple[list[TextBlock], list[Message]]:
    """Input items -> system blocks and messages. `offset` items came from the stored history,
    so error messages count positions in the client's own `input` only."""
    system: list[TextBlock] = []
    messages: list[Message] = []
    by_id = {
        item["id"]: item for item in items if isinstance(item.get("id"), str) and item.get("type") != "item_reference"
    }

    def assistant_turn() -> Message:
        # Consecutive assistant items (reasoning, text, calls) are one turn of the model.
        if messages and messages[-1].role == "assistant":
            return messages[-1]
        messages.append(Message("assistant", []))
        return messages[-1]

    def results_turn() -> Message:
        last = messages[-1] if messages else None
        if last is not None and last.role == "user" and last.content and all(isinstance(b, ToolResultBlock) for b in last.content):
            return last
        messages.append(Message("user", []))
        return messages[-1]

    for n, item in enumerate(items):
        where = f"input[{n - offset}]" if n >= offset else f"previous_response_id item {n}"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "item_reference":
            ref = by_id.get(item.get("id")) if isinstance(item.get("id"), str) else None
            if ref is None or ref.get("type") == "item_reference":
                raise invalid(f"'{where}' refers to an item this conversation does not hold.", param=where)
            item, kind = ref, ref.get("type", "message")
        if kind == "message":
            role = item.get("role")
            blocks = _content_blocks(item.get("content"), f"{where}.content")
            if role in ("system", "developer"):
                texts = [b for b in blocks if isinstance(b, TextBlock)]
                if len(texts) != len(blocks):
                    raise invalid(f"'{where}.content' of a {role} message may only contain text.", param=f"{where}.content")
                if messages:
                    messages.append(Message("system", list(texts)))
                else:
                    system.extend(texts)
            elif role == "user":
                messages.append(Message("user", blocks))
            elif role == "assistant":
                assistant_turn().content.extend(b for b in blocks if not (isinstance(b, TextBlock) and not b.text))
            else:
                raise invalid(
                    f"'{where}.role' must be one of user, assistant, system or developer; got {shown(role)}.", param=f"{where}.role"
                )
        elif kind in ("function_call", "custom_tool_call"):
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
                raise invalid(f"'{where}' needs a 'call_id' and a 'name'.", param=where)
            if isinstance(item.get("namespace"), str) and item["namespace"]:
                name = qualified_name(item["namespace"], name)
            if kind == "function_call":
                args = item.get("arguments", "{}")
                args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            else:
                args = json.dumps({"input": item.get("input", "")}, ensure_ascii=False)
            assistant_turn().content.append(ToolUseBlock(call_id, name, args or "{}"))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid(f"'{where}.call_id' is required.", param=f"{where}.call_id")
            content = _output_blocks(item.get("output"), f"{where}.output")
            results_turn().content.append(ToolResultBlock(call_id, content))
        elif kind == "reasoning":
            block = _reasoning_block(item, open_seal)
            if block is not None:
                assistant_turn().content.append(block)
        # Anything else (web_search_call, local_shell_call, compaction, …) belongs to tools this
        # platform does not run; replayed by clients, it is skipped rather than refused.
    messages = [m for m in messages if m.content]
    if not messages:
        raise invalid("'input' must contain at least one message.", param="input")
    return system, messages


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
        if not isinstance(part, dict):
            raise wrong_type(at, "a content part object", part)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise wrong_type(f"{at}.text", "a string", text)
            blocks.append(TextBlock(text))
        elif kind == "refusal":
            blocks.append(TextBlock(str(part.get("refusal", ""))))
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if not isinstance(url, str) or not url:
                raise invalid(
                    f"'{at}.image_url' must be a URL or a data: URI (uploaded file ids are not supported).", param=at
                )
            blocks.append(image_from_url(url))
        else:
            raise invalid(f"'{at}.type' {shown(kind)} is not supported; send input_text or input_image parts.", param=f"{at}.type")
    return blocks


def _output_blocks(output: Any, where: str) -> list[TextBlock | ImageBlock]:
    if isinstance(output, str):
        return [TextBlock(output)]
    if isinstance(output, list):
        return [b for b in _content_blocks(output, where) if isinstance(b, (TextBlock, ImageBlock))]
    if output is None:
        return []
    return [TextBlock(json.dumps(output, ensure_ascii=False))]


def _reasoning_block(item: dict[str, Any], open_seal: OpenSeal | None) -> ThinkingBlock | None:
    """A replayed reasoning item: verified when its seal opens, else its text, unverified."""
    sealed = open_seal(item.get("encrypted_content")) if open_seal is not None else None
    if sealed is not None:
        return ThinkingBlock(sealed, verified=True)
    for key in ("content", "summary"):
        parts = item.get(key)
        if isinstance(parts, list):
            text = "".join(p.get("text", "") for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
            if text:
                return ThinkingBlock(text)
    return None


def _decode_tools(raw: list[Any]) -> tuple[list[ToolSpec], list[dict[str, Any]], dict[str, tuple[str, str]]]:
    """Function tools, in the flat Responses form (the nested Chat form is accepted too), and the
    function tools grouped in a `namespace`, which the model sees as `<namespace>__<name>`.

    Returns the canonical tools, their echo for the response object, and the namespaced names
    (canonical name -> (namespace, name)). Every other tool type (web_search, custom,
    local_shell, mcp, …) runs on some other provider's servers: it is skipped, never refused,
    so agents that offer them still work.
    """
    tools: list[ToolSpec] = []
    echo: list[dict[str, Any]] = []
    namespaced: dict[str, tuple[str, str]] = {}
    for i, tool in enumerate(raw):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise wrong_type(at, "an object", tool)
        if tool.get("type") == "function":
            spec, fn_echo = _function_tool(tool, at)
            tools.append(spec)
            echo.append({"type": "function", **fn_echo})
        elif tool.get("type") == "namespace":
            space = tool.get("name")
            if not isinstance(space, str) or not space:
                raise invalid(f"'{at}.name' is required for a namespace.", param=f"{at}.name")
            inner = tool.get("tools") if isinstance(tool.get("tools"), list) else []
            members = []
            for j, member in enumerate(inner):
                if not isinstance(member, dict) or member.get("type") != "function":
                    continue
                spec, fn_echo = _function_tool(member, f"{at}.tools[{j}]")
                namespaced[qualified_name(space, spec.name)] = (space, spec.name)
                spec.name = qualified_name(space, spec.name)
                tools.append(spec)
                members.append({"type": "function", **fn_echo})
            description = tool.get("description")
            echo.append(
                {
                    "type": "namespace",
                    "name": space,
                    "description": description if isinstance(description, str) else "",
                    "tools": members,
                }
            )
    return tools, echo, namespaced


def qualified_name(namespace: str, name: str) -> str:
    """A namespaced function's name as the model sees it (only [A-Za-z0-9_-], as every engine accepts)."""
    return f"{namespace}__{name}"


def _function_tool(tool: dict[str, Any], at: str) -> tuple[ToolSpec, dict[str, Any]]:
    fn = tool["function"] if isinstance(tool.get("function"), dict) else tool
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise invalid(f"'{at}.name' is required.", param=f"{at}.name")
    description = fn.get("description") or ""
    if not isinstance(description, str):
        raise wrong_type(f"{at}.description", "a string", description)
    parameters = json_schema_object(fn.get("parameters"), f"{at}.parameters")
    strict = fn.get("strict")
    echo = {
        "name": name,
        "description": description or None,
        "parameters": parameters,
        "strict": strict if isinstance(strict, bool) else None,
    }
    return ToolSpec(name, description, parameters), echo


def _decode_tool_choice(raw: Any, tools: list[ToolSpec]) -> tuple[ToolChoice, str | dict[str, Any]]:
    if raw is None:
        return ToolChoice("auto"), "auto"
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw), raw
    if isinstance(raw, dict):
        kind = raw.get("type")
        if kind == "function":
            name = raw.get("name")
            if not isinstance(name, str) and isinstance(raw.get("function"), dict):
                name = raw["function"].get("name")
            if not isinstance(name, str) or not name:
                raise invalid("'tool_choice.name' is required for a function tool choice.", param="tool_choice.name")
            if name not in {t.name for t in tools}:
                raise invalid(f"'tool_choice' names the function {shown(name)}, which is not in 'tools'.", param="tool_choice")
            return ToolChoice("tool", name), {"type": "function", "name": name}
        if kind == "allowed_tools":
            mode = raw.get("mode", "auto")
            if mode not in ("auto", "required"):
                raise invalid("'tool_choice.mode' must be 'auto' or 'required'.", param="tool_choice.mode")
            return ToolChoice(mode), mode
        if isinstance(kind, str):
            return ToolChoice("auto"), "auto"  # a hosted tool this platform skips
    raise invalid(
        "'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": …}.", param="tool_choice"
    )


def _decode_format(raw: dict[str, Any] | None) -> tuple[ResponseFormat, dict[str, Any]]:
    if raw is None or raw.get("type") == "text":
        return ResponseFormat(), {"type": "text"}
    kind = raw.get("type")
    if kind == "json_object":
        return ResponseFormat("json_object"), {"type": "json_object"}
    if kind == "json_schema":
        schema = raw.get("schema")
        if not isinstance(schema, dict):
            raise invalid("'text.format.schema' must be a JSON schema object.", param="text.format.schema")
        name = raw.get("name")
        if name is not None and not isinstance(name, str):
            raise wrong_type("text.format.name", "a string", name)
        description = raw.get("description")
        echo: dict[str, Any] = {
            "type": "json_schema",
            "name": name or "response",
            "description": description if isinstance(description, str) else None,
            "schema": schema,
            "strict": raw.get("strict") is True,  # the format's default is false
        }
        return ResponseFormat("json_schema", schema, name), echo
    raise invalid("'text.format.type' must be 'text', 'json_object' or 'json_schema'.", param="text.format.type")


def _decode_thinking(body: dict[str, Any], reasoning: dict[str, Any]) -> bool | None:
    """The canonical thinking switch: the platform's own `thinking` field wins; otherwise
    `reasoning.effort` decides ("none"/"minimal" turn it off), and asking for a reasoning
    summary turns it on. With neither, the model decides."""
    if body.get("thinking") is not None:
        return decode_thinking({"thinking": body["thinking"]})
    effort = reasoning.get("effort")
    if effort is not None:
        if not isinstance(effort, str):
            raise wrong_type("reasoning.effort", "a string", effort)
        return effort not in ("none", "minimal")
    summary = reasoning.get("summary", reasoning.get("generate_summary"))
    if summary in REASONING_SUMMARIES:
        return True
    return None


def _decode_metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise wrong_type("metadata", "an object of string values", raw)
    if len(raw) > 16:
        raise invalid("'metadata' may hold at most 16 keys.", param="metadata")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise wrong_type(f"metadata.{key}", "a string", value)
        if len(key) > 64 or len(value) > 512:
            raise invalid("'metadata' keys are at most 64 characters and values at most 512.", param="metadata")
    return dict(raw)


# ---------------------------------------------------------------------------------------- encode


def usage_body(usage: Usage, reasoning_tokens: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, usage.output_tokens)},
        "total_tokens": usage.total_tokens,
    }


def in_responses_terms(err: ApiError) -> ApiError:
    """The error with the request field it names spelled as this format does (the gateway and
    engines name the canonical fields: `messages`, `max_tokens`, `response_format`)."""
    name = _FIELD_NAMES.get(err.param or "")
    if name is not None:
        if err.param == "max_tokens":
            err.message = err.message.replace("max_tokens", name)
        err.param = name
    return err


def error_body(err: ApiError) -> dict[str, Any]:
    """The `error` of a failed response: the platform's code, as Codex and the SDKs read it."""
    err = in_responses_terms(err)
    return {"code": err.code, "message": err.message, "param": err.param, "type": OPENAI_TYPES[err.kind]}


@dataclass(slots=True)
class _Item:
    """One output item while it streams."""

    kind: str  # "message" | "reasoning" | "function_call"
    id: str
    index: int
    parts: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    namespace: str | None = None
    done: bool = False

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ResponseEncoder:
    """Canonical events -> Responses stream events (dicts), building the response object.

    Output items stream one at a time: a new kind of content closes the item before it. Every
    event carries the next `sequence_number`; `output_index` and `item_id` name the same item
    from its `output_item.added` to its `output_item.done`. The stream always ends in exactly
    one of `response.completed`, `response.incomplete` or `response.failed`.
    """

    def __init__(
        self,
        request: ResponsesRequest,
        *,
        response_id: str | None = None,
        created_at: int | None = None,
        live_usage: Usage | None = None,
        sampling: Sampling | None = None,
        seal: Seal | None = None,
    ) -> None:
        """`live_usage` is the engine's running count, reported if a stream fails before its
        own `Usage` event. `sampling` is what the engine samples with (`Engine.sampling`);
        without it (no engine ran) the request's own values are reported."""
        self.request = request
        self.sampling = sampling
        self.id = response_id or new_response_id()
        # Reasoning items always carry their seal (asked for with `include` or not): it is what
        # lets a replayed item, or one kept in a stored conversation, count as the model's own.
        self.seal = seal
        self.response: dict[str, Any] = self._base(created_at if created_at is not None else int(time.time()))
        self.finished = False
        self._seq = 0
        self._items: list[_Item] = []
        self._output: list[dict[str, Any]] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._usage: Usage | None = None
        self._live_usage = live_usage
        self._reasoning_tokens = 0

    def _sampled(self, name: str) -> float:
        """A sampling value for the response object, which must report a number."""
        if self.sampling is not None:
            value = getattr(self.sampling, name)
        else:
            value = getattr(self.request.chat, name, None)
        return value if value is not None else getattr(UNKNOWN_SAMPLING, name)

    def _base(self, created_at: int) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id,
            "object": "response",
            "created_at": created_at,
            "completed_at": None,
            "status": "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens,
            "max_tool_calls": r.max_tool_calls,
            "metadata": r.metadata,
            "model": r.chat.model,
            "output": [],
            "parallel_tool_calls": r.chat.tool_choice.parallel,
            "previous_response_id": r.previous_response_id,
            "prompt_cache_key": r.prompt_cache_key,
            "reasoning": r.reasoning,
            "safety_identifier": r.safety_identifier,
            "service_tier": "default",
            "store": r.store,
            "temperature": self._sampled("temperature"),
            "top_p": self._sampled("top_p"),
            "presence_penalty": self._sampled("presence_penalty"),
            "frequency_penalty": self._sampled("frequency_penalty"),
            "top_logprobs": 0,  # no engine returns log probabilities
            "text": r.text,
            "tool_choice": r.tool_choice,
            "tools": r.tools,
            "truncation": r.truncation,
            "usage": None,
            "user": r.user,
        }

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.response)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> list[dict[str, Any]]:
        return [
            self._event("response.created", response=self._snapshot()),
            self._event("response.in_progress", response=self._snapshot()),
        ]

    def encode(self, event: Event) -> list[dict[str, Any]]:
        if self.finished:
            return []
        if isinstance(event, TextDelta):
            out = self._ensure("message")
            self._open.parts.append(event.text)  # type: ignore[union-attr]
            item = self._open
            out.append(
                self._event(
                    "response.output_text.delta",
                    item_id=item.id,  # type: ignore[union-attr]
                    output_index=item.index,  # type: ignore[union-attr]
                    content_index=0,
                    delta=event.text,
                    logprobs=[],
                )
            )
            return out
        if isinstance(event, ThinkingDelta):
            out = self._ensure("reasoning")
            item = self._open
            item.parts.append(event.text)  # type: ignore[union-attr]
            self._reasoning_tokens += 1
            out.append(
                self._event(
                    "response.reasoning_text.delta",
                    item_id=item.id,  # type: ignore[union-attr]
                    output_index=item.index,  # type: ignore[union-attr]
                    content_index=0,
                    delta=event.text,
                )
            )
            return out
        if isinstance(event, ToolCallStart):
            limit = self.request.max_tool_calls
            if limit is not None and len(self._calls) >= limit:
                return []  # past `max_tool_calls` a call is dropped, its deltas and end with it
            out = self._close_open()
            item = self._new("function_call", "fc")
            item.call_id = event.id
            item.namespace, item.name = self.request.namespaced.get(event.name, (None, event.name))
            self._calls[event.index] = item
            self._open = item
            out.append(self._event("response.output_item.added", output_index=item.index, item=self._call_item(item, "in_progress")))
            return out
        if isinstance(event, ToolCallDelta):
            item = self._calls.get(event.index)
            if item is None or item.done or not event.arguments:
                return []
            item.parts.append(event.arguments)
            return [
                self._event(
                    "response.function_call_arguments.delta", item_id=item.id, output_index=item.index, delta=event.arguments
                )
            ]
        if isinstance(event, ToolCallEnd):
            item = self._calls.get(event.index)
            if item is None or item.done:
                return []
            return self._close(item, "completed")
        if isinstance(event, Usage):
            self._usage = event
            return []
        if isinstance(event, Finish):
            return self._finish(event)
        if isinstance(event, Error):
            return self.fail(event.error)
        return []

    def close(self) -> list[dict[str, Any]]:
        """End of the engine's events: a stream that never finished is a failure, not a success."""
        if self.finished:
            return []
        return self.fail(ApiError("server", "internal_error", "The engine ended the reply without finishing it; please retry."))

    def fail(self, err: ApiError, usage: Usage | None = None) -> list[dict[str, Any]]:
        if self.finished:
            return []
        out = self._close_all("incomplete")
        self.response["error"] = error_body(err)
        out.append(self._terminal("response.failed", "failed", usage))
        return out

    def refuse(self, err: ApiError) -> list[dict[str, Any]]:
        """A request refused before any output (its prompt does not fit): the whole stream.

        The message is also written as an output message, because some clients (Codex) replace
        a known error code with their own generic words and the user would never see the numbers.
        """
        out = self.start()
        item = self._new("message", "msg")
        self._open = item
        out.extend(self._open_events(item))
        item.parts.append(err.message)
        out.append(
            self._event(
                "response.output_text.delta", item_id=item.id, output_index=item.index, content_index=0, delta=err.message, logprobs=[]
            )
        )
        out.extend(self.fail(err, Usage()))
        return out

    # ------------------------------------------------------------------ items

    def _new(self, kind: str, prefix: str) -> _Item:
        item = _Item(kind, _item_id(prefix), len(self._items))
        self._items.append(item)
        return item

    def _ensure(self, kind: str) -> list[dict[str, Any]]:
        """Make sure an item of `kind` is the one streaming; returns the events that took."""
        if self._open is not None and self._open.kind == kind and not self._open.done:
            return []
        out = self._close_open()
        item = self._new(kind, "msg" if kind == "message" else "rs")
        self._open = item
        out.extend(self._open_events(item))
        return out

    def _open_events(self, item: _Item) -> list[dict[str, Any]]:
        if item.kind == "message":
            added = {"id": item.id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            added = {"id": item.id, "type": "reasoning", "status": "in_progress", "summary": [], "content": []}
            part = {"type": "reasoning_text", "text": ""}
        return [
            self._event("response.output_item.added", output_index=item.index, item=added),
            self._event("response.content_part.added", item_id=item.id, output_index=item.index, content_index=0, part=part),
        ]

    def _close_open(self, status: str = "completed") -> list[dict[str, Any]]:
        if self._open is None or self._open.done:
            return []
        return self._close(self._open, status)

    def _close_all(self, status: str) -> list[dict[str, Any]]:
        out = self._close_open(status)
        for item in self._items:
            if not item.done:
                out.extend(self._close(item, status))
        return out

    def _close(self, item: _Item, status: str) -> list[dict[str, Any]]:
        item.done = True
        if self._open is item:
            self._open = None
        base = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            final = self._call_item(item, status)
            out = [self._event("response.function_call_arguments.done", **base, arguments=final["arguments"])]
        elif item.kind == "message":
            part = {"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}
            final = {"id": item.id, "type": "message", "status": status, "role": "assistant", "content": [part]}
            out = [
                self._event("response.output_text.done", **base, content_index=0, text=item.text, logprobs=[]),
                self._event("response.content_part.done", **base, content_index=0, part=part),
            ]
        else:
            part = {"type": "reasoning_text", "text": item.text}
            final = {"id": item.id, "type": "reasoning", "status": status, "summary": [], "content": [part]}
            if self.seal is not None:
                final["encrypted_content"] = self.seal(item.text)
            out = [
                self._event("response.reasoning_text.done", **base, content_index=0, text=item.text),
                self._event("response.content_part.done", **base, content_index=0, part=part),
            ]
        self._output.append(final)
        out.append(self._event("response.output_item.done", output_index=item.index, item=final))
        return out

    @staticmethod
    def _call_item(item: _Item, status: str) -> dict[str, Any]:
        arguments = item.text if status == "in_progress" else (item.text or "{}")
        call = {
            "id": item.id,
            "type": "function_call",
            "status": status,
            "call_id": item.call_id,
            "name": item.name,
            "arguments": arguments,
        }
        if item.namespace:
            call["namespace"] = item.namespace
        return call

    # ------------------------------------------------------------------ the end

    def _finish(self, finish: Finish) -> list[dict[str, Any]]:
        if finish.reason in ("length", "content_filter"):
            out = self._close_all("incomplete")
            reason = "max_output_tokens" if finish.reason == "length" else "content_filter"
            self.response["incomplete_details"] = {"reason": reason}
            out.append(self._terminal("response.incomplete", "incomplete"))
            return out
        if finish.reason == "error":
            return self.fail(ApiError("upstream", "upstream_error", "The engine stopped with an error; please retry."))
        out = self._close_all("completed")
        out.append(self._terminal("response.completed", "completed"))
        return out

    def _terminal(self, kind: str, status: str, usage: Usage | None = None) -> dict[str, Any]:
        self.finished = True
        # Output in output_index order, whatever order the items closed in.
        order = {item.id: item.index for item in self._items}
        self.response["output"] = sorted(self._output, key=lambda o: order[o["id"]])
        self.response["status"] = status
        final = usage or self._usage or self._live_usage or Usage()
        self.response["usage"] = usage_body(final, self._reasoning_tokens)
        if status == "completed":
            self.response["completed_at"] = int(time.time())
        return self._event(kind, response=self._snapshot())
