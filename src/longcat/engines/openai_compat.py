"""The `openai_compat` engine: a model served by an upstream OpenAI-compatible server.

vLLM, SGLang, llama.cpp server, Ollama, or anything else that serves `POST /v1/chat/completions`
with SSE streaming. The platform keeps its own accounts, keys, quotas and wire formats; the
upstream only generates. Every request is streamed from the upstream (a non-streaming client
gets the same stream, collected by the gateway).

    [[models]]
    id = "qwen3-32b"
    engine = "openai_compat"
    context_window = 32768            # what the upstream really serves (its max_model_len)
    max_output = 8192
    base_url = "http://10.0.0.5:8000/v1"
    upstream_model = "Qwen/Qwen3-32B"
    api_key_env = "VLLM_API_KEY"
    tokenize = "vllm"
    thinking_param = "chat_template_kwargs"

Options (keys of the `[[models]]` table):

- `base_url` (e.g. "http://10.0.0.5:8000/v1"), or `base_urls` = [...] for several replicas of one
  model: requests go round-robin, and a replica that cannot be connected to (refused, connect
  timeout, dropped before any byte of the reply) is skipped for a few seconds while the request
  moves on to the next one. Nothing is retried once the upstream has started answering.
- `upstream_model`: the model name sent upstream; default the catalog `id`.
- `api_key`, or `api_key_env` (the name of an environment variable holding it): sent as
  `Authorization: Bearer …`. Never logged, never shown.
- `timeout`: seconds, a number (connect and read) or a table `{ connect = 5, read = 600 }`.
  "read" is the longest silence tolerated between two pieces of the reply (a long prompt being
  read, a queue on the upstream). Defaults: connect 5, read 600.
- `max_connections`: open connections to the upstream (default 64). Requests beyond it wait
  for a free connection up to 30 s, then get 503 `overloaded`.
- `tokenize`: how prompts are counted before admission (quota reservation and the context
  check). "vllm": the upstream's `POST /tokenize` with the chat messages (vLLM, SGLang), exact;
  "llamacpp": llama.cpp server's `POST /apply-template` then `POST /tokenize`, exact; "none"
  (default): an estimate that errs high (about 3 characters, or 1 non-ASCII character, a
  token). With "none" the estimate only sizes the reservation: it never refuses a prompt, the
  upstream decides whether the prompt fits its context (its error comes back as
  `context_length_exceeded`). An upstream that cannot count (down, no such route) gets the
  estimate too, with one warning in the log. With an exact count, `max_tokens` is lowered to
  what the context has room for (vLLM refuses prompt + max_tokens beyond it). `/tokenize` lives
  at the server root: `base_url` without its trailing `/v1`.
  Whatever the mode, what is billed is the upstream's own count (`usage` of its last chunk);
  a stream cut before that chunk is billed with the prompt count above and an estimate of the
  output received.
- `thinking_param`: how the request's thinking switch reaches the upstream. Unset (default):
  not sent. "chat_template_kwargs": `{"chat_template_kwargs": {"enable_thinking": bool}}` (vLLM
  and SGLang with Qwen3-style templates); "chat_template_kwargs.<name>" uses another key (e.g.
  `.thinking` for DeepSeek-V3.1); "thinking": `{"thinking": {"type": "enabled" | "disabled"}}`.
- `send_reasoning_content` (default false): replay the reasoning of earlier assistant turns to
  the upstream as `reasoning_content`; by default it is dropped, as most chat templates do.
- `extra_body`: a table of fields added to every upstream request unless the request sets them
  (e.g. `{ repetition_penalty = 1.05 }`).

The upstream's reasoning (`reasoning_content` or `reasoning` deltas) becomes thinking; `<think>`
tags inside plain content are not parsed (start vLLM / SGLang with a reasoning parser). Tool
calls need the upstream's tool-call parser too (vLLM: `--enable-auto-tool-choice
--tool-call-parser …`). Tool-call ids that are not `^[a-zA-Z0-9_-]+$` are rewritten to match.

The module is in three parts: the pure translation (canonical request -> upstream body, upstream
SSE bytes -> canonical events, upstream errors -> `ApiError`), then the engine, which does the I/O.
"""

from __future__ import annotations

import codecs
import functools
import itertools
import json
import logging
import os
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from longcat.canonical import (
    ApiError,
    Block,
    ChatRequest,
    Error,
    Event,
    Finish,
    FinishReason,
    ImageBlock,
    Message,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
    new_tool_call_id,
)
from longcat.config import ConfigError, ModelConfig
from longcat.engines.base import CallContext, Engine, StopMatcher

log = logging.getLogger("longcat.engine.openai_compat")

OPTION_KEYS = {
    "base_url",
    "base_urls",
    "upstream_model",
    "api_key",
    "api_key_env",
    "timeout",
    "max_connections",
    "tokenize",
    "thinking_param",
    "send_reasoning_content",
    "extra_body",
}
TOKENIZE_MODES = ("vllm", "llamacpp", "none")
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 600.0
DEFAULT_MAX_CONNECTIONS = 64
# How long a request waits for a free connection when `max_connections` are all busy.
POOL_WAIT = 30.0
# How long a replica that could not be connected to is passed over.
REPLICA_COOLDOWN = 5.0
# Upstream error bodies read (and messages shown) are cut to these sizes.
MAX_ERROR_BODY = 64 * 1024
MAX_ERROR_MESSAGE = 400
# A single SSE line longer than this is not a stream we can trust.
MAX_SSE_LINE = 16 * 1024 * 1024
# Estimated prompt tokens per image when the upstream cannot count them for us.
IMAGE_TOKENS_ESTIMATE = 1024
# Estimated tokens a message's role and separators take.
MESSAGE_OVERHEAD = 4


