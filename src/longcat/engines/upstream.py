"""What the engines in front of upstream HTTP servers share (`openai_compat`, `anthropic_compat`).

The wire formats differ; the rest is the same: the common catalog options, a pool of replicas
with failover before the first byte of a reply, the mapping of HTTP failures to the platform's
errors, SSE framing, counting with an estimate to fall back on, and the streaming loop that keeps
`ctx.usage` current and closes the upstream request when the client leaves. `UpstreamEngine` is
that loop; a subclass says how its format builds a request, reads a stream and names its errors.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import json
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

from longcat import jsonutil
from longcat.canonical import (
    ApiError,
    ChatRequest,
    Error,
    Event,
    Finish,
    ImageBlock,
    Sampling,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
    new_tool_call_id,
)
from longcat.config import ConfigError, ModelConfig
from longcat.engines import http1
from longcat.engines.base import CallContext, Engine
from longcat.engines.options import reject_unknown
from longcat.engines.probe import ReplicaProbe
from longcat.engines.replicas import (
    BUSY,
    FAILED,
    LEFT,
    OK,
    Lease,
    Replica,
    ReplicaSet,
    ReplicaStats,
    host_and_port,
)
from longcat.observe import metrics

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 600.0
DEFAULT_MAX_CONNECTIONS = 64
# How long a request waits for a free connection when `max_connections` are all busy.
POOL_WAIT = 30.0
_JSON = {"content-type": "application/json"}
# The circuit breaker (see `engines/replicas.py`): consecutive failures that open it, and how long
# it stays open (a replica that failed once is tried last for as long).
DEFAULT_CIRCUIT_FAILURES = 5
DEFAULT_CIRCUIT_COOLDOWN = 5.0
# Active health checks, when `health_path` is set: seconds between probes, and each probe's limit.
DEFAULT_HEALTH_INTERVAL = 5.0
DEFAULT_HEALTH_TIMEOUT = 2.0
# Upstream error bodies read (and messages shown) are cut to these sizes.
MAX_ERROR_BODY = 64 * 1024
MAX_ERROR_MESSAGE = 400
# A single SSE line longer than this is not a stream we can trust.
MAX_SSE_LINE = 16 * 1024 * 1024
# Estimated prompt tokens per image when the upstream cannot count them for us.
IMAGE_TOKENS_ESTIMATE = 1024
# Estimated tokens a message's role and separators take.
MESSAGE_OVERHEAD = 4

# The options every upstream engine takes; each engine adds its own.
COMMON_OPTION_KEYS = frozenset(
    {
        "base_url",
        "base_urls",
        "upstream_model",
        "api_key",
        "api_key_env",
        "timeout",
        "max_connections",
        "tokenize",
        "extra_body",
        "send_user",
        "health_path",
        "health_interval",
        "health_timeout",
        "circuit_failures",
        "circuit_cooldown",
    }
)


# ============================================================================ options


@dataclass(slots=True)
class UpstreamOptions:
    """The options of a catalog entry served upstream, checked once at start-up."""

    base_urls: list[str]
    upstream_model: str
    api_key: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    tokenize: str = "none"
    extra_body: dict[str, Any] = field(default_factory=dict)
    # Tell the upstream which account a request is for (an opaque tag, never the account id).
    send_user: bool = False
    # Per replica, the share of concurrent requests it takes (empty: 1 each).
    weights: list[float] = field(default_factory=list)
    # GET this path (at the server root) on every replica each `health_interval` s; None: no probes.
    health_path: str | None = None
    health_interval: float = DEFAULT_HEALTH_INTERVAL
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    # Consecutive failures that set a replica aside (0: never), and for how long.
    circuit_failures: int = DEFAULT_CIRCUIT_FAILURES
    circuit_cooldown: float = DEFAULT_CIRCUIT_COOLDOWN


def parse_common(
    model: ModelConfig,
    env: dict[str, str] | None,
    *,
    engine: str,
    known: set[str] | frozenset[str],
    tokenize_modes: tuple[str, ...],
) -> dict[str, Any]:
    """The common options of `model`, checked, as keyword arguments of `UpstreamOptions`.

    Raises `ConfigError` naming the model and the option; unknown keys (not in `known`) too."""
    opts = model.options
    where = f"model {model.id!r}"
    reject_unknown(model, engine, known)

    if ("base_url" in opts) == ("base_urls" in opts):
        raise ConfigError(f"{where}: give exactly one of 'base_url' or 'base_urls'")
    raw_urls = [opts["base_url"]] if "base_url" in opts else opts["base_urls"]
    if not isinstance(raw_urls, list) or not raw_urls:
        raise ConfigError(f"{where}: 'base_urls' must be a non-empty array of URLs")
    urls, weights = [], []
    for entry in raw_urls:
        url, weight = _replica_entry(entry, where)
        urls.append(url)
        weights.append(weight)

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
    if tokenize not in tokenize_modes:
        raise ConfigError(f"{where}: 'tokenize' must be one of {', '.join(tokenize_modes)}")

    extra_body = opts.get("extra_body", {})
    if not isinstance(extra_body, dict):
        raise ConfigError(f"{where}: 'extra_body' must be a table")
    send_user = opts.get("send_user", False)
    if not isinstance(send_user, bool):
        raise ConfigError(f"{where}: 'send_user' must be true or false")

    health_path = opts.get("health_path")
    if health_path is not None and (not isinstance(health_path, str) or not re.fullmatch(r"/[^\s?#]*", health_path)):
        raise ConfigError(f"{where}: 'health_path' must be a path starting with '/' (e.g. \"/health\" or \"/v1/models\")")
    if health_path is None and ("health_interval" in opts or "health_timeout" in opts):
        raise ConfigError(f"{where}: 'health_interval' and 'health_timeout' need 'health_path' (the route to probe)")
    circuit_failures = opts.get("circuit_failures", DEFAULT_CIRCUIT_FAILURES)
    if not isinstance(circuit_failures, int) or isinstance(circuit_failures, bool) or circuit_failures < 0:
        raise ConfigError(f"{where}: 'circuit_failures' must be a whole number, 0 or more (0: no circuit breaker)")

    return {
        "base_urls": urls,
        "weights": weights,
        "health_path": health_path,
        "health_interval": _seconds(opts, "health_interval", DEFAULT_HEALTH_INTERVAL, where),
        "health_timeout": _seconds(opts, "health_timeout", DEFAULT_HEALTH_TIMEOUT, where),
        "circuit_failures": circuit_failures,
        "circuit_cooldown": _seconds(opts, "circuit_cooldown", DEFAULT_CIRCUIT_COOLDOWN, where),
        "upstream_model": upstream_model,
        "api_key": api_key or None,
        "connect_timeout": connect,
        "read_timeout": read,
        "max_connections": max_connections,
        "tokenize": tokenize,
        "extra_body": dict(extra_body),
        "send_user": send_user,
    }


def _replica_entry(entry: Any, where: str) -> tuple[str, float]:
    """A `base_urls` entry: a URL, or a table `{ url = "…", weight = 2 }`."""
    weight: Any = 1.0
    url = entry
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - {"url", "weight"})
        if unknown or "url" not in entry:
            raise ConfigError(f"{where}: a replica table takes 'url' and 'weight' (got {', '.join(sorted(entry)) or 'nothing'})")
        url, weight = entry["url"], entry.get("weight", 1.0)
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(f"{where}: base URL {safe_url(str(url))!r} must start with http:// or https://")
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0 < weight <= 1000:
        raise ConfigError(f"{where}: a replica's 'weight' must be a number above 0 (at most 1000)")
    return url.rstrip("/"), float(weight)


def _seconds(opts: dict[str, Any], name: str, default: float, where: str) -> float:
    value = opts.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 86400:
        raise ConfigError(f"{where}: {name!r} must be a number of seconds above 0")
    return float(value)


def merge_extra_body(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra_body` fields the request did not set; tables merge, the request's keys winning."""
    for key, value in extra.items():
        if key not in body:
            body[key] = value
        elif isinstance(body[key], dict) and isinstance(value, dict):
            body[key] = {**value, **body[key]}
    return body


