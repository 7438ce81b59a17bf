"""The hostile-input suite's tools: a server to attack, structure-aware mutations of real client
requests, a raw HTTP client for what httpx will not send, and the properties every answer must
have (never a 5xx, never a hang, the route's own error envelope).

The number of Hypothesis examples is small by default (CI) and `LONGCAT_FUZZ_EXAMPLES` per test
with `make fuzz`."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.support.server import MOCK_CATALOG, Server, free_port, shared_file, write_config

# Every request has this long to be answered in full; more is a hang.
REQUEST_TIMEOUT = 15.0

# No rate limits or quotas in the way: the fuzzer sends thousands of requests from one key.
UNLIMITED = """
key_rpm = 0
key_tpm = 0
key_concurrency = 0
account_rpm = 0
account_tpm = 0
account_concurrency = 0
daily_quota = 100000000000
daily_quota_cap = 100000000000
login_rpm_ip = 100000
login_rpm_account = 100000
metrics_token = "hostile-metrics-token"
"""

# The catalog's models a mutated request may name (not mock-slow: its replies take seconds).
MODELS = ["LongCat-2.0-Preview", "mock-echo", "mock-small", "mock-thinking", "mock-fail", "mock-vision", "no-such-model"]


def fuzzing() -> int:
    """`LONGCAT_FUZZ_EXAMPLES` (`make fuzz`), or 0 in an ordinary run."""
    big = os.environ.get("LONGCAT_FUZZ_EXAMPLES", "")
    return int(big) if big.isdigit() else 0


def examples(ci: int) -> settings:
    """Hypothesis settings for one fuzz test: `ci` examples, or `LONGCAT_FUZZ_EXAMPLES`.

    CI runs derandomized, so a run is reproducible and a submission fails only for what it
    changed; `make fuzz` explores with fresh randomness every time."""
    deep = fuzzing() > 0
    return settings(
        max_examples=fuzzing() if deep else ci,
        deadline=None,
        derandomize=not deep,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
        print_blob=True,
    )


def start_server(tmp: Path, extra: str = "", env: dict[str, str] | None = None) -> Server:
    """A server on the mock catalog without limits in the way, and a key for it."""
    config = write_config(tmp / "config.toml", UNLIMITED + extra + "\n" + MOCK_CATALOG)
    server = Server(tmp, config, free_port(), env=env or {}).start()
    server.key = server.new_key("fuzzer@example.com")
    return server


# ---------------------------------------------------------------------------------- envelopes


ANTHROPIC_TYPES = {
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error", "request_too_large",
    "rate_limit_error", "api_error", "overloaded_error",
}


def family(path: str) -> str:
    """Which error envelope a path answers with."""
    if path.startswith("/anthropic"):
        return "anthropic"
    if path.startswith(("/openai", "/api/v1")) or path in ("/health", "/healthz", "/readyz", "/metrics"):
        return "openai"
    return "page"


def check_envelope(path: str, status: int, headers: Any, body: bytes) -> None:
    """An error answer (4xx) is the route's own JSON envelope; pages answer HTML or redirect."""
    assert status < 500, f"{status} from {path}: {body[:300]!r}"
    if status < 400:
        return
    kind = family(path)
    ctype = (headers.get("content-type") or "").split(";")[0].strip()
    if kind == "page":
        assert ctype in ("text/html", "application/json", "text/plain"), (path, status, ctype)
        return
    assert ctype == "application/json", f"{status} from {path} is {ctype!r}: {body[:300]!r}"
    data = json.loads(body)
    if kind == "anthropic":
        assert data.get("type") == "error", data
        err = data.get("error")
        assert isinstance(err, dict) and err.get("type") in ANTHROPIC_TYPES, data
    else:
        err = data.get("error")
        assert isinstance(err, dict) and isinstance(err.get("type"), str), data
    assert isinstance(err.get("message"), str) and err["message"], data
    # A message is for a person: short enough to read, no Python internals.
    assert len(err["message"]) <= 400, (path, err["message"][:500])
    assert "Traceback" not in err["message"] and "sys.set_int_max_str_digits" not in err["message"], err["message"]


def check_reply(path: str, r: httpx.Response) -> None:
    check_envelope(path, r.status_code, r.headers, r.content)


def healthy(server: Server) -> None:
    """The server still answers, promptly, and logged no unhandled error."""
    started = time.monotonic()
    r = httpx.get(server.base_url + "/health", timeout=5)
    assert r.status_code == 200, r.text
    assert time.monotonic() - started < 2.0
    assert server.proc is not None and server.proc.poll() is None
    log = server.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


# ----------------------------------------------------------------------------- client requests


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    body: dict[str, Any]


