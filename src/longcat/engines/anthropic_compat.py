"""The `anthropic_compat` engine: a model served by an upstream speaking the Anthropic Messages API.

Anthropic itself, another gateway, or a second LongCat (its `/anthropic` routes): anything that
serves `POST {base_url}/v1/messages` with SSE streaming. The platform keeps its own accounts,
keys, quotas and wire formats; the upstream only generates. Every request is streamed from the
upstream (a non-streaming client gets the same stream, collected by the gateway).

    [[models]]
    id = "claude-sonnet"
    engine = "anthropic_compat"
    context_window = 200000
    max_output = 64000
    base_url = "https://api.anthropic.com"
    upstream_model = "claude-sonnet-4-5"
    api_key_env = "ANTHROPIC_API_KEY"
    tokenize = "anthropic"

Options (keys of the `[[models]]` table):

- `base_url` (e.g. "https://api.anthropic.com", "http://10.0.0.7:8000/anthropic"; a trailing
  `/v1` is dropped, requests go to `{base_url}/v1/messages`), or `base_urls` = [...] for several
  replicas, with `weight`, `health_path`, `health_interval`, `health_timeout`,
  `circuit_failures` and `circuit_cooldown` as for `openai_compat` (`health_path` is relative
  to `base_url` here, e.g. "/v1/models").
- `upstream_model`: the model name sent upstream; default the catalog `id`.
- `api_key`, or `api_key_env` (the name of an environment variable holding it): sent as
  `x-api-key`, with `anthropic-version: 2023-06-01`. Never logged, never shown.
- `anthropic_beta`: a string, or an array of strings, sent as the `anthropic-beta` header.
- `timeout`: seconds, a number (connect and read) or a table `{ connect = 5, read = 600 }`;
  "read" is the longest silence tolerated between two pieces of the reply. Defaults 5 and 600.
- `max_connections`: open connections to the upstream (default 64). Requests beyond it wait
  for a free connection up to 30 s, then get 503 `overloaded`.
- `tokenize`: how prompts are counted before admission (quota reservation and the context
  check). "anthropic": the upstream's `POST /v1/messages/count_tokens`, exact (with an exact
  count, `max_tokens` is lowered to the room left in the context, which Anthropic requires);
  "none" (default): an estimate that errs high (about 3 characters, or 1 non-ASCII character, a
  token) and never refuses a prompt: the upstream decides what fits (its "prompt is too long"
  comes back as `context_length_exceeded`). An upstream that cannot count gets the estimate,
  with one warning in the log. Whatever the mode, what is billed is the upstream's own count
  (`usage` of `message_start` / `message_delta`; cache reads and writes count as input, cache
  reads as cached input); a stream cut before the final count is billed with the input count
  and an estimate of the output received.
- `thinking_type`: how a request that turns thinking on is passed: "enabled" (default:
  `{"type": "enabled", "budget_tokens": N}`) or "adaptive" (`{"type": "adaptive"}`, the model
  decides). N is the client's own budget (Anthropic `thinking.budget_tokens`), else
  `thinking_budget`, else half of `max_tokens`; always at least 1024 and below `max_tokens`
  (a reply allowed 1024 tokens or fewer is sent without thinking). A request that turns thinking
  off sends `{"type": "disabled"}`; one that says nothing sends nothing (the upstream's default).
  Anthropic refuses thinking together with a forced tool (`tool_choice` any / tool) and with
  changed sampling, so with thinking on the forced tool wins (thinking is left off), and
  `temperature`, `top_k` and a `top_p` below 0.95 are not sent.
- `thinking_budget`: the default budget above (at least 1024).
- `thinking_cache_mb`: memory for the upstream's thinking signatures (default 64; 0 keeps none).
- `thinking_cache_hours`: with `redis_url`, how long an entry stays in Redis after it was last
  written or recalled (default 24).
- `prompt_caching` (default false): mark cache breakpoints (`cache_control: {"type":
  "ephemeral"}`) on the last tool, the last system block and the last block of the conversation,
  so the upstream caches the prompt prefix (what a client marked is not carried by the platform's
  request model). Worth it for agents, whose every turn repeats a long prefix: Anthropic bills
  cache reads at a tenth and cache writes at 1.25 times the input price.
- `extra_body`: a table of fields added to every upstream request unless the request sets them
  (e.g. `{ metadata = { user_id = "longcat" } }`).

Thinking signatures. The upstream signs each thinking block it writes, and wants the block back,
signature and all, when a conversation continues (during a tool loop it insists). The platform
cannot hand the upstream's signature to its clients: it signs thinking with its own key, so that
it can tell replayed thinking is unaltered whatever engine wrote it, and every format carries only
that. So this engine remembers the upstream's signatures itself, in memory, keyed by a SHA-256 of
the thinking text the client was shown (bounded by `thinking_cache_mb`, least recently used
evicted), and, when the deployment has `redis_url`, in Redis too, for every replica and worker
(each entry expiring `thinking_cache_hours` after its last use; `SharedSignatures`). A replayed thinking block whose text is known goes back upstream as the upstream wrote
it: the same blocks, signatures and `redacted_thinking` included (a client that got one merged
block, e.g. a non-streamed reply or an OpenAI client's `reasoning_content`, is matched too).
Thinking it does not know (evicted, expired, a replica without Redis, another engine's) is
dropped, never sent with a signature that is not the upstream's; and if that leaves the
assistant turn a tool loop continues without its thinking, the request goes up with thinking
off, which Anthropic accepts, rather than failing. Without Redis, replicas of the platform do
not share this memory: behind a load balancer without session affinity, replays then fall back
to dropping.

Other translation details. System blocks go as `system` text blocks; `system` messages in the
middle of a conversation become user text; consecutive turns of one role are merged, empty text
is left out, tool results go first in their user turn, tool ids that are not
`^[a-zA-Z0-9_-]+$` are rewritten to match (the same way in the call and its result), images go
as base64 or URL sources. `temperature` is capped at 1 (Anthropic's range), `seed` is not sent,
whitespace-only stop sequences are applied here rather than upstream, a JSON-schema response
format goes as `output_config.format` (plain JSON mode has no equivalent and is not sent).

The module is the pure translation (canonical request -> Messages body, upstream SSE bytes ->
canonical events, upstream errors -> `ApiError`), then the engine; the I/O it shares with
`openai_compat` (replicas, failover, counting, the streaming loop) is `engines/upstream.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from longcat import jsonutil
from longcat.canonical import (
    ApiError,
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
from longcat.engines.base import CallContext, StopMatcher
from longcat.engines.upstream import (
    COMMON_OPTION_KEYS,
    MAX_ERROR_MESSAGE,
    SSEDecoder,
    SSEvent,
    UpstreamEngine,
    UpstreamOptions,
    clean,
    cut_short,
    error_fields,
    estimate_output_tokens,
    malformed,
    merge_extra_body,
    parse_common,
    safe_url,
    tool_call_id,
    upstream_error,
)

log = logging.getLogger("longcat.engine.anthropic_compat")

OPTION_KEYS = COMMON_OPTION_KEYS | {
    "anthropic_beta", "thinking_type", "thinking_budget", "thinking_cache_mb", "thinking_cache_hours", "prompt_caching",
}
TOKENIZE_MODES = ("anthropic", "none")
ANTHROPIC_VERSION = "2023-06-01"
# Anthropic's smallest thinking budget.
MIN_THINKING_BUDGET = 1024
DEFAULT_THINKING_CACHE_MB = 64
DEFAULT_THINKING_CACHE_HOURS = 24.0
# Below this, Anthropic refuses `top_p` with thinking on.
THINKING_MIN_TOP_P = 0.95


# ============================================================================ options


@dataclass(slots=True)
class Options(UpstreamOptions):
    """A catalog entry's options, checked once at start-up."""

    anthropic_beta: str | None = None
    thinking_type: str = "enabled"
    thinking_budget: int | None = None
    thinking_cache_mb: float = DEFAULT_THINKING_CACHE_MB
    thinking_cache_hours: float = DEFAULT_THINKING_CACHE_HOURS
    prompt_caching: bool = False