def safe_url(url: str) -> str:
    """A URL fit to show: no user, password, query or fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host, port = host_and_port(parts)
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every engine (building one takes ~30 ms: 30 models, a second)."""
    return httpx.create_ssl_context()


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


# What a token streamed on its own looks like: one word with its leading white space, or white space.
ONE_TOKEN_PIECE = re.compile(r"\s{0,8}[A-Za-z]{1,24}|\s{1,16}")


def estimate_output_tokens(text: str) -> int:
    """Output tokens in one streamed piece (at least 1), until the upstream's own count arrives
    (or for good, from an upstream that never sends one: llama-cpp-python's server).

    Most servers stream a token a piece: a piece that is one word, however long (" photosynthesis"),
    counts 1, as it did when they generated it. Longer pieces come from servers that batch
    several tokens: about 4 ASCII characters, or one other character, a token."""
    if ONE_TOKEN_PIECE.fullmatch(text):
        return 1
    ascii_chars = len(text.encode("ascii", "ignore"))
    return max(1, ascii_chars // 4 + (len(text) - ascii_chars))


# ============================================================================ upstream errors

CONTEXT_ERROR = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|max_model_len|model'?s? maximum|prompt is too long|"
    r"too many (input )?tokens|input (is )?too long|exceeds? the (available |maximum )?context|n_ctx|"
    r"reduce the length",
    re.IGNORECASE,
)