def client_requests() -> list[Recorded]:
    """The real agents' requests in shared/fixtures/clients (Claude Code, Codex, OpenCode)."""
    out = []
    for f in sorted(shared_file("fixtures", "clients").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            entry = json.loads(line)
            if isinstance(entry.get("body"), dict):
                out.append(Recorded(entry["method"], entry["path"].split("?")[0], entry["body"]))
    return out


def seeds_for(route: str) -> list[dict[str, Any]]:
    """Valid starting points for `route` (its `/v1` and bare forms alike): the recorded client
    requests that went to it, small and large."""
    canonical = route.replace("/openai/v1/", "/openai/").replace("/openai/", "/openai/v1/")
    bodies = [r.body for r in client_requests() if r.path == canonical]
    if route.endswith("/count_tokens"):
        bodies = [{k: v for k, v in b.items() if k not in ("max_tokens", "stream")} for b in seeds_for("/anthropic/v1/messages")]
    assert bodies, f"no recorded client request for {route}"
    # The smallest first: Hypothesis shrinks towards it.
    return sorted(bodies, key=lambda b: len(json.dumps(b)))


# ------------------------------------------------------------------------------------ mutations


class Raw:
    """Bytes spliced into a body in place of a JSON value: what `json.dumps` cannot write
    (invalid UTF-8, 5,000-digit integers, nesting deeper than Python recurses)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Raw({self.data[:40]!r}{'...' if len(self.data) > 40 else ''})"


def encode(body: Any) -> bytes:
    """JSON with NaN / Infinity as Python writes them, and `Raw` values spliced in."""
    splices: dict[str, bytes] = {}

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            marker = f"\x00raw{len(splices)}\x00"
            splices[json.dumps(marker)] = node.data
            return marker
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    text = json.dumps(swap(body), allow_nan=True).encode()
    for marker, data in splices.items():
        text = text.replace(marker.encode(), data, 1)
    return text


def deep(depth: int, objects: bool = False) -> Raw:
    """Arrays (or objects) nested `depth` levels."""
    return Raw(b'{"a":' * depth + b"1" + b"}" * depth) if objects else Raw(b"[" * depth + b"]" * depth)


ABSURD_NUMBERS = [
    math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0, -1, -(2**31), 2**31, 2**53 + 1, 2**63, 2**64 + 1,
    -(2**63) - 1, 10**30, 1.5, 0.1,
]
RAW_VALUES = [
    Raw(b"9" * 5000),  # more digits than Python converts by default
    Raw(b"-" + b"9" * 400),
    Raw(b"1e999999"),
    Raw(b'"\xff\xfe\xfa"'),  # invalid UTF-8 inside a string
    Raw(b'"\xc0\xaf"'),  # an overlong encoding
    Raw(b'"\\ud800"'),  # a lone surrogate, as an escape
    Raw(b'"\\udc00\\ud800x"'),
    Raw(b'"\xed\xa0\x80"'),  # a surrogate, UTF-8-encoded (invalid)
    deep(200), deep(1100), deep(3000, objects=True), deep(100_000),
]
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
WRONG_TYPES = st.one_of(
    st.none(), st.booleans(), st.sampled_from(ABSURD_NUMBERS), st.integers(), st.floats(allow_nan=True),
    TEXT, st.just(""), st.just([]), st.just({}), st.just([None]), st.just({"": None}),
    st.lists(st.integers(), max_size=3), st.dictionaries(TEXT, st.integers(), max_size=3),
)
UNKNOWN_TYPES = st.one_of(
    TEXT,
    st.sampled_from(["bogus", "TEXT", "image_url", "tool_use", "tool_result", "thinking", "redacted_thinking", "document",
                     "input_image", "input_file", "function_call", "function_call_output", "reasoning", "message",
                     "server_tool_use", "web_search_tool_result", "container_upload", "search_result", "output_text",
                     "refusal", "custom", "computer_call", "item_reference", "local_shell_call", "mcp_call"]),
)


def hostile_values(big: bool = True) -> st.SearchStrategy[Any]:
    out = [WRONG_TYPES, st.sampled_from(RAW_VALUES), st.builds(lambda t: {"type": t}, UNKNOWN_TYPES)]
    if big:
        out.append(st.sampled_from(["x" * 2_000_000, "\u4e2d" * 300_000, "<|im_end|>" * 10_000, "\x00" * 1000]))
    return st.one_of(*out)


def _spots(node: Any, path: tuple = ()) -> list[tuple]:
    """The path of every value in a JSON tree (not the root)."""
    out: list[tuple] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append((*path, key))
        out.extend(_spots(value, (*path, key)))
    return out


def shapes(seeds: list[dict[str, Any]]) -> list[tuple[dict[str, Any], tuple]]:
    """(seed, path) for each field position in the seeds, list indices taken as one: `messages[3]
    .content[0].text` and `messages[5].content[0].text` are the same field."""
    seen: set[tuple] = set()
    out = []
    for seed in seeds:
        for path in _spots(seed):
            shape = tuple("*" if isinstance(k, int) else k for k in path)
            if shape not in seen:
                seen.add(shape)
                out.append((seed, path))
    return out


def pct(text: str) -> str:
    """Percent-encoded, lone surrogates included (as the invalid UTF-8 they would be)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def query_string(params: dict[str, str]) -> str:
    return "&".join(f"{pct(k)}={pct(v)}" for k, v in params.items())


def _parent(body: Any, path: tuple) -> Any:
    for key in path[:-1]:
        body = body[key]
    return body


@st.composite
def mutated(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> Any:
    """A valid request with one to four fields broken: wrong types, absurd numbers, unknown
    block types, huge or deep values, keys removed or added, lists multiplied."""
    body = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        spots = _spots(body)
        if not spots:
            break
        path = draw(st.sampled_from(spots))
        parent, key = _parent(body, path), path[-1]
        op = draw(st.sampled_from(["replace", "replace", "retype", "drop", "add", "multiply", "wrap", "model"]))
        if op == "replace":
            parent[key] = copy.deepcopy(draw(hostile_values()))
        elif op == "retype":
            node = parent[key]
            target = node if isinstance(node, dict) else parent if isinstance(parent, dict) else None
            if target is not None:
                target["type"] = draw(UNKNOWN_TYPES)
        elif op == "drop":
            del parent[key]
        elif op == "add" and isinstance(parent[key], dict):
            parent[key][draw(TEXT)] = copy.deepcopy(draw(hostile_values(big=False)))
        elif op == "multiply" and isinstance(parent[key], list) and parent[key]:
            # Many messages, tools or blocks: the bounds on counts, not the body size, decide.
            factor = draw(st.sampled_from([2, 50, 1200, 25_000]))
            small = [v for v in parent[key] if len(json.dumps(v, default=repr)) < 400] or [{"type": "text", "text": "x"}]
            parent[key] = (small * (factor // len(small) + 1))[:factor]
        elif op == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]}, json.dumps(parent[key], default=repr)]))
        elif op == "model" and isinstance(body, dict):
            body["model"] = draw(st.sampled_from(MODELS))
    return body


