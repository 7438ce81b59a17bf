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
  model, each a URL or a table `{ url = "…", weight = 2 }`: a request goes to the fewest requests
  in flight per weight, and moves to another replica only while none can have started on it (no
  connection, a 5xx, a 429). `health_path` (probed every `health_interval` s, each probe within
  `health_timeout`), `circuit_failures` and `circuit_cooldown` take failing replicas out and
  bring them back: see `engines/replicas.py`.
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
  "llamacpp": llama.cpp server's `POST /apply-template` then `POST /tokenize`, exact;
  "llama_cpp_python": `usage.prompt_tokens` of the same request, non-streamed and cut to one
  token (llama-cpp-python's server, which cannot count a chat otherwise), exact; "none"
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

The module is the pure translation (canonical request -> upstream body, upstream SSE bytes ->
canonical events, upstream errors -> `ApiError`), then the engine, which says how this format is
spoken; the I/O it shares with `anthropic_compat` (replicas, failover, counting with an estimate
to fall back on, the streaming loop) is `engines/upstream.py`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from longcat import jsonutil
from longcat.canonical import (
    ApiError,
    Block,
    ChatRequest,
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
)
from longcat.config import ConfigError, ModelConfig
from longcat.engines.base import StopMatcher
from longcat.engines.upstream import (
    COMMON_OPTION_KEYS,
    CONTEXT_ERROR,
    MAX_ERROR_MESSAGE,
    MESSAGE_OVERHEAD,
    SSEDecoder,
    UpstreamEngine,
    UpstreamOptions,
    clean,
    error_fields,
    estimate_output_tokens,
    estimate_prompt_tokens,
    malformed,
    merge_extra_body,
    parse_common,
    safe_url,
    tool_call_id,
    upstream_error,
)

__all__ = [
    "ChunkTranslator",
    "OpenAICompatEngine",
    "Options",
    "SSEDecoder",
    "StreamReader",
    "chat_body",
    "estimate_prompt_tokens",
    "parse_options",
    "safe_url",
    "upstream_error",
]

log = logging.getLogger("longcat.engine.openai_compat")

OPTION_KEYS = COMMON_OPTION_KEYS | {"thinking_param", "send_reasoning_content", "cache_salt"}
TOKENIZE_MODES = ("vllm", "llamacpp", "llama_cpp_python", "none")


# ============================================================================ options


@dataclass(slots=True)
class Options(UpstreamOptions):
    """A catalog entry's options, checked once at start-up."""

    thinking_param: str | None = None
    send_reasoning_content: bool = False
    # vLLM's `cache_salt`: its prefix cache then serves each account only its own prompts.
    cache_salt: bool = False


def parse_options(model: ModelConfig, env: dict[str, str] | None = None) -> Options:
    """Check a model's options; raises `ConfigError` naming the model and the option."""
    common = parse_common(model, env, engine="openai_compat", known=OPTION_KEYS, tokenize_modes=TOKENIZE_MODES)
    opts = model.options
    where = f"model {model.id!r}"
    thinking_param = opts.get("thinking_param")
    if thinking_param is not None and not (
        thinking_param in ("thinking", "chat_template_kwargs")
        or (isinstance(thinking_param, str) and re.fullmatch(r"chat_template_kwargs\.\w+", thinking_param))
    ):
        raise ConfigError(f"{where}: 'thinking_param' must be 'chat_template_kwargs', 'chat_template_kwargs.<name>' or 'thinking'")
    flags = {}
    for name in ("send_reasoning_content", "cache_salt"):
        flags[name] = opts.get(name, False)
        if not isinstance(flags[name], bool):
            raise ConfigError(f"{where}: {name!r} must be true or false")
    return Options(**common, thinking_param=thinking_param, **flags)


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
    return merge_extra_body(body, options.extra_body)


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
    # "" rather than null beside tool calls: OpenAI allows both, but llama-cpp-python's server
    # refuses a null content (a 500), and chat templates treat the two alike.
    out: dict[str, Any] = {"role": "assistant", "content": text}
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

# ============================================================================ upstream errors


def stream_error(payload: Any, *, model_id: str, secrets: tuple[str, ...] = ()) -> ApiError:
    """An `{"error": …}` object the upstream sent inside its stream."""
    message, code = error_fields(payload, json.dumps(payload)[:MAX_ERROR_MESSAGE])
    err = payload.get("error") if isinstance(payload, dict) else None
    status = err.get("code") if isinstance(err, dict) else None
    if isinstance(status, int) and 400 <= status < 600:
        return upstream_error(status, json.dumps(payload), model_id=model_id, secrets=secrets)
    if CONTEXT_ERROR.search(message) or CONTEXT_ERROR.search(code):
        return upstream_error(400, json.dumps(payload), model_id=model_id, secrets=secrets)
    if re.search(r"overload|rate.?limit|busy", code, re.IGNORECASE):
        return upstream_error(503, json.dumps(payload), model_id=model_id, secrets=secrets)
    said = clean(message, secrets)
    return ApiError(
        "upstream", "upstream_error", f"The model server behind {model_id!r} failed mid-reply" + (f": {said}" if said else ".")
    )


# ============================================================================ upstream stream -> events


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
        self.chunks = 0

    # ------------------------------------------------------------------ chunks

    def feed(self, chunk: Any) -> list[Event]:
        if self.stopped is not None:
            return []
        if not isinstance(chunk, dict):
            raise malformed(self.model_id, "a chunk that is not a JSON object")
        self.chunks += 1
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
        if reason is None and not self.chunks:
            # A server that fails after its 200 (llama-cpp-python's, on a prompt over its context).
            raise ApiError("upstream", "upstream_error", f"The model server behind {self.model_id!r} sent an empty reply.")
        if reason is None:
            # No finish_reason, with or without [DONE]: the reply did not end. llama-cpp-python's
            # server ends a stream with [DONE] alone when another request interrupts it.
            raise ApiError(
                "upstream",
                "upstream_error",
                f"The model server behind {self.model_id!r} "
                + ("ended the stream without finishing the reply (no finish_reason)." if done
                   else "closed the stream before the reply was complete."),
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

    feed_whole = feed_completion

    @property
    def usage(self) -> dict[str, int]:
        return self.translator.usage

    @property
    def output_estimate(self) -> int:
        return self.translator.output_estimate

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
            return jsonutil.loads(data)
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


class OpenAICompatEngine(UpstreamEngine):
    kind = "openai_compat"
    log = log

    def __init__(self, model: ModelConfig, *, env: dict[str, str] | None = None) -> None:
        self.options: Options = parse_options(model, env)
        super().__init__(model, self.options)

    def describe(self) -> dict[str, Any]:
        opts = self.options
        tokenizer = {
            "vllm": "the upstream's (POST /tokenize, vLLM / SGLang)",
            "llamacpp": "the upstream's (llama.cpp server POST /tokenize)",
            "llama_cpp_python": "the upstream's (usage of a one-token completion of the same request)",
            "none": "estimated before the request (about 3 characters a token); billed by the upstream's count",
        }[opts.tokenize]
        return {
            "type": "openai_compat",
            "description": "an upstream OpenAI-compatible server (Chat Completions, streamed)",
            "upstream": [safe_url(u) for u in opts.base_urls],
            "upstream_model": opts.upstream_model,
            "replicas": len(opts.base_urls),
            **self.balancing(),
            "tokenizer": tokenizer,
            "thinking_param": opts.thinking_param,
            "context_window": self.model.context_window,
            "max_output": self.model.max_output,
            "native_tool_calls": True,
        }

    # ------------------------------------------------------------------ the wire format

    def request_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.options.api_key}"} if self.options.api_key else {}

    def url(self, base: str, path: str, root: bool) -> str:
        return (server_root(base) if root else base) + path

    def generation(self, request: ChatRequest, max_tokens: int | None) -> tuple[str, dict[str, Any]]:
        return "/chat/completions", chat_body(request, self.options, max_tokens=max_tokens)

    def reader(self, request: ChatRequest) -> StreamReader:
        return StreamReader(ChunkTranslator(model_id=self.model.id, stop=request.stop, secrets=self._secrets))

    def tag_account(self, body: dict[str, Any], tag: str) -> None:
        if self.options.send_user:
            body["user"] = tag
        if self.options.cache_salt:
            body["cache_salt"] = tag

    async def count_exact(self, request: ChatRequest) -> int:
        if self.options.tokenize == "vllm":
            return await self._count_vllm(request)
        if self.options.tokenize == "llama_cpp_python":
            return await self._count_by_completion(request)
        return await self._count_llamacpp(request)

    async def _count_by_completion(self, request: ChatRequest) -> int:
        """The prompt as the server counts it: `usage.prompt_tokens` of a non-streamed completion
        of the same request cut to one token.

        For llama-cpp-python's server, which has no way to count a chat: its `/extras/tokenize`
        counts raw text, without the chat template it applies itself, and its streams carry no
        usage. The one token costs a few milliseconds; the prompt it read stays in the server's
        cache for the real request. A prompt over the server's context is its 400, passed on."""
        body = chat_body(request, self.options, max_tokens=1)
        body["stream"] = False
        body.pop("stream_options", None)
        result = await self._post_json("/chat/completions", body)
        count = result["usage"]["prompt_tokens"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError("usage.prompt_tokens is not a count")
        return count

    async def _count_vllm(self, request: ChatRequest) -> int:
        body: dict[str, Any] = {
            "model": self.options.upstream_model,
            "messages": chat_messages(request, send_reasoning=self.options.send_reasoning_content),
            "add_generation_prompt": True,
        }
        if request.tools:
            body["tools"] = chat_body(request, self.options)["tools"]
        result = await self._post_json("/tokenize", body, root=True)
        count = result.get("count")
        return int(count) if isinstance(count, int) else len(result["tokens"])

    async def _count_llamacpp(self, request: ChatRequest) -> int:
        messages = chat_messages(request, send_reasoning=self.options.send_reasoning_content)
        template: dict[str, Any] = {"messages": messages}
        if request.tools:
            template["tools"] = chat_body(request, self.options)["tools"]
        try:
            prompt = (await self._post_json("/apply-template", template, root=True))["prompt"]
            overhead = 0
        except ApiError:
            # An older server without /apply-template: count the text, plus the role markers.
            prompt = "\n".join(_plain_text(m) for m in messages)
            overhead = MESSAGE_OVERHEAD * len(messages)
        result = await self._post_json("/tokenize", {"content": prompt, "add_special": True, "parse_special": True}, root=True)
        return len(result["tokens"]) + overhead


def _plain_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = json.dumps(message.get("tool_calls")) if message.get("tool_calls") else ""
    return (content or "") + calls