# ============================================================================ options


@dataclass(slots=True)
class Options:
    """A catalog entry's options, checked once at start-up."""

    base_urls: list[str]
    upstream_model: str
    api_key: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    tokenize: str = "none"
    thinking_param: str | None = None
    send_reasoning_content: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)


def parse_options(model: ModelConfig, env: dict[str, str] | None = None) -> Options:
    """Check a model's options; raises `ConfigError` naming the model and the option."""
    opts = model.options
    where = f"model {model.id!r}"
    unknown = sorted(set(opts) - OPTION_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)} for engine 'openai_compat' (known: {', '.join(sorted(OPTION_KEYS))})")

    if ("base_url" in opts) == ("base_urls" in opts):
        raise ConfigError(f"{where}: give exactly one of 'base_url' or 'base_urls'")
    raw_urls = [opts["base_url"]] if "base_url" in opts else opts["base_urls"]
    if not isinstance(raw_urls, list) or not raw_urls:
        raise ConfigError(f"{where}: 'base_urls' must be a non-empty array of URLs")
    urls = []
    for url in raw_urls:
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"{where}: base URL {safe_url(str(url))!r} must start with http:// or https://")
        urls.append(url.rstrip("/"))

    upstream_model = opts.get("upstream_model", model.id)
    if not isinstance(upstream_model, str) or not upstream_model:
        raise ConfigError(f"{where}: 'upstream_model' must be a non-empty string")

    if "api_key" in opts and "api_key_env" in opts:
        raise ConfigError(f"{where}: give 'api_key' or 'api_key_env', not both")
    api_key = opts.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigError(f"{where}: 'api_key' must be a string")
    if "api_key_env" in opts:
        name = opts["api_key_env"]
        env = dict(os.environ) if env is None else env
        if not isinstance(name, str) or not env.get(name):
            raise ConfigError(f"{where}: 'api_key_env' names the environment variable {name!r}, which is not set")
        api_key = env[name]

    connect, read = DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT
    timeout = opts.get("timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        connect = read = float(timeout)
    elif isinstance(timeout, dict) and set(timeout) <= {"connect", "read"}:
        connect = float(timeout.get("connect", connect))
        read = float(timeout.get("read", read))
    elif timeout is not None:
        raise ConfigError(f"{where}: 'timeout' must be seconds, or a table {{ connect = …, read = … }}")
    if connect <= 0 or read <= 0:
        raise ConfigError(f"{where}: timeouts must be positive")

    max_connections = opts.get("max_connections", DEFAULT_MAX_CONNECTIONS)
    if not isinstance(max_connections, int) or isinstance(max_connections, bool) or max_connections <= 0:
        raise ConfigError(f"{where}: 'max_connections' must be a positive integer")

    tokenize = opts.get("tokenize", "none")
    if tokenize not in TOKENIZE_MODES:
        raise ConfigError(f"{where}: 'tokenize' must be one of {', '.join(TOKENIZE_MODES)}")

    thinking_param = opts.get("thinking_param")
    if thinking_param is not None and not (
        thinking_param in ("thinking", "chat_template_kwargs")
        or (isinstance(thinking_param, str) and re.fullmatch(r"chat_template_kwargs\.\w+", thinking_param))
    ):
        raise ConfigError(f"{where}: 'thinking_param' must be 'chat_template_kwargs', 'chat_template_kwargs.<name>' or 'thinking'")

    send_reasoning = opts.get("send_reasoning_content", False)
    if not isinstance(send_reasoning, bool):
        raise ConfigError(f"{where}: 'send_reasoning_content' must be true or false")
    extra_body = opts.get("extra_body", {})
    if not isinstance(extra_body, dict):
        raise ConfigError(f"{where}: 'extra_body' must be a table")

    return Options(
        base_urls=urls,
        upstream_model=upstream_model,
        api_key=api_key or None,
        connect_timeout=connect,
        read_timeout=read,
        max_connections=max_connections,
        tokenize=tokenize,
        thinking_param=thinking_param,
        send_reasoning_content=send_reasoning,
        extra_body=dict(extra_body),
    )


def safe_url(url: str) -> str:
    """A URL fit to show: no user, password, query or fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def server_root(base_url: str) -> str:
    """Where `/tokenize` lives: the base URL without its trailing `/v1`."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


# ============================================================================ request -> upstream body


def chat_body(request: ChatRequest, options: Options, *, max_tokens: int | None = None) -> dict[str, Any]:
    """The upstream Chat Completions body for a canonical request (always streamed, with usage)."""
    body: dict[str, Any] = {
        "model": options.upstream_model,
        "messages": chat_messages(request, send_reasoning=options.send_reasoning_content),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = [_tool(t.name, t.description, t.parameters) for t in request.tools]
        choice = request.tool_choice
        if choice.mode in ("none", "required"):
            body["tool_choice"] = choice.mode
        elif choice.mode == "tool" and choice.name:
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        if not choice.parallel:
            body["parallel_tool_calls"] = False
    budget = max_tokens if max_tokens is not None else request.max_tokens
    if budget is not None:
        body["max_tokens"] = budget
    for name in ("temperature", "top_p", "top_k", "seed"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop:
        body["stop"] = list(request.stop)
    fmt = request.response_format
    if fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt.type == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": fmt.name or "response", "schema": fmt.schema or {}}}
    if request.thinking is not None and options.thinking_param:
        if options.thinking_param == "thinking":
            body["thinking"] = {"type": "enabled" if request.thinking else "disabled"}
        else:
            key = options.thinking_param.partition(".")[2] or "enable_thinking"
            body["chat_template_kwargs"] = {key: request.thinking}
    for key, value in options.extra_body.items():
        if key not in body:
            body[key] = value
        elif isinstance(body[key], dict) and isinstance(value, dict):
            body[key] = {**value, **body[key]}
    return body


def _tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name}
    if description:
        fn["description"] = description
    fn["parameters"] = parameters
    return {"type": "function", "function": fn}


def chat_messages(request: ChatRequest, *, send_reasoning: bool = False) -> list[dict[str, Any]]:
    """Canonical system blocks and messages -> OpenAI chat messages.

    Tool results (canonical: blocks in a user turn) become `tool` messages, first, since they
    answer the assistant turn just before; images a tool returned follow in a user message
    (a `tool` message carries text only).
    """
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system_text()})
    for message in request.messages:
        if message.role == "system":
            out.append({"role": "system", "content": message.text()})
        elif message.role == "assistant":
            out.append(_assistant_message(message, send_reasoning))
        else:
            out.extend(_user_messages(message))
    return out