def error_fields(body: Any, raw: str) -> tuple[str, str]:
    """(message, code-or-type) from the usual error bodies: OpenAI/vLLM, Anthropic, FastAPI, llama.cpp, text."""
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


def clean(message: str, secrets: tuple[str, ...] = ()) -> str:
    """An upstream message fit to pass on: one line, short, without our credentials."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    message = re.sub(r"\s+", " ", message).strip()
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 1] + "…"
    return message


def retry_after(headers: Any) -> str:
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
    message, code = error_fields(parsed, raw)
    said = clean(message, secrets)
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
            headers={"Retry-After": retry_after(headers)},
        )
    if status in (400, 413, 422) or (status >= 500 and CONTEXT_ERROR.search(message)):
        if status == 413 or CONTEXT_ERROR.search(message) or CONTEXT_ERROR.search(code):
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


def malformed(model_id: str, what: str) -> ApiError:
    return ApiError("upstream", "upstream_error", f"The model server behind {model_id!r} sent a malformed stream ({what}).")


def cut_short(model_id: str) -> ApiError:
    return ApiError(
        "upstream", "upstream_error", f"The model server behind {model_id!r} closed the stream before the reply was complete."
    )


# ============================================================================ SSE, tool-call ids


@dataclass(slots=True)
class SSEvent:
    """One server-sent event: its `event` name (None if it had none) and its `data`."""

    name: str | None
    data: str


class SSEDecoder:
    """Bytes of a `text/event-stream`, in any chunking, -> the `data` of each complete event.

    `events` gives the event names too (the Anthropic stream names every event)."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._data: list[str] = []
        self._name: str | None = None
        self._after_cr = False  # the last piece ended in "\r": a "\n" opening the next is its pair

    def feed(self, raw: bytes) -> list[str]:
        return [e.data for e in self.events(raw)]

    def close(self) -> list[str]:
        return [e.data for e in self.close_events()]

    def events(self, raw: bytes) -> list[SSEvent]:
        text = self._utf8.decode(raw)
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        if text:
            self._after_cr = text.endswith("\r")
            if "\r" in text:  # (the held-back rest never has one: it was split on them already)
                text = text.replace("\r\n", "\n").replace("\r", "\n")
        *lines, self._buf = (self._buf + text).split("\n")
        if len(self._buf) > MAX_SSE_LINE:
            raise ValueError("an SSE line longer than 16 MiB")
        out: list[SSEvent] = []
        for line in lines:
            if line.startswith("data: "):  # nearly every line: no need for the general parse
                self._data.append(line[6:])
            elif (event := self._line(line)) is not None:
                out.append(event)
        return out

    def close_events(self) -> list[SSEvent]:
        """At the end of the body: an unterminated last event still counts (lenient)."""
        out = self.events(self._utf8.decode(b"", final=True).encode() + b"\n")
        if self._data:
            out.append(SSEvent(self._name, "\n".join(self._data)))
            self._data, self._name = [], None
        return out

    def _line(self, line: str) -> SSEvent | None:
        if not line:
            name, self._name = self._name, None
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return SSEvent(name, data)
        if line.startswith(":"):
            return None
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "data":
            self._data.append(value)
        elif key == "event":
            self._name = value
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


# ============================================================================ the engine


