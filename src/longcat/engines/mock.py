"""A deterministic engine for tests and for people testing their own clients.

With no script it echoes the last user message back. With a script (in the catalog entry) it
follows it: step k of the script answers the k-th model turn after the user last wrote, so a
client that calls a tool and sends the result back walks through the steps (a tool step applies
only when the request offers tools):

    [[models]]
    id = "mock-agent"
    engine = "mock"
    script = [
      { tool = "Bash", arguments = { command = "echo hi" } },
      { text = "The command printed hi." },
    ]

Options: `token_delay` (seconds between tokens), `first_token_delay`, `count_delay` (seconds
counting a prompt takes), `thinking` (reasoning text sent before each reply unless the request
turns thinking off), `fail_after_tokens` (fail the stream on purpose), and `context_window` /
`max_output` as for any model.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from longcat.canonical import (
    ApiError,
    ChatRequest,
    Error,
    Event,
    Finish,
    ImageBlock,
    Sampling,
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
from longcat.engines.options import number, reject_unknown

_PIECE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+$")


def pieces(text: str) -> list[str]:
    """The mock tokenizer: words and punctuation with their leading space; joins back to `text`."""
    return _PIECE.findall(text)


def count_text_tokens(text: str) -> int:
    return len(pieces(text))


OPTION_KEYS = frozenset({"script", "token_delay", "first_token_delay", "count_delay", "thinking", "fail_after_tokens"})


def parse_options(model: ModelConfig) -> dict[str, Any]:
    """Check a mock model's options; raises `ConfigError` naming the model and the option."""
    reject_unknown(model, "mock", OPTION_KEYS)
    script = model.options.get("script") or []
    if not isinstance(script, list):
        raise ConfigError(f"model {model.id!r}: script must be an array of steps ({{ text = … }} or {{ tool = … }})")
    for i, step in enumerate(script):
        if not isinstance(step, dict) or not ({"text", "tool", "tool_calls"} & step.keys()):
            raise ConfigError(f"model {model.id!r}: script step {i} needs 'text', 'tool' or 'tool_calls'")
        calls = step.get("tool_calls", [])
        if not isinstance(calls, list) or not all(isinstance(c, dict) and "name" in c for c in calls):
            raise ConfigError(f"model {model.id!r}: script step {i}: tool_calls must be an array of {{ name = …, arguments = … }}")
    delays = {name: number(model, name, 0.0) for name in ("token_delay", "first_token_delay", "count_delay")}
    thinking = model.options.get("thinking")
    if thinking is not None and not isinstance(thinking, str):
        raise ConfigError(f"model {model.id!r}: thinking must be a string (the reasoning text)")
    return {
        "script": list(script),
        **delays,
        "thinking": thinking,
        "fail_after_tokens": number(model, "fail_after_tokens", None, integer=True),
    }