def _assistant_message(message: Message, send_reasoning: bool) -> dict[str, Any]:
    text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
    calls = [b for b in message.content if isinstance(b, ToolUseBlock)]
    out: dict[str, Any] = {"role": "assistant", "content": text if (text or not calls) else None}
    if calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}} for c in calls
        ]
    if send_reasoning:
        reasoning = "".join(b.text for b in message.content if isinstance(b, ThinkingBlock) and not b.redacted)
        if reasoning:
            out["reasoning_content"] = reasoning
    return out


def _user_messages(message: Message) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    parts: list[Block] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text()})
            parts.extend(b for b in block.content if isinstance(b, ImageBlock))
    parts.extend(b for b in message.content if isinstance(b, ImageBlock) or (isinstance(b, TextBlock) and b.text))
    if parts or not out:
        out.append({"role": "user", "content": _content(parts)})
    return out


def _content(blocks: list[Block]) -> str | list[dict[str, Any]]:
    if not blocks:
        return ""
    if len(blocks) == 1 and isinstance(blocks[0], TextBlock):
        return blocks[0].text
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": image_url(block)}})
    return parts


def image_url(block: ImageBlock) -> str:
    if block.url:
        return block.url
    return f"data:{block.media_type or 'image/png'};base64,{block.data or ''}"


# ============================================================================ token estimates


def estimate_text_tokens(text: str, chars_per_token: int = 3) -> int:
    """A tokenizer-free estimate: `chars_per_token` ASCII characters, or one other character, a token."""
    if not text:
        return 0
    ascii_chars = len(text.encode("ascii", "ignore"))
    return -(-ascii_chars // chars_per_token) + (len(text) - ascii_chars)


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """A prompt size that errs high (English runs ~4 characters a token; this counts 3)."""
    total = 0
    if request.system:
        total += MESSAGE_OVERHEAD + estimate_text_tokens(request.system_text())
    for message in request.messages:
        total += MESSAGE_OVERHEAD
        for block in message.content:
            if isinstance(block, (TextBlock, ThinkingBlock)):
                total += estimate_text_tokens(block.text)
            elif isinstance(block, ToolUseBlock):
                total += MESSAGE_OVERHEAD + estimate_text_tokens(block.name + block.arguments + block.id)
            elif isinstance(block, ToolResultBlock):
                total += MESSAGE_OVERHEAD + estimate_text_tokens(block.text())
                total += IMAGE_TOKENS_ESTIMATE * sum(isinstance(b, ImageBlock) for b in block.content)
            elif isinstance(block, ImageBlock):
                total += IMAGE_TOKENS_ESTIMATE
    for tool in request.tools:
        total += MESSAGE_OVERHEAD + estimate_text_tokens(tool.name + tool.description + json.dumps(tool.parameters))
    return total + 3  # the assistant turn's header


def estimate_output_tokens(text: str) -> int:
    """Output tokens in one streamed piece (at least 1), until the upstream's own count arrives.

    Most servers stream a token a chunk; a few batch several, so longer pieces count more."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    return max(1, ascii_chars // 4 + (len(text) - ascii_chars))


# ============================================================================ upstream errors

_CONTEXT_ERROR = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|max_model_len|model'?s? maximum|prompt is too long|"
    r"too many (input )?tokens|input (is )?too long|exceeds? the (available |maximum )?context|n_ctx|"
    r"reduce the length",
    re.IGNORECASE,
)


def _error_fields(body: Any, raw: str) -> tuple[str, str]:
    """(message, code-or-type) from the usual error bodies: OpenAI/vLLM, FastAPI, llama.cpp, text."""
    err: Any = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(err, str):
        return err, ""
    if isinstance(err, dict):
        message = err.get("message") or err.get("detail") or err.get("msg") or ""
        if isinstance(message, (list, dict)):
            message = json.dumps(message)
        code = " ".join(str(err.get(k)) for k in ("code", "type") if err.get(k) is not None)
        return str(message), code
    return raw, ""


def _clean(message: str, secrets: tuple[str, ...] = ()) -> str:
    """An upstream message fit to pass on: one line, short, without our credentials."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    message = re.sub(r"\s+", " ", message).strip()
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 1] + "…"
    return message


