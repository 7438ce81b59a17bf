"""The one abstraction every engine implements, and the small pieces engines share."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from longcat.canonical import ApiError, ChatRequest, Event, Sampling, Usage
from longcat.config import ModelConfig


@dataclass(slots=True)
class CallContext:
    """Per-request state shared between the gateway and the engine.

    The engine keeps `usage` current as tokens flow (input once the prompt is read, output per
    token), so the gateway can settle exactly whatever way the request ends: finished, cut off by
    the client, failed, or stopped by a shutdown.
    """

    request_id: str
    tenant: str = "anonymous"
    usage: Usage = field(default_factory=Usage)
    # The number of prompt tokens if the gateway already counted them (saves a second tokenization).
    prompt_tokens: int | None = None
    prompt_cache: Any = None
    # An opaque, stable tag of the account (not its id), for upstreams that scope caches by user.
    account_tag: str = ""


class Engine(abc.ABC):
    """Serves one catalog model. `stream` is the only way to get a reply: non-streaming is collected."""

    kind: str = "engine"
    # The most characters one token of this engine's tokenizer can cover (0: unknown), and the
    # fewest tokens a message's turn markers take: with them the gateway refuses a prompt too
    # long for the context before spending a tokenization on it (see `min_prompt_tokens`).
    max_token_chars: int = 0
    tokens_per_message: int = 0
    # How many prompts may be counted at once (the gateway's tokenization gate); local
    # tokenizers are CPU-bound, remote ones are not.
    measure_slots: int = 8

    def __init__(self, model: ModelConfig) -> None:
        self.model = model

    @property
    def measure_is_estimate(self) -> bool:
        """True when `measure` only computes an estimate (no tokenizer, no I/O): the gateway
        then skips the tokenization gate, which exists to share real tokenizers fairly."""
        return False

    async def start(self) -> None:
        """Load weights, open connections. Called once before the first request."""

    async def close(self) -> None:
        """Release everything; in-flight streams are cancelled before this is called."""

    async def readiness(self) -> str | None:
        """None when the engine can serve requests now, else a short reason (for /readyz; it
        must answer quickly and reveal no address or credential)."""
        return None

    def occupancy(self) -> tuple[int, int] | None:
        """(requests waiting for a slot, slots busy) for the metrics; None: no slots of its own."""
        return None

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What serves this model, truthfully: shown in the model detail."""

    def min_prompt_tokens(self, request: ChatRequest) -> int:
        """A lower bound on the request's prompt tokens that costs no tokenization (0: unknown)."""
        if not self.max_token_chars:
            return 0
        turns = sum(1 for m in request.messages if m.content)
        return request.text_chars() // self.max_token_chars + turns * self.tokens_per_message

    @abc.abstractmethod
    async def count_tokens(self, request: ChatRequest) -> int:
        """Prompt tokens the request would take, with the engine's own tokenizer."""

    async def measure(self, request: ChatRequest, ctx: CallContext) -> int:
        """Count the prompt before admission; engines may keep their work in `ctx.prompt_cache`."""
        ctx.prompt_tokens = await self.count_tokens(request)
        return ctx.prompt_tokens

    @abc.abstractmethod
    def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[Event]:
        """Yield events ending in `Usage` then `Finish` (or an `Error`)."""

    def sampling(self, request: ChatRequest) -> Sampling:
        """The sampling values `stream` will use for `request`: by default the request's own, and
        `None` (unknown) for what it leaves out. Engines that pick their own defaults say so."""
        return Sampling(request.temperature, request.top_p)


class StopMatcher:
    """Finds stop sequences in streamed text without ever emitting part of one.

    Text that could still be the start of a stop sequence is held back until the next piece
    decides it.
    """

    __slots__ = ("stops", "_buf", "_longest")

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._buf = ""
        self._longest = max((len(s) for s in self.stops), default=0)

    def feed(self, text: str) -> tuple[str, str | None]:
        """Returns (text safe to emit, the stop sequence found or None). After a match, stop feeding."""
        if not self.stops:
            return text, None
        self._buf += text
        first: tuple[int, str] | None = None
        for stop in self.stops:
            at = self._buf.find(stop)
            if at != -1 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            out = self._buf[: first[0]]
            self._buf = ""
            return out, first[1]
        keep = 0
        for n in range(min(self._longest - 1, len(self._buf)), 0, -1):
            tail = self._buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                keep = n
                break
        out, self._buf = (self._buf[:-keep], self._buf[-keep:]) if keep else (self._buf, "")
        return out, None

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return out


def context_exceeded(model: ModelConfig, prompt_tokens: int, *, at_least: bool = False) -> ApiError:
    """The 400 for a prompt that does not fit; names both numbers and the way out. `at_least`:
    the count is a lower bound (the prompt was refused before it was tokenized)."""
    needs = f"at least {prompt_tokens:,}" if at_least else f"{prompt_tokens:,}"
    return ApiError(
        "invalid_request",
        "context_length_exceeded",
        f"This request needs {needs} prompt tokens, but the model {model.id!r} has a context window of "
        f"{model.context_window:,} tokens. Shorten the conversation, or ask the operator to attach a model with a "
        f"larger context window: a [[models]] entry with engine = \"openai_compat\" and the base_url of an "
        f"OpenAI-compatible server (vLLM, SGLang, llama.cpp server, Ollama).",
        param="messages",
    )