def parse_options(model: ModelConfig, env: dict[str, str] | None = None) -> Options:
    """Check a model's options; raises `ConfigError` naming the model and the option."""
    common = parse_common(model, env, engine="anthropic_compat", known=OPTION_KEYS, tokenize_modes=TOKENIZE_MODES)
    common["base_urls"] = [u[: -len("/v1")] if u.endswith("/v1") else u for u in common["base_urls"]]
    opts = model.options
    where = f"model {model.id!r}"

    beta = opts.get("anthropic_beta")
    if isinstance(beta, list) and beta and all(isinstance(b, str) and b for b in beta):
        beta = ",".join(beta)
    if beta is not None and (not isinstance(beta, str) or not beta or re.search(r"[\r\n]", beta)):
        raise ConfigError(f"{where}: 'anthropic_beta' must be a string or an array of strings (header values)")

    thinking_type = opts.get("thinking_type", "enabled")
    if thinking_type not in ("enabled", "adaptive"):
        raise ConfigError(f"{where}: 'thinking_type' must be 'enabled' or 'adaptive'")
    budget = opts.get("thinking_budget")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_THINKING_BUDGET):
        raise ConfigError(f"{where}: 'thinking_budget' must be an integer of at least {MIN_THINKING_BUDGET}")
    cache_mb = opts.get("thinking_cache_mb", DEFAULT_THINKING_CACHE_MB)
    if not isinstance(cache_mb, (int, float)) or isinstance(cache_mb, bool) or cache_mb < 0:
        raise ConfigError(f"{where}: 'thinking_cache_mb' must be a number of MiB, 0 or more")
    hours = opts.get("thinking_cache_hours", DEFAULT_THINKING_CACHE_HOURS)
    if not isinstance(hours, (int, float)) or isinstance(hours, bool) or hours <= 0:
        raise ConfigError(f"{where}: 'thinking_cache_hours' must be a positive number of hours")
    caching = opts.get("prompt_caching", False)
    if not isinstance(caching, bool):
        raise ConfigError(f"{where}: 'prompt_caching' must be true or false")

    return Options(**common, anthropic_beta=beta, thinking_type=thinking_type, thinking_budget=budget,
                   thinking_cache_mb=float(cache_mb), thinking_cache_hours=float(hours), prompt_caching=caching)


# ============================================================================ thinking signatures