def _retry_after(headers: Any) -> str:
    value = (headers or {}).get("retry-after", "")
    return value if value.isdigit() and 0 < int(value) <= 3600 else "2"


def upstream_error(
    status: int,
    body: bytes | str,
    headers: Any = None,
    *,
    model_id: str,
    secrets: tuple[str, ...] = (),
) -> ApiError:
    """The client-facing error for an upstream's non-200 answer. Pure: the engine logs."""
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = None
    message, code = _error_fields(parsed, raw)
    said = _clean(message, secrets)
    if status in (401, 403):
        return ApiError(
            "upstream",
            "upstream_error",
            f"The model server behind {model_id!r} refused the platform's credentials (HTTP {status}); "
            f"the operator must check the model's api_key.",
        )
    if status in (429, 503):
        return ApiError(
            "overloaded",
            "overloaded",
            f"The model server behind {model_id!r} is busy (HTTP {status}); retry shortly.",
            headers={"Retry-After": _retry_after(headers)},
        )
    if status in (400, 413, 422) or (status >= 500 and _CONTEXT_ERROR.search(message)):
        if status == 413 or _CONTEXT_ERROR.search(message) or _CONTEXT_ERROR.search(code):
            return ApiError(
                "invalid_request",
                "context_length_exceeded",
                f"The request does not fit the context window of the model {model_id!r}"
                + (f"; the model server said: {said}" if said else "."),
                param="messages",
            )
        return ApiError(
            "invalid_request",
            "invalid_parameter",
            f"The model server behind {model_id!r} rejected the request" + (f": {said}" if said else f" (HTTP {status})."),
        )
    if status == 404:
        return ApiError(
            "upstream",
            "upstream_error",
            f"The model server behind {model_id!r} does not know the model or the route (HTTP 404); "
            f"the operator must check its base_url and upstream_model.",
        )
    return ApiError("upstream", "upstream_error", f"The model server behind {model_id!r} failed (HTTP {status}); please retry.")


def stream_error(payload: Any, *, model_id: str, secrets: tuple[str, ...] = ()) -> ApiError:
    """An `{"error": …}` object the upstream sent inside its stream."""
    message, code = _error_fields(payload, json.dumps(payload)[:MAX_ERROR_MESSAGE])
    err = payload.get("error") if isinstance(payload, dict) else None
    status = err.get("code") if isinstance(err, dict) else None
    if isinstance(status, int) and 400 <= status < 600:
        return upstream_error(status, json.dumps(payload), model_id=model_id, secrets=secrets)
    if _CONTEXT_ERROR.search(message) or _CONTEXT_ERROR.search(code):
        return upstream_error(400, json.dumps(payload), model_id=model_id, secrets=secrets)
    if re.search(r"overload|rate.?limit|busy", code, re.IGNORECASE):
        return upstream_error(503, json.dumps(payload), model_id=model_id, secrets=secrets)
    said = _clean(message, secrets)
    return ApiError(
        "upstream", "upstream_error", f"The model server behind {model_id!r} failed mid-reply" + (f": {said}" if said else ".")
    )


def malformed(model_id: str, what: str) -> ApiError:
    return ApiError("upstream", "upstream_error", f"The model server behind {model_id!r} sent a malformed stream ({what}).")


# ============================================================================ upstream stream -> events


class SSEDecoder:
    """Bytes of a `text/event-stream`, in any chunking, -> the `data` of each complete event."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._data: list[str] = []
        self._after_cr = False  # the last piece ended in "\r": a "\n" opening the next is its pair

    def feed(self, raw: bytes) -> list[str]:
        text = self._utf8.decode(raw)
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        if text:
            self._after_cr = text.endswith("\r")
        *lines, self._buf = (self._buf + text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if len(self._buf) > MAX_SSE_LINE:
            raise ValueError("an SSE line longer than 16 MiB")
        return [data for line in lines if (data := self._line(line)) is not None]

    def close(self) -> list[str]:
        """At the end of the body: an unterminated last event still counts (lenient)."""
        out = self.feed(self._utf8.decode(b"", final=True).encode() + b"\n")
        if self._data:
            out.append("\n".join(self._data))
            self._data = []
        return out

    def _line(self, line: str) -> str | None:
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def tool_call_id(upstream_id: Any) -> str:
    """The upstream's id if every client accepts it, a cleaned copy if not, a new one if none."""
    if not isinstance(upstream_id, str) or not upstream_id:
        return new_tool_call_id()
    if _TOOL_ID.match(upstream_id):
        return upstream_id
    cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", upstream_id)
    return cleaned if cleaned.strip("_") else new_tool_call_id()