class Reader(Protocol):
    """An upstream reply, bytes in, canonical events out (pure; one per request).

    A failure part-way through a piece keeps the events before it: `feed` returns them and
    `raise_error` raises afterwards. `usage` holds what the upstream reported so far (`input`,
    `output`, `cached`), `output_estimate` the output counted from the text received."""

    done: bool

    def feed(self, raw: bytes) -> list[Event]: ...

    def feed_whole(self, raw: bytes) -> list[Event]: ...

    def raise_error(self) -> None: ...

    def end(self) -> tuple[list[Event], Finish]: ...

    @property
    def usage(self) -> dict[str, int]: ...

    @property
    def output_estimate(self) -> int: ...


class UpstreamEngine(Engine):
    """A model served by upstream HTTP servers: replicas, failover, counting, the streaming loop.

    Subclasses set `log`, `describe`, and the wire format: `request_headers`, `generation`
    (path and body of the streamed request), `reader`, `map_error` and `count_exact`.
    """

    kind = "upstream"
    log = logging.getLogger("longcat.engine.upstream")

    def __init__(self, model: ModelConfig, options: UpstreamOptions) -> None:
        super().__init__(model)
        self.options = options
        self._secrets = (options.api_key,) if options.api_key else ()
        self._pool: http1.Pool | None = None
        self._replicas = ReplicaSet(
            options.base_urls, options.weights, model_id=model.id, log=self.log,
            circuit_failures=options.circuit_failures, circuit_cooldown=options.circuit_cooldown,
            health_interval=options.health_interval if options.health_path else 0.0,
        )
        self._health: asyncio.Task | None = None
        self._count_warned = False
        self._probe: ReplicaProbe | None = None

    # ------------------------------------------------------------------ the wire format

    def request_headers(self) -> dict[str, str]:
        """Headers on every upstream request (credentials among them: never logged)."""
        return {}

    def url(self, base: str, path: str, root: bool) -> str:
        """The URL of `path` on the replica `base`; `root` for routes outside the API prefix."""
        return base + path

    def map_error(self, status: int, body: bytes, headers: Any) -> ApiError:
        return upstream_error(status, body, headers, model_id=self.model.id, secrets=self._secrets)

    async def count_exact(self, request: ChatRequest) -> int:
        """The upstream's own count of the prompt (only called when `tokenize` is not "none")."""
        raise NotImplementedError

    def generation(self, request: ChatRequest, max_tokens: int | None) -> tuple[str, dict[str, Any]]:
        """(path, body) of the streamed generation request."""
        raise NotImplementedError

    def reader(self, request: ChatRequest) -> Reader:
        raise NotImplementedError

    def tag_account(self, body: dict[str, Any], tag: str) -> None:
        """Tell the upstream, in its own field, which account `body` is for (`tag`: opaque)."""

    def sampling(self, request: ChatRequest) -> Sampling:
        """What the upstream is sent (the request's values as translated, or `extra_body`'s);
        a value left out is the upstream's own default, which is not known here."""
        _, body = self.generation(request, request.max_tokens)

        def sent(name: str) -> float | None:
            value = body.get(name)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        return Sampling(sent("temperature"), sent("top_p"), sent("presence_penalty"), sent("frequency_penalty"))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        opts = self.options
        self._pool = http1.Pool(
            headers=self.request_headers(),
            ssl_context=tls_context(),
            connect_timeout=opts.connect_timeout,
            read_timeout=opts.read_timeout,
            pool_timeout=POOL_WAIT,
            max_connections=opts.max_connections,
        )
        if opts.health_path:
            self._health = asyncio.get_running_loop().create_task(self._watch_health(), name=f"health {self.model.id}")
        self.log.info(
            "model %s: upstream %s (model %s, %d replica%s)",
            self.model.id,
            ", ".join(safe_url(u) for u in opts.base_urls),
            opts.upstream_model,
            len(opts.base_urls),
            "" if len(opts.base_urls) == 1 else "s",
        )

    async def readiness(self) -> str | None:
        """Ready while at least one replica passes the health checks (with `health_path`), or
        answers HTTP at all (asked at most every few seconds)."""
        if self._pool is None:
            return "the engine is not started"
        if self.options.health_path:
            # The active health checks already know; no second probe of our own.
            healthy = sum(r.healthy for r in self._replicas.replicas)
            return None if healthy else f"none of its {len(self._replicas.replicas)} replicas passes its health check"
        if self._probe is None:
            self._probe = ReplicaProbe(self.request_headers(), tls_context())
        return await self._probe.check([self.url(b, "/health", True) for b in self.options.base_urls])

    async def close(self) -> None:
        health, self._health = self._health, None
        if health is not None:
            health.cancel()
            await asyncio.gather(health, return_exceptions=True)
        if self._probe is not None:
            await self._probe.aclose()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

    # ------------------------------------------------------------------ replicas

    def replica_stats(self) -> list[ReplicaStats]:
        """Per replica (host:port): requests in flight, health, circuit, requests, errors, latency.
        This process's figures only: every gateway process balances and probes on its own."""
        return self._replicas.stats()

    def balancing(self) -> dict[str, Any]:
        """How requests are spread over the replicas, for `describe` (operators only see
        `replica_status`: it names the replicas)."""
        opts = self.options
        return {
            "balancing": "fewest requests in flight" + (
                f" per weight ({', '.join(f'{w:g}' for w in opts.weights)})" if len(set(opts.weights)) > 1 else ""),
            "health_check": (f"GET {opts.health_path} every {opts.health_interval:g} s (limit {opts.health_timeout:g} s)"
                             if opts.health_path else None),
            "circuit_breaker": (f"after {opts.circuit_failures} failures in a row, {opts.circuit_cooldown:g} s aside"
                                if opts.circuit_failures else None),
            "replica_status": [asdict(stat) for stat in self.replica_stats()],
        }

    async def _watch_health(self) -> None:
        """Probe every replica's `health_path` every `health_interval` seconds, for as long as
        the engine runs: 2xx or 3xx in time passes; a 429 says nothing; anything else fails."""
        opts = self.options
        limit = opts.health_timeout
        pool = http1.Pool(headers=self.request_headers(), ssl_context=tls_context(), connect_timeout=limit,
                          read_timeout=limit, pool_timeout=limit, max_connections=2 * len(opts.base_urls))

        async def probe(replica: Replica) -> None:
            try:
                async with asyncio.timeout(limit):
                    response = await pool.send("GET", self.url(replica.url, opts.health_path or "/", True), b"")
                    await response.aread()  # to its end: the connection is kept for the next probe
            except (TimeoutError, http1.ReadTimeout):
                self._replicas.probed(replica, False, f"no answer within {limit:g} s")
                return
            except http1.HttpError as exc:
                self._replicas.probed(replica, False, str(exc))
                return
            except Exception:  # a bug here must not end the probing of every replica
                self.log.exception("model %s: the health check of %s failed", self.model.id, replica.label)
                return
            if response.status_code != 429:
                self._replicas.probed(replica, 200 <= response.status_code < 400, f"HTTP {response.status_code}")

        try:
            while True:
                await asyncio.gather(*(probe(r) for r in self._replicas.replicas))
                await asyncio.sleep(opts.health_interval)
        finally:
            await pool.aclose()

    async def _send(self, method: str, path: str, body: dict[str, Any], *, root: bool = False) -> tuple[http1.Response, Lease]:
        """Send to a replica that answers; a streamed response the caller must close, and the
        lease on its replica the caller must end (`Lease.done`, once).

        A request moves on to the next replica only while no replica can have started on it: it
        could not be connected (or its body sent), or the replica answered with a 5xx or a 429.
        A replica that took the request and then went silent or dropped it may be generating:
        sending it again would run it twice."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("the engine was not started")
        replicas = self._replicas
        data = jsonutil.dumps(body)
        tried: list[Replica] = []
        unreachable = 0
        refused: ApiError | None = None  # the last 5xx or 429, passed on if no replica answers
        while (replica := replicas.choose(tried)) is not None:
            tried.append(replica)
            lease: Lease | None = replicas.take(replica)
            outcome = FAILED
            wait = 0.0
            try:
                try:
                    response = await pool.send(method, self.url(replica.url, path, root), data, _JSON)
                except http1.ConnectFailed as exc:
                    unreachable += 1
                    self.log.warning("model %s: upstream %s unreachable (%s)%s", self.model.id, safe_url(replica.url), exc,
                                     "; trying the next replica" if len(tried) < len(replicas.replicas) else "")
                    continue
                except http1.Dropped as exc:
                    self.log.warning("model %s: upstream %s dropped the request (%s)", self.model.id, safe_url(replica.url), exc)
                    raise ApiError(
                        "upstream", "upstream_error", f"The model server behind {self.model.id!r} dropped the request; please retry."
                    ) from None
                except http1.PoolTimeout:
                    outcome = LEFT  # our own pool was full: nothing against the replica
                    raise ApiError(
                        "overloaded",
                        "overloaded",
                        f"All {self.options.max_connections} connections to the model server behind {self.model.id!r} are busy; retry shortly.",
                        headers={"Retry-After": "2"},
                    ) from None
                except http1.ReadTimeout:
                    self.log.warning("model %s: upstream %s did not answer within %.1f s", self.model.id, safe_url(replica.url),
                                     self.options.read_timeout)
                    raise ApiError(
                        "upstream", "upstream_error", f"The model server behind {self.model.id!r} did not answer in time; please retry."
                    ) from None
                except http1.HttpError as exc:
                    self.log.warning("model %s: request to %s failed: %s", self.model.id, safe_url(replica.url), exc)
                    raise ApiError("upstream", "upstream_error", f"The model server behind {self.model.id!r} could not be reached.") from None
                status = response.status_code
                if status != 429 and status < 500:
                    outcome = OK
                    lease.answered()
                    owned, lease = lease, None  # the caller's now
                    return response, owned
                if status == 429:
                    outcome, wait = BUSY, float(retry_after(response.headers))
                try:
                    await self._check(response)  # reads, logs and closes it; raises its error
                except ApiError as err:
                    refused = err
            except asyncio.CancelledError:
                outcome = LEFT  # the client left while the replica was being asked
                raise
            finally:
                metrics.upstream_request(self.model.id, replica.url, outcome)  # ok, failed, busy, left
                if lease is not None:
                    lease.done(outcome, wait)
        if refused is not None:
            raise refused
        if unreachable:
            raise ApiError(
                "upstream",
                "upstream_error",
                f"The model server behind {self.model.id!r} could not be reached"
                + (f" (tried {unreachable} replicas)." if unreachable > 1 else "."),
            )
        raise replicas.unavailable()

    async def _check(self, response: http1.Response) -> None:
        """Raise the mapped `ApiError` (and close the response) unless it is a 200."""
        if response.status_code == 200:
            return
        body = b""
        try:
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) >= MAX_ERROR_BODY:
                    break
        except http1.HttpError:
            pass
        finally:
            await response.aclose()
        err = self.map_error(response.status_code, body, response.headers)
        status = response.status_code
        # The operator must act on these; the client's own mistakes are only of passing interest.
        level = logging.ERROR if status in (401, 402, 403, 404) else logging.INFO if err.kind == "invalid_request" else logging.WARNING
        self.log.log(level, "model %s: upstream %s answered HTTP %d: %s", self.model.id, safe_url(str(response.url)),
                     status, clean(body.decode("utf-8", "replace"), self._secrets))
        raise err

    async def _post_json(self, path: str, body: dict[str, Any], *, root: bool = False) -> Any:
        response, lease = await self._send("POST", path, body, root=root)
        outcome = LEFT
        try:
            await self._check(response)
            outcome = FAILED
            data = await response.aread()
            outcome = OK
            return json.loads(data)
        except ApiError:
            outcome = OK  # a 4xx: the replica works, the request did not
            raise
        finally:
            try:
                await response.aclose()
            finally:
                lease.done(outcome)

    # ------------------------------------------------------------------ counting

    @property
    def measure_is_estimate(self) -> bool:
        return self.options.tokenize == "none"

    async def count_tokens(self, request: ChatRequest) -> int:
        return (await self._count(request))[0]

    async def _count(self, request: ChatRequest) -> tuple[int, bool]:
        """(prompt tokens, whether the upstream counted them). An upstream that cannot count
        (down, no such route) gets an estimate, with one warning, rather than failing requests."""
        if self.options.tokenize != "none":
            try:
                count = await self.count_exact(request)
                self._count_warned = False
                return count, True
            except (ApiError, http1.HttpError, ValueError, KeyError, TypeError) as exc:
                if isinstance(exc, ApiError) and exc.code == "context_length_exceeded":
                    raise  # the upstream counted, and the prompt does not fit: that is the answer
                if not self._count_warned:
                    self._count_warned = True
                    self.log.warning("model %s: the upstream could not count tokens (%s); estimating until it can",
                                     self.model.id, getattr(exc, "message", type(exc).__name__))
        return estimate_prompt_tokens(request), False

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
            # Servers refuse prompt + max_tokens beyond their context; with an exact count, fit it.
            budget = max(1, min(budget, self.model.context_window - prompt))
        path, body = self.generation(request, budget)
        if ctx.account_tag:
            self.tag_account(body, ctx.account_tag)
        reader = self.reader(request)
        response, lease = await self._send("POST", path, body)
        emitted = checked = False
        outcome = LEFT  # until the reply ends one way or another: the client may leave first
        try:
            await self._check(response)  # logs what it raises
            checked = True
            try:
                if response.headers.get("content-type", "").startswith("application/json"):
                    # An upstream that ignored `stream`: its whole reply at once.
                    pieces: AsyncIterator[bytes] = _one(await response.aread())
                    feed = reader.feed_whole
                else:
                    pieces, feed = response.aiter_bytes(), reader.feed
                async for piece in pieces:
                    for event in feed(piece):
                        emitted = True
                        yield event
                    reader.raise_error()
                    self._meter(ctx, reader, budget)
                    if reader.done:
                        await _drain(pieces)
                        break
            except http1.ReadTimeout:
                raise ApiError(
                    "upstream", "upstream_error", f"The model server behind {self.model.id!r} stopped answering (read timeout)."
                ) from None
            except http1.HttpError as exc:
                self.log.warning("model %s: upstream stream broke: %s", self.model.id, exc)
                raise ApiError(
                    "upstream", "upstream_error", f"The connection to the model server behind {self.model.id!r} broke mid-reply."
                ) from None
            events, finish = reader.end()
            outcome = OK
            self._meter(ctx, reader, budget)
            for event in events:
                emitted = True
                yield event
            yield Usage(ctx.usage.input_tokens, ctx.usage.output_tokens, ctx.usage.cached_tokens)
            yield finish
        except ApiError as err:
            # A reply that broke, stalled or made no sense counts against the replica; a 4xx
            # (before the stream) or an error about the request (inside it) does not.
            if checked and err.kind == "upstream":
                outcome = FAILED
            else:
                outcome = LEFT if err.kind == "overloaded" else OK
            self._meter(ctx, reader, budget)
            if checked:
                self.log.warning("model %s: request %s failed %s: %s", self.model.id, ctx.request_id,
                                 "mid-reply" if emitted else "before any output", err.message)
            if not emitted:
                raise
            yield Error(err)
        finally:
            # Also on cancellation (the client left): closing the response ends the upstream request.
            try:
                await response.aclose()
            finally:
                lease.done(outcome)

    @staticmethod
    def _meter(ctx: CallContext, reader: Reader, budget: int | None = None) -> None:
        """Live usage: the upstream's numbers once it sent them, estimates until then.

        An estimate never exceeds `budget`, the `max_tokens` sent: the upstream cannot have
        generated more (a stream cut at `max_tokens` is then counted exactly)."""
        reported = reader.usage
        ctx.usage.input_tokens = reported.get("input", ctx.usage.input_tokens)
        estimate = reader.output_estimate if budget is None else min(reader.output_estimate, budget)
        ctx.usage.output_tokens = reported.get("output", estimate)
        ctx.usage.cached_tokens = reported.get("cached", ctx.usage.cached_tokens)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


# How long the end of a body may take to arrive once the reply is complete (see `_drain`).
DRAIN_WAIT = 0.05


async def _drain(pieces: AsyncIterator[bytes]) -> None:
    """Read what is left of a complete reply (the chunked encoding's last chunk, normally already
    received with `[DONE]`), so the connection goes back to the pool instead of being closed:
    otherwise every request opens a new connection to the upstream. An upstream that keeps the
    body open after `[DONE]` gets `DRAIN_WAIT`, then its connection is closed as before."""
    try:
        async with asyncio.timeout(DRAIN_WAIT):
            async for _ in pieces:
                pass
    except (TimeoutError, http1.HttpError):
        pass