class MockEngine(Engine):
    kind = "mock"

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model)
        opts = parse_options(model)
        self.script: list[dict[str, Any]] = opts["script"]
        self.token_delay = opts["token_delay"]
        self.first_token_delay = opts["first_token_delay"]
        self.thinking = opts["thinking"]
        self.fail_after = opts["fail_after_tokens"]
        self.count_delay = opts["count_delay"]

    def describe(self) -> dict[str, Any]:
        return {
            "type": "mock",
            "description": "deterministic test engine: " + ("follows a script" if self.script else "echoes the last user message"),
            "tokenizer": "mock (words and punctuation)",
        }

    @property
    def measure_is_estimate(self) -> bool:
        return not self.count_delay  # a mock with a delay plays a slow tokenizer: it takes the gate

    async def count_tokens(self, request: ChatRequest) -> int:
        if self.count_delay:
            await asyncio.sleep(self.count_delay)  # a slow tokenizer, for tests of admission
        return count_prompt_tokens(request)

    def sampling(self, request: ChatRequest) -> Sampling:
        """The request's values; what it leaves out is greedy decoding, which is what a
        deterministic engine amounts to."""
        return Sampling(
            request.temperature if request.temperature is not None else 0.0,
            request.top_p if request.top_p is not None else 1.0,
            0.0,
            0.0,
        )

    def _step(self, request: ChatRequest) -> dict[str, Any] | None:
        if not self.script:
            return None
        return self.script[min(model_turns(request), len(self.script) - 1)]

    async def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[Event]:
        ctx.usage.input_tokens = ctx.prompt_tokens if ctx.prompt_tokens is not None else count_prompt_tokens(request)
        budget = request.max_tokens or self.model.max_output
        step = self._step(request)
        emitted = 0

        if self.first_token_delay:
            await asyncio.sleep(self.first_token_delay)

        async def tick() -> bool:
            """Make one output token; False when the budget is spent. A token is counted only
            once it is about to be handed on, so a stream cut while waiting is not charged for it."""
            nonlocal emitted
            if self.fail_after is not None and emitted >= int(self.fail_after):
                raise _Fail
            if emitted >= budget:
                return False
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            emitted += 1
            ctx.usage.output_tokens = emitted
            return True

        try:
            thinking = (step or {}).get("thinking", self.thinking)
            if thinking and request.thinking is not False:
                for piece in pieces(str(thinking)):
                    if not await tick():
                        yield Usage(ctx.usage.input_tokens, emitted)
                        yield Finish("length")
                        return
                    yield ThinkingDelta(piece)

            # A tool step only applies when the request offers tools (a client's side requests,
            # such as title generation, get the echo instead).
            calls = _scripted_calls(step) if request.tools else []
            if calls:
                for index, (name, arguments) in enumerate(calls):
                    yield ToolCallStart(index, new_tool_call_id(), name)
                    for piece in pieces(arguments):
                        if not await tick():
                            yield ToolCallEnd(index)
                            yield Usage(ctx.usage.input_tokens, emitted)
                            yield Finish("length")
                            return
                        yield ToolCallDelta(index, piece)
                    yield ToolCallEnd(index)
                yield Usage(ctx.usage.input_tokens, emitted)
                yield Finish("tool_calls")
                return

            text = str(step["text"]) if step and "text" in step else _echo(request)
            matcher = StopMatcher(request.stop)
            for piece in pieces(text):
                if not await tick():
                    rest = matcher.flush()
                    if rest:
                        yield TextDelta(rest)
                    yield Usage(ctx.usage.input_tokens, emitted)
                    yield Finish("length")
                    return
                out, stop = matcher.feed(piece)
                if out:
                    yield TextDelta(out)
                if stop is not None:
                    yield Usage(ctx.usage.input_tokens, emitted)
                    yield Finish("stop_sequence", stop)
                    return
            rest = matcher.flush()
            if rest:
                yield TextDelta(rest)
            yield Usage(ctx.usage.input_tokens, emitted)
            yield Finish("stop")
        except _Fail:
            yield Error(ApiError("upstream", "upstream_error", "the mock engine failed on purpose (fail_after_tokens)"))


class _Fail(Exception):
    pass


def model_turns(request: ChatRequest) -> int:
    """How many times the model has answered since the user last asked something.

    Tool results do not end a turn, and neither does text a client adds right after them (some
    agents append context, e.g. the state of their sessions, after each tool result)."""
    messages = request.messages
    turns = 0
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if message.role == "assistant":
            turns += 1
        elif message.role == "user" and not _has_tool_result(message):
            follows_results = i > 0 and messages[i - 1].role == "user" and _has_tool_result(messages[i - 1])
            if not follows_results:
                break
    return turns


def _has_tool_result(message) -> bool:
    return any(isinstance(b, ToolResultBlock) for b in message.content)


def _scripted_calls(step: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not step:
        return []
    raw = step.get("tool_calls") or ([{"name": step["tool"], "arguments": step.get("arguments", {})}] if "tool" in step else [])
    calls = []
    for call in raw:
        args = call.get("arguments", {})
        calls.append((str(call["name"]), args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)))
    return calls


def _echo(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role != "user":
            continue
        parts = []
        for block in message.content:
            if isinstance(block, TextBlock):
                parts.append(block.text)
            elif isinstance(block, ToolResultBlock):
                parts.append(block.text())
        text = "\n".join(p for p in parts if p)
        if text:
            return text
    return "(nothing to echo)"


def count_prompt_tokens(request: ChatRequest) -> int:
    """Deterministic prompt size: every text the model would read, plus 3 tokens per message."""
    total = count_text_tokens(request.system_text()) + (3 if request.system else 0)
    for message in request.messages:
        total += 3
        for block in message.content:
            if isinstance(block, TextBlock):
                total += count_text_tokens(block.text)
            elif isinstance(block, ThinkingBlock):
                total += count_text_tokens(block.text)
            elif isinstance(block, ToolUseBlock):
                total += count_text_tokens(block.name) + count_text_tokens(block.arguments)
            elif isinstance(block, ToolResultBlock):
                total += count_text_tokens(block.text())
            elif isinstance(block, ImageBlock):
                total += 85
    for tool in request.tools:
        total += count_text_tokens(tool.name + " " + tool.description + " " + json.dumps(tool.parameters))
    return total