@dataclass(slots=True)
class _Call:
    index: int  # canonical: order of first appearance
    id: str | None
    name: str = ""
    pending_args: list[str] = field(default_factory=list)
    started: bool = False
    ended: bool = False


_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
}


class ChunkTranslator:
    """Upstream `chat.completion.chunk` objects -> canonical events (pure; one per request).

    Tool calls come out one after another, as every encoder expects: a call starts (with its id
    and name) when its index first appears, and ends when the next call, text or the finish
    arrives. An upstream that went back to a call it had left would interleave two calls: that
    is reported as a malformed stream rather than silently producing broken arguments.

    Text goes through a `StopMatcher` too: upstreams apply `stop` themselves, so this only acts
    when one does not (and then says which sequence stopped the reply). When `stopped` is set the
    caller stops reading and calls `end`.
    """

    def __init__(self, *, model_id: str = "model", stop: list[str] | None = None, secrets: tuple[str, ...] = ()) -> None:
        self.model_id = model_id
        self.secrets = secrets
        self.stops = [s for s in (stop or []) if s]
        self.matcher = StopMatcher(self.stops)
        self.calls: dict[Any, _Call] = {}
        self.open: _Call | None = None
        self.finish_reason: str | None = None
        self.stop_reason: Any = None
        self.stopped: str | None = None
        self.usage: dict[str, int] = {}  # what the upstream reported: input, output, cached
        self.output_estimate = 0

    # ------------------------------------------------------------------ chunks

    def feed(self, chunk: Any) -> list[Event]:
        if self.stopped is not None:
            return []
        if not isinstance(chunk, dict):
            raise malformed(self.model_id, "a chunk that is not a JSON object")
        if "error" in chunk and not chunk.get("choices"):
            raise stream_error(chunk, model_id=self.model_id, secrets=self.secrets)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._take_usage(usage)
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise malformed(self.model_id, "'choices' is not an array")
        out: list[Event] = []
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise malformed(self.model_id, "'delta' is not an object")
            out.extend(self._delta(delta))
            if self.stopped is not None:
                return out
            reason = choice.get("finish_reason")
            if reason:
                self.finish_reason = str(reason)
                self.stop_reason = choice.get("stop_reason", self.stop_reason)
        return out

    def _take_usage(self, usage: dict[str, Any]) -> None:
        for name, key in (("input", "prompt_tokens"), ("output", "completion_tokens")):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self.usage[name] = value
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if isinstance(cached, int) and not isinstance(cached, bool) and cached >= 0:
            self.usage["cached"] = cached

    def _delta(self, delta: dict[str, Any]) -> list[Event]:
        out: list[Event] = []
        produced = ""
        reasoning = delta.get("reasoning_content")
        if not isinstance(reasoning, str) or not reasoning:
            reasoning = delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            out += self._end_open()
            rest = self.matcher.flush()  # text held back for a possible stop sequence goes first
            if rest:
                out.append(TextDelta(rest))
            out.append(ThinkingDelta(reasoning))
            produced += reasoning
        text = delta.get("content")
        if not isinstance(text, str) or not text:
            text = delta.get("refusal")
        if isinstance(text, str) and text:
            out += self._end_open()
            safe, stop = self.matcher.feed(text)
            if safe:
                out.append(TextDelta(safe))
            produced += text
            if stop is not None:
                self.stopped = stop
        calls = delta.get("tool_calls")
        if calls and self.stopped is None:
            if not isinstance(calls, list):
                raise malformed(self.model_id, "'tool_calls' is not an array")
            for position, call in enumerate(calls):
                out += self._tool_call(call, position)
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    produced += fn["arguments"]
        if produced:
            self.output_estimate += estimate_output_tokens(produced)
        return out

    def _end_open(self) -> list[Event]:
        if self.open is None:
            return []
        call, self.open = self.open, None
        if not call.started:
            raise malformed(self.model_id, "a tool call without a name")
        call.ended = True
        return [ToolCallEnd(call.index)]

    def _tool_call(self, raw: Any, position: int) -> list[Event]:
        if not isinstance(raw, dict):
            raise malformed(self.model_id, "a tool call that is not an object")
        fn = raw.get("function") or {}
        if not isinstance(fn, dict):
            raise malformed(self.model_id, "a tool call's 'function' is not an object")
        key = self._call_key(raw, position)
        call = self.calls.get(key)
        out: list[Event] = []
        if call is None:
            # Held-back text belongs before the call.
            rest = self.matcher.flush()
            if rest:
                out.append(TextDelta(rest))
            out += self._end_open()
            call = _Call(len(self.calls), raw.get("id") if isinstance(raw.get("id"), str) else None)
            self.calls[key] = call
            self.open = call
        elif call.ended:
            if fn.get("arguments") or (fn.get("name") and fn.get("name") != call.name):
                raise malformed(self.model_id, "tool calls interleaved")
            return out
        if not call.started:
            if call.id is None and isinstance(raw.get("id"), str) and raw["id"]:
                call.id = raw["id"]
            name = fn.get("name")
            if isinstance(name, str) and name and not call.name:
                call.name = name
        args = fn.get("arguments")
        if args is not None and not isinstance(args, str):
            args = json.dumps(args)  # some servers send an object
        if not call.started:
            if args:
                call.pending_args.append(args)
            if call.name:
                call.started = True
                out.append(ToolCallStart(call.index, tool_call_id(call.id), call.name))
                out.extend(ToolCallDelta(call.index, a) for a in call.pending_args)
                call.pending_args = []
        elif args:
            out.append(ToolCallDelta(call.index, args))
        return out

    def _call_key(self, raw: dict[str, Any], position: int) -> Any:
        index = raw.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        # No index (some servers send whole calls): a new id is a new call, else the latest one.
        call_id = raw.get("id")
        if isinstance(call_id, str) and call_id:
            for key, call in self.calls.items():
                if call.id == call_id:
                    return key
            return ("id", call_id)
        if self.open is not None:
            for key, call in self.calls.items():
                if call is self.open:
                    return key
        return ("position", position, len(self.calls))

    # ------------------------------------------------------------------ end

    def end(self, *, done: bool) -> tuple[list[Event], Finish]:
        """Close what is open and decide the finish. `done`: the upstream said `[DONE]`.

        Returns the remaining events and the `Finish` (the caller sends `Usage` between them).
        Raises `ApiError` if the stream was cut or ended in an upstream failure.
        """
        out: list[Event] = []
        rest = self.matcher.flush() if self.stopped is None else ""
        if rest:
            out.append(TextDelta(rest))
        for call in self.calls.values():
            if not call.started:
                raise malformed(self.model_id, "a tool call without a name")
        out += self._end_open()
        if self.stopped is not None:
            return out, Finish("stop_sequence", self.stopped)
        reason = self.finish_reason
        if reason is None and not done:
            raise ApiError(
                "upstream", "upstream_error", f"The model server behind {self.model_id!r} closed the stream before the reply was complete."
            )
        if reason in ("abort", "error"):
            raise ApiError("upstream", "upstream_error", f"The model server behind {self.model_id!r} aborted the reply ({reason}).")
        finish = _FINISH.get(reason or "stop", "stop")
        if finish == "stop":
            if isinstance(self.stop_reason, str) and self.stop_reason in self.stops:
                return out, Finish("stop_sequence", self.stop_reason)
            if self.calls:
                finish = "tool_calls"
        return out, Finish(finish)