class ThinkingSignatures:
    """The upstream's own thinking blocks (signatures, redacted data), recalled by their text.

    `keep` is given a run of upstream thinking blocks that a client saw as one thinking text;
    `recall(text)` gives those blocks back, the text cut where it was. Only the signatures are
    stored (a hash of the text is the key), least recently used first out beyond `max_bytes`.
    """

    # What one entry costs besides its signatures: the key, the tuples, the dict slot.
    ENTRY_OVERHEAD = 200

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        # key -> (pieces, size); a piece is ("thinking", characters, signature) or ("redacted", 0, data)
        self._entries: OrderedDict[bytes, tuple[tuple[tuple[str, int, str], ...], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()

    def keep(self, blocks: list[dict[str, Any]]) -> None:
        entry = self._entry(blocks)
        if entry is not None:
            self._put(*entry)

    def _entry(self, blocks: list[dict[str, Any]]) -> tuple[bytes, tuple[tuple[str, int, str], ...], int] | None:
        """(key, pieces, size) of a run of upstream blocks, or None when it is not worth keeping."""
        pieces: list[tuple[str, int, str]] = []
        texts: list[str] = []
        for block in blocks:
            if block.get("type") == "thinking":
                signature = block.get("signature")
                if not isinstance(signature, str) or not signature:
                    return None  # unsigned thinking cannot be replayed upstream: nothing worth keeping
                pieces.append(("thinking", len(block["thinking"]), signature))
                texts.append(block["thinking"])
            elif block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
                pieces.append(("redacted", 0, block["data"]))
        text = "".join(texts)
        if not text or self.max_bytes <= 0:
            return None  # a client can only replay thinking it was shown
        size = self.ENTRY_OVERHEAD + sum(len(p[2]) for p in pieces)
        if size > self.max_bytes:
            return None
        return self._key(text), tuple(pieces), size

    def _put(self, key: bytes, pieces: tuple[tuple[str, int, str], ...], size: int) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (pieces, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def recall(self, text: str) -> list[dict[str, Any]] | None:
        if not text:
            return None
        key = self._key(text)
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        out: list[dict[str, Any]] = []
        at = 0
        for kind, length, value in entry[0]:
            if kind == "thinking":
                out.append({"type": "thinking", "thinking": text[at : at + length], "signature": value})
                at += length
            else:
                out.append({"type": "redacted_thinking", "data": value})
        return out

    async def fetch(self, texts: list[str]) -> None:
        """Make the signatures of `texts` available to `recall` (nothing to do in memory)."""

    async def flush(self) -> None:
        """Wait until what `keep` was given can be recalled by every process (nothing in memory)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class SharedSignatures(ThinkingSignatures):
    """With Redis: the signatures are kept for every process of the deployment, so a conversation
    continued on another replica or worker replays its thinking too.

    Each entry is one Redis string, `<prefix>ts:<digest of the model id and the text>`, that
    expires `ttl` seconds after it was last written or recalled (that, and the per-entry bound
    of `max_bytes`, is what bounds Redis' memory). The in-process LRU stays in front: `recall`
    stays synchronous, and `fetch` fills it from Redis first for the texts a request replays.
    Redis unreachable: the process carries on with what it holds itself (dropping the rest, as
    for thinking it does not know)."""

    FLUSH_TIMEOUT = 2.0

    def __init__(self, max_bytes: int, *, url: str, prefix: str, namespace: str, ttl: float) -> None:
        super().__init__(max_bytes)
        self.url = url
        self.ttl = max(1, int(ttl))
        self._prefix = prefix + "ts:"
        self._namespace = hashlib.sha256(namespace.encode()).digest()[:8]
        self._redis: Any = None
        self._pending: set[asyncio.Task] = set()
        self._warned = False

    def _redis_key(self, key: bytes) -> str:
        return self._prefix + hashlib.sha256(self._namespace + key).hexdigest()

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(self.url)

    async def close(self) -> None:
        await self.flush()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _trouble(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("thinking signatures: %s on Redis failed (%s); using this process's own until it works",
                        what, type(exc).__name__)

    def keep(self, blocks: list[dict[str, Any]]) -> None:
        entry = self._entry(blocks)
        if entry is None:
            return
        self._put(*entry)
        if self._redis is None:
            return
        key, pieces, _ = entry
        value = json.dumps([list(p) for p in pieces], separators=(",", ":"))
        task = asyncio.get_running_loop().create_task(self._write(self._redis_key(key), value))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, key: str, value: str) -> None:
        try:
            await self._redis.set(key, value, ex=self.ttl)
            self._warned = False
        except Exception as exc:  # noqa: BLE001 - Redis down: this process still has it
            self._trouble("storing", exc)

    async def flush(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=self.FLUSH_TIMEOUT)

    async def fetch(self, texts: list[str]) -> None:
        wanted = {}
        for text in texts:
            key = self._key(text)
            if text and key not in self._entries:
                wanted[key] = self._redis_key(key)
        if not wanted or self._redis is None:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for redis_key in wanted.values():
                    pipe.getex(redis_key, ex=self.ttl)  # recalled: kept for another `ttl`
                found = await pipe.execute()
            self._warned = False
        except Exception as exc:  # noqa: BLE001
            self._trouble("reading", exc)
            return
        for key, raw in zip(wanted, found, strict=True):
            if raw is None:
                continue
            try:
                pieces = tuple((str(kind), int(length), str(value)) for kind, length, value in json.loads(raw))
            except (ValueError, TypeError):
                continue
            self._put(key, pieces, self.ENTRY_OVERHEAD + sum(len(p[2]) for p in pieces))


def replayed_thinking(request: ChatRequest) -> list[str]:
    """The texts of the thinking a request's assistant turns replay (what `recall` is asked for)."""
    return [
        block.text
        for message in request.messages
        if message.role == "assistant"
        for block in message.content
        if isinstance(block, ThinkingBlock) and not block.redacted and block.text
    ]


# ============================================================================ request -> Messages body

_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def messages_body(
    request: ChatRequest,
    options: Options,
    *,
    max_tokens: int,
    signatures: ThinkingSignatures | None = None,
) -> dict[str, Any]:
    """The upstream Messages body for a canonical request (always streamed)."""
    messages = anthropic_messages(request, signatures)
    body: dict[str, Any] = {"model": options.upstream_model, "max_tokens": max_tokens, "messages": messages}
    system = [{"type": "text", "text": b.text} for b in request.system if b.text]
    if system:
        body["system"] = system
    forced = False
    if request.tools:
        body["tools"] = [_tool(t.name, t.description, t.parameters) for t in request.tools]
        choice = _tool_choice(request)
        if choice is not None:
            body["tool_choice"] = choice
            forced = choice["type"] in ("any", "tool")
    thinking = _thinking(request, options, max_tokens, forced)
    if thinking is not None and thinking["type"] != "disabled" and _continues_tool_turn_without_thinking(messages):
        # Anthropic wants the thinking of the turn a tool loop continues, and it is not known
        # here (see "Thinking signatures" above): without thinking, the request is still valid.
        thinking = None
    if thinking is not None:
        body["thinking"] = thinking
    thinking_on = thinking is not None and thinking["type"] != "disabled"
    if request.temperature is not None and not thinking_on:
        body["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None and (not thinking_on or request.top_p >= THINKING_MIN_TOP_P):
        body["top_p"] = request.top_p
    if request.top_k is not None and request.top_k > 0 and not thinking_on:
        body["top_k"] = request.top_k
    stops = [s for s in request.stop if s.strip()]
    if stops:
        body["stop_sequences"] = stops
    fmt = request.response_format
    if fmt.type == "json_schema":
        body["output_config"] = {"format": {"type": "json_schema", "schema": fmt.schema or {"type": "object"}}}
    if options.prompt_caching:
        _mark_cache_breakpoints(body)
    body["stream"] = True
    return merge_extra_body(body, options.extra_body)


CACHE_BREAKPOINT = {"type": "ephemeral"}


def _mark_cache_breakpoints(body: dict[str, Any]) -> None:
    """At most three of Anthropic's four breakpoints: tools, system, the conversation so far.

    The upstream reads the longest cached prefix before a breakpoint, so marking the end of the
    conversation each turn finds the previous turn's entry. Thinking blocks cannot be marked."""
    if body.get("tools"):
        body["tools"][-1] = {**body["tools"][-1], "cache_control": CACHE_BREAKPOINT}
    if body.get("system"):
        body["system"][-1] = {**body["system"][-1], "cache_control": CACHE_BREAKPOINT}
    for message in reversed(body["messages"]):
        content = message["content"]
        for i in range(len(content) - 1, -1, -1):
            if content[i]["type"] not in ("thinking", "redacted_thinking"):
                content[i] = {**content[i], "cache_control": CACHE_BREAKPOINT}
                return


def count_body(request: ChatRequest, options: Options, *, max_tokens: int,
               signatures: ThinkingSignatures | None = None) -> dict[str, Any]:
    """The `count_tokens` body: what of the request the prompt is made of."""
    body = messages_body(request, options, max_tokens=max_tokens, signatures=signatures)
    return {k: body[k] for k in ("model", "system", "messages", "tools", "tool_choice", "thinking") if k in body}


def _tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": name}
    if description:
        tool["description"] = description
    tool["input_schema"] = parameters
    return tool


def _tool_choice(request: ChatRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if choice.mode == "none":
        return {"type": "none"}
    if choice.mode == "required":
        out: dict[str, Any] = {"type": "any"}
    elif choice.mode == "tool" and choice.name:
        out = {"type": "tool", "name": choice.name}
    elif not choice.parallel:
        out = {"type": "auto"}
    else:
        return None
    if not choice.parallel:
        out["disable_parallel_tool_use"] = True
    return out


def _thinking(request: ChatRequest, options: Options, max_tokens: int, forced_tool: bool) -> dict[str, Any] | None:
    if request.thinking is None:
        return None
    if request.thinking is False:
        return {"type": "disabled"}
    if forced_tool:
        return None
    if options.thinking_type == "adaptive":
        return {"type": "adaptive"}
    if max_tokens <= MIN_THINKING_BUDGET:
        return None
    asked = request.extras.get("thinking_budget")
    wanted = asked if isinstance(asked, int) and asked > 0 else options.thinking_budget or max_tokens // 2
    return {"type": "enabled", "budget_tokens": max(MIN_THINKING_BUDGET, min(wanted, max_tokens - 1))}


def _continues_tool_turn_without_thinking(messages: list[dict[str, Any]]) -> bool:
    """Is the last turn a user's answer to an assistant turn that called tools and has no thinking?"""
    if len(messages) < 2 or messages[-1]["role"] != "user" or messages[-2]["role"] != "assistant":
        return False
    content = messages[-2]["content"]
    return any(b["type"] == "tool_use" for b in content) and content[0]["type"] not in ("thinking", "redacted_thinking")


def anthropic_messages(request: ChatRequest, signatures: ThinkingSignatures | None = None) -> list[dict[str, Any]]:
    """Canonical messages -> Messages API turns: user and assistant, alternating, none empty."""
    out: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(message, signatures)
        elif message.role == "system":
            role, blocks = "user", [{"type": "text", "text": b.text} for b in message.content if isinstance(b, TextBlock) and b.text]
        else:
            role, blocks = "user", _user_blocks(message)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            merged = out[-1]["content"] + blocks
            if role == "user":  # tool results first in their turn, as Anthropic requires
                merged = [b for b in merged if b["type"] == "tool_result"] + [b for b in merged if b["type"] != "tool_result"]
            out[-1]["content"] = merged
        else:
            out.append({"role": role, "content": blocks})
    if out and out[-1]["role"] == "assistant":
        # A prefilled reply: Anthropic refuses one ending in whitespace.
        content = out[-1]["content"]
        if content[-1]["type"] == "text":
            text = content[-1]["text"].rstrip()
            if text:
                content[-1] = {"type": "text", "text": text}
            else:
                content.pop()
            if not content:
                out.pop()
    return out


def _user_blocks(message: Message) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": anthropic_tool_id(block.tool_use_id)}
            content = [c for c in (_text_or_image(b) for b in block.content) if c is not None]
            if content:
                result["content"] = content
            if block.is_error:
                result["is_error"] = True
            results.append(result)
        elif isinstance(block, (TextBlock, ImageBlock)):
            part = _text_or_image(block)
            if part is not None:
                rest.append(part)
    return results + rest


def _text_or_image(block: TextBlock | ImageBlock | Any) -> dict[str, Any] | None:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text} if block.text else None
    if isinstance(block, ImageBlock):
        if block.data is not None:
            media_type = block.media_type if block.media_type in IMAGE_TYPES else "image/png"
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": block.data}}
        if block.url:
            return {"type": "image", "source": {"type": "url", "url": block.url}}
    return None


def _assistant_blocks(message: Message, signatures: ThinkingSignatures | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ThinkingBlock):
            # Only the upstream's own blocks go back; others are dropped (module docstring).
            if not block.redacted and signatures is not None:
                out.extend(signatures.recall(block.text) or [])
        elif isinstance(block, TextBlock):
            if block.text:
                out.append({"type": "text", "text": block.text})
        elif isinstance(block, ToolUseBlock):
            out.append({"type": "tool_use", "id": anthropic_tool_id(block.id), "name": block.name, "input": tool_input(block.arguments)})
    return out


def anthropic_tool_id(call_id: str) -> str:
    """Tool ids as Anthropic accepts them (`^[a-zA-Z0-9_-]+$`), the same for a call and its result."""
    if _TOOL_ID.match(call_id):
        return call_id
    cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", call_id)
    if cleaned.strip("_"):
        return cleaned
    return "toolu_" + hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def tool_input(arguments: str) -> dict[str, Any]:
    """The parsed arguments; anything else than a JSON object is wrapped, as the platform does."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError):  # not JSON, nested absurdly deep, or a 5,000-digit number
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


# ============================================================================ upstream errors

# The HTTP status each Anthropic error type comes with (an `error` event in a stream has none).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def anthropic_error(
    status: int,
    body: bytes | str,
    headers: Any = None,
    *,
    model_id: str,
    secrets: tuple[str, ...] = (),
) -> ApiError:
    """The client-facing error for an upstream's non-200 answer (an Anthropic error envelope,
    or whatever a gateway sent). Pure: the engine logs."""
    if status == 529:  # Anthropic's "overloaded"
        status = 503
    if status == 402:
        return ApiError(
            "upstream",
            "upstream_error",
            f"The model server behind {model_id!r} refused the platform's account (HTTP 402, billing); "
            f"the operator must check it.",
        )
    return upstream_error(status, body, headers, model_id=model_id, secrets=secrets)


def stream_error(payload: Any, *, model_id: str, secrets: tuple[str, ...] = ()) -> ApiError:
    """An `error` event inside the stream: `{"type": "error", "error": {"type", "message"}}`."""
    err = payload.get("error") if isinstance(payload, dict) else None
    kind = err.get("type") if isinstance(err, dict) else None
    status = ERROR_STATUS.get(kind) if isinstance(kind, str) else None
    if status is not None and status not in (500, 504):
        return anthropic_error(status, json.dumps(payload), model_id=model_id, secrets=secrets)
    message, _ = error_fields(payload, json.dumps(payload)[:MAX_ERROR_MESSAGE])
    said = clean(message, secrets)
    return ApiError(
        "upstream", "upstream_error", f"The model server behind {model_id!r} failed mid-reply" + (f": {said}" if said else ".")
    )


# ============================================================================ upstream stream -> events

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop_sequence",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}


@dataclass(slots=True)
class _Block:
    """An upstream content block, as far as it has arrived."""

    type: str  # text | thinking | redacted_thinking | tool_use | other (server tools, …: not ours to show)
    call: int | None = None  # canonical tool-call index
    thinking: list[str] = field(default_factory=list)
    signature: str = ""
    data: str = ""
    start_input: Any = None
    got_input: bool = False
    stopped: bool = False


class EventTranslator:
    """Upstream Messages stream events -> canonical events (pure; one per request).

    Blocks come one after another, as Anthropic sends them; a delta for a block that never
    started, or already stopped, is a malformed stream. Text goes through a `StopMatcher` for
    stop sequences the upstream did not apply (Anthropic applies its own and says which one
    matched). Thinking blocks are gathered into runs (the thinking between two shown blocks,
    which a client sees as one block) and handed to `on_thinking`, with their signatures.
    """

    def __init__(
        self,
        *,
        model_id: str = "model",
        stop: list[str] | None = None,
        secrets: tuple[str, ...] = (),
        on_thinking: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.model_id = model_id
        self.secrets = secrets
        self.matcher = StopMatcher([s for s in (stop or []) if s])
        self.on_thinking = on_thinking
        self.blocks: dict[Any, _Block] = {}
        self.open: _Block | None = None
        self.calls = 0
        self.usage: dict[str, int] = {}  # what the upstream reported: input, output, cached
        self._input: dict[str, int] = {}
        self.output_estimate = 0
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.stopped: str | None = None  # a stop sequence found here
        self.finished = False  # message_stop
        self._run: list[dict[str, Any]] = []
        self._runs: list[list[dict[str, Any]]] = []

    # ------------------------------------------------------------------ events

    def feed(self, name: str | None, data: Any) -> list[Event]:
        if self.stopped is not None or self.finished:
            return []
        if not isinstance(data, dict):
            raise malformed(self.model_id, "an event that is not a JSON object")
        kind = data.get("type", name)
        if kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                self._take_usage(message["usage"], start=True)
            return []
        if kind == "content_block_start":
            return self._start(data)
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "content_block_stop":
            return self._stop(data)
        if kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("stop_reason"), str):
                    self.stop_reason = delta["stop_reason"]
                if isinstance(delta.get("stop_sequence"), str):
                    self.stop_sequence = delta["stop_sequence"]
            if isinstance(data.get("usage"), dict):
                self._take_usage(data["usage"], start=False)
            return []
        if kind == "message_stop":
            self.finished = True
            return []
        if kind == "error":
            raise stream_error(data, model_id=self.model_id, secrets=self.secrets)
        return []  # ping, and event types newer than this code

    def _take_usage(self, usage: dict[str, Any], *, start: bool) -> None:
        """Counts are cumulative; Anthropic counts cache reads and writes apart from `input_tokens`."""
        for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self._input[name] = value
        if self._input:
            self.usage["input"] = sum(self._input.values())
            self.usage["cached"] = self._input.get("cache_read_input_tokens", 0)
        output = usage.get("output_tokens")
        # message_start's output count is a placeholder; the running estimate is better until the end.
        if not start and isinstance(output, int) and not isinstance(output, bool) and output >= 0:
            self.usage["output"] = output

    def _block(self, data: dict[str, Any], what: str) -> _Block:
        block = self.blocks.get(data.get("index"))
        if block is None:
            raise malformed(self.model_id, f"a {what} for a content block that never started")
        if block.stopped:
            raise malformed(self.model_id, f"a {what} for a content block that had stopped")
        return block

    def _start(self, data: dict[str, Any]) -> list[Event]:
        index = data.get("index")
        raw = data.get("content_block")
        if not isinstance(raw, dict) or not isinstance(index, int) or isinstance(index, bool):
            raise malformed(self.model_id, "a content block start without its index or block")
        if index in self.blocks:
            raise malformed(self.model_id, "a content block started twice")
        out = self._stop_open() if self.open is not None else []
        kind = raw.get("type")
        if kind == "text":
            block = _Block("text")
            self._end_run()
            self.blocks[index] = self.open = block
            text = raw.get("text")
            if isinstance(text, str) and text:
                out += self._text(text)
        elif kind == "thinking":
            block = _Block("thinking")
            self.blocks[index] = self.open = block
            if isinstance(raw.get("signature"), str):
                block.signature = raw["signature"]
            text = raw.get("thinking")
            if isinstance(text, str) and text:
                out += self._thinking(block, text)
        elif kind == "redacted_thinking":
            block = _Block("redacted_thinking", data=raw["data"] if isinstance(raw.get("data"), str) else "")
            self.blocks[index] = self.open = block
        elif kind == "tool_use":
            name = raw.get("name")
            if not isinstance(name, str) or not name:
                raise malformed(self.model_id, "a tool call without a name")
            self._end_run()
            rest = self.matcher.flush()  # text held back for a possible stop sequence goes first
            if rest:
                out.append(TextDelta(rest))
            block = _Block("tool_use", call=self.calls, start_input=raw.get("input"))
            self.calls += 1
            self.blocks[index] = self.open = block
            out.append(ToolCallStart(block.call, tool_call_id(raw.get("id")), name))  # type: ignore[arg-type]
        else:
            self.blocks[index] = self.open = _Block("other")
        return out

    def _delta(self, data: dict[str, Any]) -> list[Event]:
        block = self._block(data, "delta")
        delta = data.get("delta")
        if not isinstance(delta, dict):
            raise malformed(self.model_id, "a content block delta without its delta")
        kind = delta.get("type")
        if kind == "text_delta" and block.type == "text":
            text = delta.get("text")
            return self._text(text) if isinstance(text, str) and text else []
        if kind == "thinking_delta" and block.type == "thinking":
            text = delta.get("thinking")
            return self._thinking(block, text) if isinstance(text, str) and text else []
        if kind == "signature_delta" and block.type == "thinking":
            if isinstance(delta.get("signature"), str):
                block.signature = delta["signature"]
            return []
        if kind == "input_json_delta" and block.type == "tool_use":
            partial = delta.get("partial_json")
            if not isinstance(partial, str) or not partial:
                return []
            block.got_input = True
            self.output_estimate += estimate_output_tokens(partial)
            return [ToolCallDelta(block.call, partial)]  # type: ignore[arg-type]
        if block.type != "other" and kind in ("text_delta", "thinking_delta", "signature_delta", "input_json_delta"):
            raise malformed(self.model_id, f"{kind} in a {block.type} block")
        return []  # citations and other deltas this platform does not carry

    def _text(self, text: str) -> list[Event]:
        self.output_estimate += estimate_output_tokens(text)
        safe, stop = self.matcher.feed(text)
        if stop is not None:
            self.stopped = stop
        return [TextDelta(safe)] if safe else []

    def _thinking(self, block: _Block, text: str) -> list[Event]:
        self.output_estimate += estimate_output_tokens(text)
        block.thinking.append(text)
        return [ThinkingDelta(text)]

    def _stop(self, data: dict[str, Any]) -> list[Event]:
        block = self._block(data, "stop")
        if block is not self.open:
            raise malformed(self.model_id, "content blocks interleaved")
        return self._stop_open()

    def _stop_open(self) -> list[Event]:
        block, self.open = self.open, None
        if block is None:
            return []
        block.stopped = True
        if block.type == "tool_use":
            out: list[Event] = []
            if not block.got_input and isinstance(block.start_input, dict) and block.start_input:
                out.append(ToolCallDelta(block.call, json.dumps(block.start_input, ensure_ascii=False)))  # type: ignore[arg-type]
            return out + [ToolCallEnd(block.call)]  # type: ignore[arg-type]
        if block.type == "thinking":
            self._run.append({"type": "thinking", "thinking": "".join(block.thinking), "signature": block.signature})
        elif block.type == "redacted_thinking":
            self._run.append({"type": "redacted_thinking", "data": block.data})
        return []

    def _end_run(self) -> None:
        """A shown block follows: the thinking before it is one block for the client."""
        if self._run:
            run, self._run = self._run, []
            self._runs.append(run)
            if self.on_thinking is not None:
                self.on_thinking(run)

    # ------------------------------------------------------------------ end

    def end(self) -> tuple[list[Event], Finish]:
        """Close what is open and decide the finish. Raises `ApiError` if the stream was cut."""
        if self.stopped is None and self.stop_reason is None and not self.finished:
            raise cut_short(self.model_id)
        rest = self.matcher.flush() if self.stopped is None else ""
        out: list[Event] = [TextDelta(rest)] if rest else []
        out += self._stop_open()
        self._end_run()
        if len(self._runs) > 1 and self.on_thinking is not None:
            # A non-streamed reply (or an OpenAI client) shows all of it as one block.
            self.on_thinking([b for run in self._runs for b in run])
        if self.stopped is not None:
            return out, Finish("stop_sequence", self.stopped)
        finish = _FINISH.get(self.stop_reason or "end_turn", "stop")
        if finish == "stop_sequence":
            return out, Finish("stop_sequence", self.stop_sequence)
        if finish == "stop" and self.calls:
            finish = "tool_calls"
        return out, Finish(finish)

    # ------------------------------------------------------------------ a whole message

    def feed_message(self, message: Any) -> list[Event]:
        """A whole non-streamed Messages reply (an upstream that ignored `stream`), as its events."""
        if isinstance(message, dict) and message.get("type") == "error":
            raise stream_error(message, model_id=self.model_id, secrets=self.secrets)
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise malformed(self.model_id, "a reply that is neither a stream nor a message")
        out = self.feed("message_start", {"type": "message_start", "message": {**message, "content": [], "usage": {
            k: v for k, v in (message.get("usage") or {}).items() if k != "output_tokens"}}})
        for index, block in enumerate(message["content"]):
            out += self.feed("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
            out += self.feed("content_block_stop", {"type": "content_block_stop", "index": index})
        out += self.feed("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")},
            "usage": message.get("usage") or {}})
        out += self.feed("message_stop", {"type": "message_stop"})
        return out


class StreamReader:
    """Upstream response bytes, in any chunking -> canonical events (pure; one per request).

    SSE framing, JSON and the `EventTranslator` together. A failure part-way through a piece
    keeps the events before it: `feed` returns them and `raise_error` raises afterwards.
    """

    def __init__(self, translator: EventTranslator) -> None:
        self.translator = translator
        self.sse = SSEDecoder()
        self.done = False
        self.error: ApiError | None = None

    @property
    def usage(self) -> dict[str, int]:
        return self.translator.usage

    @property
    def output_estimate(self) -> int:
        return self.translator.output_estimate

    def feed(self, raw: bytes) -> list[Event]:
        if self.done or self.error is not None:
            return []
        try:
            events = self.sse.events(raw)
        except ValueError as exc:
            self.error = malformed(self.translator.model_id, str(exc))
            return []
        return self._events(events)

    def feed_whole(self, raw: bytes) -> list[Event]:
        try:
            events = self.translator.feed_message(self._json(raw))
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
        out = [] if self.done else self._events(self.sse.close_events())
        self.raise_error()
        events, finish = self.translator.end()
        return out + events, finish

    def _events(self, events: list[SSEvent]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            try:
                out += self.translator.feed(event.name, self._json(event.data))
            except ApiError as err:
                self.error = err
                break
            if self.translator.stopped is not None or self.translator.finished:
                self.done = True
                break
        return out

    def _json(self, data: str | bytes) -> Any:
        try:
            return jsonutil.loads(data)
        except ValueError:
            raise malformed(self.translator.model_id, "data that is not JSON") from None


# ============================================================================ the engine


class AnthropicCompatEngine(UpstreamEngine):
    kind = "anthropic_compat"
    log = log

    def __init__(self, model: ModelConfig, *, env: dict[str, str] | None = None, redis_url: str = "",
                 redis_prefix: str = "lc:") -> None:
        self.options: Options = parse_options(model, env)
        super().__init__(model, self.options)
        max_bytes = int(self.options.thinking_cache_mb * 1024 * 1024)
        self.signatures: ThinkingSignatures
        if redis_url and max_bytes > 0:
            self.signatures = SharedSignatures(max_bytes, url=redis_url, prefix=redis_prefix, namespace=model.id,
                                               ttl=self.options.thinking_cache_hours * 3600)
        else:
            self.signatures = ThinkingSignatures(max_bytes)

    async def start(self) -> None:
        await self.signatures.start()
        await super().start()

    async def close(self) -> None:
        await super().close()
        await self.signatures.close()

    async def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[Event]:
        await self.signatures.fetch(replayed_thinking(request))
        async for event in super().stream(request, ctx):
            if isinstance(event, Finish):
                # The reply's signatures reach Redis before the client sees its end, so a turn
                # continued at once on another process finds them.
                await self.signatures.flush()
            yield event

    def describe(self) -> dict[str, Any]:
        opts = self.options
        tokenizer = {
            "anthropic": "the upstream's (POST /v1/messages/count_tokens)",
            "none": "estimated before the request (about 3 characters a token); billed by the upstream's count",
        }[opts.tokenize]
        if opts.thinking_type == "adaptive":
            thinking = "adaptive"
        else:
            thinking = f"enabled, budget_tokens the client's or {opts.thinking_budget or 'half of max_tokens'} (at least 1024)"
        return {
            "type": "anthropic_compat",
            "description": "an upstream Anthropic Messages API (streamed)",
            "upstream": [safe_url(u) for u in opts.base_urls],
            "upstream_model": opts.upstream_model,
            "replicas": len(opts.base_urls),
            **self.balancing(),
            "tokenizer": tokenizer,
            "thinking": thinking,
            "thinking_signatures": (
                "not kept: replayed thinking is not sent upstream" if opts.thinking_cache_mb <= 0
                else f"the upstream's, kept in Redis for every process ({opts.thinking_cache_hours:g} h after last use) "
                f"and in this process (up to {opts.thinking_cache_mb:g} MiB), for replayed thinking"
                if isinstance(self.signatures, SharedSignatures)
                else f"the upstream's kept in this process (up to {opts.thinking_cache_mb:g} MiB) for replayed thinking"
            ),
            "anthropic_beta": opts.anthropic_beta,
            "prompt_caching": opts.prompt_caching,
            "context_window": self.model.context_window,
            "max_output": self.model.max_output,
            "native_tool_calls": True,
        }

    # ------------------------------------------------------------------ the wire format

    def request_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if self.options.api_key:
            headers["x-api-key"] = self.options.api_key
        if self.options.anthropic_beta:
            headers["anthropic-beta"] = self.options.anthropic_beta
        return headers

    def map_error(self, status: int, body: bytes, headers: Any) -> ApiError:
        return anthropic_error(status, body, headers, model_id=self.model.id, secrets=self._secrets)

    def generation(self, request: ChatRequest, max_tokens: int | None) -> tuple[str, dict[str, Any]]:
        budget = max_tokens or request.max_tokens or self.model.max_output
        return "/v1/messages", messages_body(request, self.options, max_tokens=budget, signatures=self.signatures)

    def reader(self, request: ChatRequest) -> StreamReader:
        return StreamReader(EventTranslator(
            model_id=self.model.id, stop=request.stop, secrets=self._secrets, on_thinking=self.signatures.keep))

    def tag_account(self, body: dict[str, Any], tag: str) -> None:
        if self.options.send_user:
            body["metadata"] = {**(body.get("metadata") or {}), "user_id": tag}

    async def count_exact(self, request: ChatRequest) -> int:
        await self.signatures.fetch(replayed_thinking(request))
        body = count_body(request, self.options, max_tokens=request.max_tokens or self.model.max_output,
                          signatures=self.signatures)
        result = await self._post_json("/v1/messages/count_tokens", body)
        count = result["input_tokens"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError("input_tokens is not a count")
        return count