@st.composite
def broken_bytes(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> bytes:
    """A valid request's bytes, then cut, corrupted, prefixed or replaced: malformed JSON."""
    raw = encode(draw(st.sampled_from(seeds)))
    op = draw(st.sampled_from(["cut", "flip", "bom", "trail", "alone", "utf16", "nul"]))
    at = draw(st.integers(0, len(raw)))
    if op == "cut":
        return raw[:at]
    if op == "flip":
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"}", b"]", b'"', b",", b"\\", b"\\u"])) + raw[at:]
    if op == "bom":
        return b"\xef\xbb\xbf" + raw
    if op == "trail":
        return raw + draw(st.sampled_from([b"x", b"{}", b"\x00", b" " * 100, b"]"]))
    if op == "utf16":
        return raw.decode().encode("utf-16")
    if op == "nul":
        return b"\x00" * draw(st.integers(1, 100))
    return draw(st.sampled_from([b"", b" ", b"null", b"[]", b"1", b'"x"', b"true", b"{", b"[" * 50_000, b"NaN", b"-", b"{}" * 10]))


# ---------------------------------------------------------------------------------- raw HTTP


@dataclass
class RawReply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""


_STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3})")


def raw_request(port: int, data: bytes, timeout: float = REQUEST_TIMEOUT) -> RawReply:
    """Send `data` as it is on a new connection and read one reply: by its content-length, or
    to the end of the connection. A reply not complete within `timeout` fails the test."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may close early (e.g. a 431 while the headers are still arriving)
        got = b""
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no complete reply in {timeout} s to {data[:120]!r}: {got[:200]!r}"
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            except TimeoutError:
                raise AssertionError(f"no complete reply in {timeout} s to {data[:120]!r}: {got[:200]!r}") from None
            got += chunk
            reply = _parse(got)
            if reply is not None or not chunk:
                break
    reply = _parse(got, final=True)
    assert reply is not None, f"no HTTP reply to {data[:120]!r}: {got[:200]!r}"
    return reply


def _parse(got: bytes, final: bool = False) -> RawReply | None:
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        return None
    match = _STATUS.match(head)
    if match is None:
        return RawReply(0, {}, b"", got) if final else None
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        if len(body) < int(length):
            return None if not final else RawReply(int(match.group(1)), headers, body, got)
        body = body[: int(length)]
    elif headers.get("transfer-encoding") == "chunked":
        if not body.endswith(b"0\r\n\r\n") and not final:
            return None
        body = _unchunk(body)
    elif not final:
        return None
    return RawReply(int(match.group(1)), headers, body, got)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out