class StreamReader:
    """Upstream response bytes, in any chunking -> canonical events (pure; one per request).

    SSE framing, JSON, `[DONE]` and the `ChunkTranslator` together. A failure part-way through a
    piece keeps the events before it: `feed` returns them and `raise_error` raises afterwards.
    """

    def __init__(self, translator: ChunkTranslator) -> None:
        self.translator = translator
        self.sse = SSEDecoder()
        self.done = False
        self.error: ApiError | None = None

    def feed(self, raw: bytes) -> list[Event]:
        if self.done or self.error is not None:
            return []
        try:
            payloads = self.sse.feed(raw)
        except ValueError as exc:
            self.error = malformed(self.translator.model_id, str(exc))
            return []
        return self._payloads(payloads)

    def feed_completion(self, raw: bytes) -> list[Event]:
        """A whole non-streamed `chat.completion` body."""
        try:
            events = self.translator.feed(completion_as_chunk(self._json(raw)))
        except ApiError as err:
            self.error = err
            return []
        self.done = True
        return events

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def end(self) -> tuple[list[Event], Finish]:
        """The body ended (or we stopped reading): the last events and the finish, or raises."""
        self.raise_error()
        out = [] if self.done else self._payloads(self.sse.close())
        self.raise_error()
        events, finish = self.translator.end(done=self.done)
        return out + events, finish

    def _payloads(self, payloads: list[str]) -> list[Event]:
        out: list[Event] = []
        for data in payloads:
            if data.strip() == "[DONE]":
                self.done = True
                break
            try:
                out += self.translator.feed(self._json(data))
            except ApiError as err:
                self.error = err
                break
            if self.translator.stopped is not None:
                self.done = True
                break
        return out

    def _json(self, data: str | bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError:
            raise malformed(self.translator.model_id, "data that is not JSON") from None


def completion_as_chunk(body: Any) -> dict[str, Any]:
    """A non-streamed `chat.completion` (an upstream that ignored `stream`) as one chunk."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return body
    choices = []
    for choice in body["choices"]:
        if not isinstance(choice, dict):
            continue
        message = dict(choice.get("message") or {})
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            message["tool_calls"] = [{**c, "index": i} for i, c in enumerate(calls) if isinstance(c, dict)]
        choices.append({**choice, "delta": message})
    return {**body, "choices": choices}


# ============================================================================ the engine


class OpenAICompatEngine(Engine):
    kind = "openai_compat"

    def __init__(self, model: ModelConfig, *, env: dict[str, str] | None = None) -> None:
        super().__init__(model)
        self.options = parse_options(model, env)
        self._secrets = (self.options.api_key,) if self.options.api_key else ()
        self._client: httpx.AsyncClient | None = None
        self._next = itertools.count()
        self._down_until = [0.0] * len(self.options.base_urls)
        self._count_warned = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        opts = self.options
        headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            verify=_tls_context(),
            timeout=httpx.Timeout(connect=opts.connect_timeout, read=opts.read_timeout, write=opts.read_timeout, pool=POOL_WAIT),
            limits=httpx.Limits(max_connections=opts.max_connections, max_keepalive_connections=opts.max_connections),
        )
        log.info(
            "model %s: upstream %s (model %s, %d replica%s)",
            self.model.id,
            ", ".join(safe_url(u) for u in opts.base_urls),
            opts.upstream_model,
            len(opts.base_urls),
            "" if len(opts.base_urls) == 1 else "s",
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def describe(self) -> dict[str, Any]:
        opts = self.options
        tokenizer = {
            "vllm": "the upstream's (POST /tokenize, vLLM / SGLang)",
            "llamacpp": "the upstream's (llama.cpp server POST /tokenize)",
            "none": "estimated before the request (about 3 characters a token); billed by the upstream's count",
        }[opts.tokenize]
        return {
            "type": "openai_compat",
            "description": "an upstream OpenAI-compatible server (Chat Completions, streamed)",
            "upstream": [safe_url(u) for u in opts.base_urls],
            "upstream_model": opts.upstream_model,
            "replicas": len(opts.base_urls),
            "tokenizer": tokenizer,
            "thinking_param": opts.thinking_param,
            "context_window": self.model.context_window,
            "max_output": self.model.max_output,
            "native_tool_calls": True,
        }

    # ------------------------------------------------------------------ replicas

    def _replica_order(self) -> list[int]:
        """Round-robin start; replicas recently unreachable go last (never dropped entirely)."""
        n = len(self.options.base_urls)
        first = next(self._next) % n
        order = [(first + k) % n for k in range(n)]
        now = time.monotonic()
        return [i for i in order if self._down_until[i] <= now] + [i for i in order if self._down_until[i] > now]

    async def _send(self, method: str, path: str, body: dict[str, Any], *, root: bool = False) -> httpx.Response:
        """Send to the first replica that answers; a streamed response the caller must close.

        Only failures before any byte of the reply move on to the next replica."""
        if self._client is None:
            raise RuntimeError("the engine was not started")
        tried = 0
        order = self._replica_order()
        # A kept-alive connection the server had just closed fails before any byte too: that
        # is worth one more try on a fresh connection to the same replica.
        attempts = deque((i, False) for i in order)
        while attempts:
            i, retry = attempts.popleft()
            base = self.options.base_urls[i]
            url = (server_root(base) if root else base) + path
            request = self._client.build_request(method, url, json=body)
            try:
                response = await self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if not retry and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
                    attempts.appendleft((i, True))
                    continue
                tried += 1
                self._down_until[i] = time.monotonic() + REPLICA_COOLDOWN
                log.warning("model %s: upstream %s unreachable (%s)%s", self.model.id, safe_url(base), type(exc).__name__,
                            "; trying the next replica" if tried < len(self.options.base_urls) else "")
                continue
            except httpx.PoolTimeout:
                raise ApiError(
                    "overloaded",
                    "overloaded",
                    f"All {self.options.max_connections} connections to the model server behind {self.model.id!r} are busy; retry shortly.",
                    headers={"Retry-After": "2"},
                ) from None
            except httpx.TimeoutException:
                log.warning("model %s: upstream %s did not answer within %.1f s", self.model.id, safe_url(base),
                            self.options.read_timeout)
                raise ApiError(
                    "upstream", "upstream_error", f"The model server behind {self.model.id!r} did not answer in time; please retry."
                ) from None
            except httpx.HTTPError as exc:
                log.warning("model %s: request to %s failed: %s", self.model.id, safe_url(base), type(exc).__name__)
                raise ApiError("upstream", "upstream_error", f"The model server behind {self.model.id!r} could not be reached.") from None
            self._down_until[i] = 0.0
            return response
        raise ApiError(
            "upstream",
            "upstream_error",
            f"The model server behind {self.model.id!r} could not be reached"
            + (f" (tried {tried} replicas)." if tried > 1 else "."),
        )

    async def _check(self, response: httpx.Response) -> None:
        """Raise the mapped `ApiError` (and close the response) unless it is a 200."""
        if response.status_code == 200:
            return
        body = b""
        try:
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) >= MAX_ERROR_BODY:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
        err = upstream_error(response.status_code, body, response.headers, model_id=self.model.id, secrets=self._secrets)
        status = response.status_code
        # The operator must act on these; the client's own mistakes are only of passing interest.
        level = logging.ERROR if status in (401, 403, 404) else logging.INFO if err.kind == "invalid_request" else logging.WARNING
        log.log(level, "model %s: upstream %s answered HTTP %d: %s", self.model.id, safe_url(str(response.url)),
                status, _clean(body.decode("utf-8", "replace"), self._secrets))
        raise err

    # ------------------------------------------------------------------ counting

    async def count_tokens(self, request: ChatRequest) -> int:
        return (await self._count(request))[0]

    async def _count(self, request: ChatRequest) -> tuple[int, bool]:
        """(prompt tokens, whether the upstream counted them). An upstream that cannot count
        (down, no such route) gets an estimate, with one warning, rather than failing requests."""
        mode = self.options.tokenize
        if mode != "none":
            try:
                count = await (self._count_vllm(request) if mode == "vllm" else self._count_llamacpp(request))
                self._count_warned = False
                return count, True
            except (ApiError, httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                if not self._count_warned:
                    self._count_warned = True
                    log.warning("model %s: the upstream could not count tokens (%s); estimating until it can",
                                self.model.id, getattr(exc, "message", type(exc).__name__))
        return estimate_prompt_tokens(request), False

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        response = await self._send("POST", path, body, root=True)
        await self._check(response)
        try:
            return json.loads(await response.aread())
        finally:
            await response.aclose()

    async def _count_vllm(self, request: ChatRequest) -> int:
        body: dict[str, Any] = {
            "model": self.options.upstream_model,
            "messages": chat_messages(request, send_reasoning=self.options.send_reasoning_content),
            "add_generation_prompt": True,
        }
        if request.tools:
            body["tools"] = chat_body(request, self.options)["tools"]
        result = await self._post_json("/tokenize", body)
        count = result.get("count")
        return int(count) if isinstance(count, int) else len(result["tokens"])

    async def _count_llamacpp(self, request: ChatRequest) -> int:
        messages = chat_messages(request, send_reasoning=self.options.send_reasoning_content)
        template: dict[str, Any] = {"messages": messages}
        if request.tools:
            template["tools"] = chat_body(request, self.options)["tools"]
        try:
            prompt = (await self._post_json("/apply-template", template))["prompt"]
            overhead = 0
        except ApiError:
            # An older server without /apply-template: count the text, plus the role markers.
            prompt = "\n".join(_plain_text(m) for m in messages)
            overhead = MESSAGE_OVERHEAD * len(messages)
        result = await self._post_json("/tokenize", {"content": prompt, "add_special": True, "parse_special": True})
        return len(result["tokens"]) + overhead

    async def measure(self, request: ChatRequest, ctx: CallContext) -> int:
        count, exact = await self._count(request)
        if not exact:
            # An estimate never refuses a prompt: the upstream decides what fits its context.
            count = min(count, self.model.context_window - 1)
        ctx.prompt_tokens = count
        ctx.prompt_cache = exact
        return count

    # ------------------------------------------------------------------ generation

    async def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[Event]:
        prompt = ctx.prompt_tokens if ctx.prompt_tokens is not None else estimate_prompt_tokens(request)
        ctx.usage.input_tokens = prompt
        budget = request.max_tokens
        if budget is not None and ctx.prompt_cache is True:
            # vLLM refuses prompt + max_tokens beyond its context; with an exact count, fit it.
            budget = max(1, min(budget, self.model.context_window - prompt))
        body = chat_body(request, self.options, max_tokens=budget)
        translator = ChunkTranslator(model_id=self.model.id, stop=request.stop, secrets=self._secrets)
        reader = StreamReader(translator)
        response = await self._send("POST", "/chat/completions", body)
        emitted = checked = False
        try:
            await self._check(response)  # logs what it raises
            checked = True
            try:
                if response.headers.get("content-type", "").startswith("application/json"):
                    # An upstream that ignored `stream`: its whole reply is one chunk.
                    pieces: AsyncIterator[bytes] = _one(await response.aread())
                    feed = reader.feed_completion
                else:
                    pieces, feed = response.aiter_bytes(), reader.feed
                async for piece in pieces:
                    for event in feed(piece):
                        emitted = True
                        yield event
                    reader.raise_error()
                    self._meter(ctx, translator)
                    if reader.done:
                        break
            except httpx.TimeoutException:
                raise ApiError(
                    "upstream", "upstream_error", f"The model server behind {self.model.id!r} stopped answering (read timeout)."
                ) from None
            except httpx.HTTPError as exc:
                log.warning("model %s: upstream stream broke: %s", self.model.id, type(exc).__name__)
                raise ApiError(
                    "upstream", "upstream_error", f"The connection to the model server behind {self.model.id!r} broke mid-reply."
                ) from None
            events, finish = reader.end()
            self._meter(ctx, translator)
            for event in events:
                emitted = True
                yield event
            yield Usage(ctx.usage.input_tokens, ctx.usage.output_tokens, ctx.usage.cached_tokens)
            yield finish
        except ApiError as err:
            self._meter(ctx, translator)
            if checked:
                log.warning("model %s: request %s failed %s: %s", self.model.id, ctx.request_id,
                            "mid-reply" if emitted else "before any output", err.message)
            if not emitted:
                raise
            yield Error(err)
        finally:
            # Also on cancellation (the client left): closing the response ends the upstream request.
            await response.aclose()

    @staticmethod
    def _meter(ctx: CallContext, translator: ChunkTranslator) -> None:
        """Live usage: the upstream's numbers once it sent them, estimates until then."""
        reported = translator.usage
        ctx.usage.input_tokens = reported.get("input", ctx.usage.input_tokens)
        ctx.usage.output_tokens = reported.get("output", translator.output_estimate)
        ctx.usage.cached_tokens = reported.get("cached", ctx.usage.cached_tokens)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every engine (building one takes ~30 ms: 30 models, a second)."""
    return httpx.create_ssl_context()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _plain_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = json.dumps(message.get("tool_calls")) if message.get("tool_calls") else ""
    return (content or "") + calls
