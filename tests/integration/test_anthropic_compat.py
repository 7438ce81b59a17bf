"""The `anthropic_compat` engine end to end: a real LongCat server (mock engines) is the upstream,
reached through its `/anthropic` routes; a second LongCat server serves `anthropic_compat` models in
front of it, and the official `openai` and `anthropic` SDKs talk to the front. Error paths and the
exact upstream request use a small deliberately failing upstream (Starlette, in this process).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.anthropic_stream import check_stream, parse_sse
from tests.support.server import Server, free_port, shared_file, usage_lines, wait_usage, write_config
from tests.support.upstreams import dropping_port, serve_app
from tests.support.wire import chat_chunks

TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
BASH_SCHEMA = {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}
BASH = {"name": "Bash", "description": "Run a shell command", "input_schema": BASH_SCHEMA}
OAI_BASH = {"type": "function", "function": {"name": "Bash", "description": "Run a shell command", "parameters": BASH_SCHEMA}}
MOCK_THOUGHT = "Let me think about this step by step."
MOCK_THOUGHT_TOKENS = 9  # the mock tokenizer: words and punctuation
FAKE_TOKENS = 4242
FAKE_SIG = "EqQBCkYIBxgCKkBfakeUpstreamSignature0123456789"

# ======================================================================= a failing upstream


def sse(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def envelope(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


class Fake:
    """An Anthropic-compatible server that misbehaves on request: the upstream model name says how."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self.app = Starlette(routes=[
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
        ])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sent(self, model: str, path: str = "/v1/messages") -> list[dict[str, Any]]:
        return [r for r in self.requests if r["body"].get("model") == model and r["path"] == path]

    async def count_tokens(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"path": "/v1/messages/count_tokens", "body": body, "headers": dict(request.headers)})
        return JSONResponse({"input_tokens": FAKE_TOKENS})

    async def messages(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"path": "/v1/messages", "body": body, "headers": dict(request.headers)})
        how = body["model"]
        statuses = {"status-400": (400, "invalid_request_error", "max_tokens: 999999 > 64000, which is the maximum allowed"),
                    "status-401": (401, "authentication_error", "invalid x-api-key"),
                    "status-402": (402, "billing_error", "Your credit balance is too low"),
                    "status-404": (404, "not_found_error", "model: nope"),
                    "status-429": (429, "rate_limit_error", "rate limited"),
                    "status-529": (529, "overloaded_error", "Overloaded"),
                    "status-500": (500, "api_error", "Internal server error"),
                    "ctx-400": (400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")}
        if how in statuses:
            status, kind, message = statuses[how]
            headers = {"retry-after": "7"} if status == 429 else {}
            return JSONResponse(envelope(kind, message), status, headers=headers)
        if how == "text-500":
            return PlainTextResponse("Traceback (most recent call last): internal detail", 500)
        if how == "slow-headers":
            await asyncio.sleep(1.5)
        return StreamingResponse(self.frames(how, body), media_type="text/event-stream")

    async def frames(self, how: str, body: dict[str, Any]):
        usage = {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 40, "cache_creation_input_tokens": 3}
        yield sse({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "model": how,
                                                         "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}})
        yield b"event: ping\ndata: {\"type\": \"ping\"}\n\n"
        if how == "error-first":
            yield sse(envelope("overloaded_error", "Overloaded"))
            return
        if how == "garbage-first":
            yield b"event: content_block_start\ndata: {not json\n\n"
            return
        index = 0
        if how == "thinking-tools":
            turns = sum(1 for m in body["messages"] if m["role"] == "assistant")
            yield sse({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
            yield sse({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": f"Plan {turns}."}})
            yield sse({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": f"{FAKE_SIG}{turns}"}})
            yield sse({"type": "content_block_stop", "index": 0})
            yield sse({"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": f"ENC{turns}"}})
            yield sse({"type": "content_block_stop", "index": 1})
            if turns == 0:
                yield sse({"type": "content_block_start", "index": 2, "content_block": {
                    "type": "tool_use", "id": "toolu_01FakeCall", "name": "Bash", "input": {}}})
                for part in ('{"command"', ': "echo hi"}'):
                    yield sse({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": part}})
                yield sse({"type": "content_block_stop", "index": 2})
                reason = "tool_use"
            else:
                yield sse({"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}})
                yield sse({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "It printed hi."}})
                yield sse({"type": "content_block_stop", "index": 2})
                reason = "end_turn"
            yield sse({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None}, "usage": {"output_tokens": 30}})
            yield sse({"type": "message_stop"})
            return
        yield sse({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
        yield sse({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": "alpha"}})
        if how == "error-mid":
            yield sse(envelope("api_error", "Internal server error while sampling"))
            return
        if how == "garbage-mid":
            yield b"event: content_block_delta\ndata: {not json\n\n"
            return
        if how == "cut-mid":
            return
        if how == "ignores-stop":
            for piece in (" E", "ND beta", " gamma"):
                yield sse({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}})
                await asyncio.sleep(0.01)
        else:
            yield sse({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": " beta"}})
        yield sse({"type": "content_block_stop", "index": index})
        yield sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 2}})
        yield sse({"type": "message_stop"})


@pytest.fixture(scope="module")
def fake():
    app = Fake()
    with serve_app(app.app, app.port):
        yield app


@pytest.fixture(scope="module")
def dropper():
    """A replica that accepts connections and closes them at once, before any byte of a reply."""
    with dropping_port() as (port, accepted):
        yield f"http://127.0.0.1:{port}", accepted


# ======================================================================= the two LongCat servers


@pytest.fixture(scope="module")
def upstream(mock_server):
    """The session's mock server, with a key of its own account for the front to use."""
    mock_server.anthropic_front_key = mock_server.new_key("anthropic-compat-front@example.com", name="front")
    return mock_server


@pytest.fixture(scope="module")
def front(upstream, fake, dropper, tmp_path_factory):
    up = upstream.base_url + "/anthropic"

    def model(id: str, upstream_model: str, base: str = up, **extra: Any) -> str:
        lines = [f'id = "{id}"', 'engine = "anthropic_compat"', f'upstream_model = "{upstream_model}"',
                 f"context_window = {extra.pop('context_window', 1048576)}", f"max_output = {extra.pop('max_output', 131072)}"]
        if "base_urls" not in extra:
            lines.append(f'base_url = "{base}"')
        if base == up and "api_key" not in extra:
            lines.append('api_key_env = "FRONT_UPSTREAM_KEY"')
        for key, value in extra.items():
            lines.append(f"{key} = {json.dumps(value) if not isinstance(value, str) or not value.startswith('{') else value}")
        return "[[models]]\n" + "\n".join(lines) + "\n"

    dead = f"http://127.0.0.1:{free_port()}/anthropic"
    config = "\n".join([
        model("ac-echo", "mock-echo", tokenize="anthropic"),
        model("ac-echo-estimated", "mock-echo"),
        model("ac-agent", "LongCat-2.0-Preview", tokenize="anthropic"),
        model("ac-agent-cached", "LongCat-2.0-Preview", tokenize="anthropic", prompt_caching=True),
        model("ac-thinking", "mock-thinking", tokenize="anthropic"),
        model("ac-thinking-forgetful", "mock-thinking", thinking_cache_mb=0),
        model("ac-slow", "mock-slow"),
        model("ac-small", "mock-small"),
        model("ac-replicas", "mock-echo", base_urls=[dead, up]),
        model("ac-dropping", "mock-echo", base_urls=[dropper[0], up]),
        model("ac-down", "mock-echo", base_urls=[dead, f"http://127.0.0.1:{free_port()}"]),
        model("ac-badkey", "mock-echo", api_key="ak_not_a_real_key_0123456789"),
        *(model(f"fake-{how}", how, fake.url) for how in (
            "status-400", "status-401", "status-402", "status-404", "status-429", "status-529", "status-500", "text-500", "ctx-400",
            "error-first", "garbage-first", "error-mid", "garbage-mid", "cut-mid", "ignores-stop", "plain")),
        model("fake-slow-headers", "slow-headers", fake.url, timeout="{ connect = 1, read = 0.5 }"),
        model("fake-exact", "exact", fake.url + "/v1", tokenize="anthropic", api_key="sk-ant-fake-secret",
              anthropic_beta=["interleaved-thinking-2025-05-14", "b2"], context_window=5000, max_output=2000,
              extra_body="{ metadata = { user_id = \"longcat-front\" } }"),
        model("fake-thinking-tools", "thinking-tools", fake.url),
        model("fake-thinking-tools-forgetful", "thinking-tools-forgetful", fake.url, thinking_cache_mb=0),
    ])
    data = tmp_path_factory.mktemp("anthropic-compat-front")
    server = Server(data, write_config(data / "config.toml", config), free_port(),
                    env={"FRONT_UPSTREAM_KEY": upstream.anthropic_front_key})
    server.start()
    server.key = server.new_key("tester@example.com")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def claude(front):
    return anthropic.Anthropic(api_key=front.key, base_url=front.base_url + "/anthropic", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def oai(front):
    return openai.OpenAI(api_key=front.key, base_url=front.base_url + "/openai/v1", max_retries=0, timeout=30)


def post_messages(front: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(front.base_url + "/anthropic/v1/messages", json=body, headers={"x-api-key": front.key}, timeout=30)


# ======================================================================= text and usage


def test_text_and_usage_are_the_upstreams(claude, upstream, front):
    before = len(usage_lines(upstream, "mock-echo"))
    mine_before = len(usage_lines(front, "ac-echo"))  # the line of this request, not the last one logged
    message = claude.messages.create(model="ac-echo", max_tokens=100, system="Be brief.",
                                     messages=[{"role": "user", "content": "Hello there, upstream!"}])
    assert message.content[0].text == "Hello there, upstream!" and message.stop_reason == "end_turn"
    assert message.model == "ac-echo"
    up = wait_usage(upstream, "mock-echo", before + 1)[-1]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (int(up["input_tokens"]), int(up["output_tokens"])) and up["outcome"] == "ok"
    mine = wait_usage(front, "ac-echo", mine_before + 1)[-1]
    assert (mine["input_tokens"], mine["output_tokens"], mine["outcome"]) == (up["input_tokens"], up["output_tokens"], "ok")
    # tokenize = "anthropic": what the front counts is what the upstream counts.
    counted = claude.messages.count_tokens(model="ac-echo", system="Be brief.", messages=[{"role": "user", "content": "Hello there, upstream!"}])
    assert counted.input_tokens == int(up["input_tokens"])


def test_streaming_through_both_sdks(claude, oai, upstream, front):
    before = len(usage_lines(upstream, "mock-echo"))
    mine_before = len(usage_lines(front, "ac-echo-estimated"))  # the line of this request, not the last one logged
    with claude.messages.stream(model="ac-echo-estimated", max_tokens=100, messages=[{"role": "user", "content": "one two three four"}]) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(pieces) == "one two three four" and len(pieces) >= 4  # streamed, not collected
    up = wait_usage(upstream, "mock-echo", before + 1)[-1]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (int(up["input_tokens"]), int(up["output_tokens"]))
    mine = wait_usage(front, "ac-echo-estimated", mine_before + 1)[-1]
    assert (mine["input_tokens"], mine["output_tokens"]) == (up["input_tokens"], up["output_tokens"])  # billed by the upstream's count, not the estimate

    chunks = list(oai.chat.completions.create(model="ac-echo", messages=[{"role": "user", "content": "five six seven"}], stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "five six seven"
    up = wait_usage(upstream, "mock-echo", before + 2)[-1]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (int(up["input_tokens"]), int(up["output_tokens"]))


def test_the_stream_the_front_sends_is_valid(front):
    r = post_messages(front, {"model": "ac-agent", "max_tokens": 200, "stream": True, "tools": [BASH],
                              "messages": [{"role": "user", "content": "Run echo."}]})
    summary = check_stream(parse_sse(r.text))
    assert summary.tool_uses[0]["input"] == {"command": "echo mock-tool-ran"} and summary.stop_reason == "tool_use"
    assert summary.usage_start["input_tokens"] == summary.usage_end["input_tokens"] > 0


def test_cache_reads_are_cached_input(claude, oai, front):
    r = oai.chat.completions.create(model="fake-plain", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "alpha beta"
    assert (r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens, r.usage.completion_tokens) == (48, 40, 2)
    message = claude.messages.create(model="fake-plain", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (8, 40, 2)
    mine = wait_usage(front, "fake-plain", 2)[-1]
    assert (mine["input_tokens"], mine["cached_tokens"], mine["output_tokens"]) == (48, 40, 2)


def test_model_detail_is_truthful_and_has_no_credentials(front, upstream):
    r = httpx.get(front.base_url + "/anthropic/v1/models/ac-replicas", headers={"x-api-key": front.key})
    engine = r.json()["engine"]
    assert engine["type"] == "anthropic_compat" and engine["upstream_model"] == "mock-echo" and engine["replicas"] == 2
    # Where the upstream lives is for the operator: an admin's key sees it, a user's does not.
    assert "upstream" not in engine
    front.cli("users", "create", "ops-ac@example.com", "--admin")
    admin = front.cli("keys", "create", "ops-ac@example.com").stdout.strip().splitlines()[-1]
    r = httpx.get(front.base_url + "/anthropic/v1/models/ac-replicas", headers={"x-api-key": admin})
    assert r.json()["engine"]["upstream"][1] == upstream.base_url + "/anthropic"
    assert upstream.anthropic_front_key not in r.text
    r = httpx.get(front.base_url + "/openai/v1/models/fake-exact", headers={"Authorization": f"Bearer {front.key}"})
    assert "sk-ant-fake-secret" not in r.text and r.json()["engine"]["anthropic_beta"] == "interleaved-thinking-2025-05-14,b2"


# ======================================================================= tools, thinking, stop


def test_tool_round_trip_with_both_sdks(claude, oai):
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Run echo."}]
    first = claude.messages.create(model="ac-agent", max_tokens=200, tools=[BASH], messages=messages)
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and use.name == "Bash" and use.input == {"command": "echo mock-tool-ran"}
    assert TOOL_ID.match(use.id)
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "mock-tool-ran"}]}]
    second = claude.messages.create(model="ac-agent", max_tokens=200, tools=[BASH], messages=messages)
    assert second.content[0].text == "The command ran and printed mock-tool-ran." and second.stop_reason == "end_turn"

    chat: list[dict[str, Any]] = [{"role": "user", "content": "Run echo."}]
    r = oai.chat.completions.create(model="ac-agent", messages=chat, tools=[OAI_BASH])
    [call] = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"command": "echo mock-tool-ran"}
    chat += [r.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "mock-tool-ran"}]
    r = oai.chat.completions.create(model="ac-agent", messages=chat, tools=[OAI_BASH])
    assert r.choices[0].message.content == "The command ran and printed mock-tool-ran."


def test_a_recorded_claude_code_session_through_the_front(front):
    """What Claude Code really sent (a huge system prompt, 24 tools, cache_control, adaptive thinking,
    a system message mid-conversation), sent on to the upstream's Messages API with cache breakpoints."""
    records = [json.loads(line) for line in shared_file("fixtures", "clients", "claude-code.jsonl").read_text().splitlines() if line.strip()]
    for record in records[1:]:
        headers = {k: v for k, v in record["headers"].items()
                   if k.lower() not in {"authorization", "x-api-key", "host", "content-length", "connection", "accept-encoding"}}
        r = httpx.post(front.base_url + record["path"], json={**record["body"], "model": "ac-agent-cached"},
                       headers={**headers, "x-api-key": front.key}, timeout=30)
        assert r.status_code == 200, r.text
        summary = check_stream(parse_sse(r.text))
        if any(m["role"] == "assistant" for m in record["body"]["messages"]):
            assert summary.text == "The command ran and printed mock-tool-ran."
        else:
            assert summary.tool_uses[0]["input"] == {"command": "echo mock-tool-ran"}
        assert summary.usage_start["input_tokens"] > 1000


def replay_turn(first) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Why?"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": "And then?"}]


def test_thinking_passes_through_and_replays_with_the_upstreams_signature(claude, upstream):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    with claude.messages.stream(model="ac-thinking", max_tokens=2000, thinking=thinking,
                                messages=[{"role": "user", "content": "Why?"}]) as s:
        first = s.get_final_message()
    assert [b.type for b in first.content] == ["thinking", "text"]
    assert first.content[0].thinking == MOCK_THOUGHT and first.content[0].signature.startswith("lc2.")
    # The upstream verifies the signatures of replayed thinking: it accepts only its own, which the
    # front kept for it (its clients get the front's).
    before = len(usage_lines(upstream, "mock-thinking"))
    again = claude.messages.create(model="ac-thinking", max_tokens=2000, thinking=thinking, messages=replay_turn(first))
    assert again.content[-1].text == "And then?"
    kept = wait_usage(upstream, "mock-thinking", before + 1)[-1]
    # A front that does not keep them drops the replayed thinking; the conversation still goes on.
    forgot = claude.messages.create(model="ac-thinking-forgetful", max_tokens=2000, thinking=thinking, messages=replay_turn(first))
    assert forgot.content[-1].text == "And then?"
    dropped = wait_usage(upstream, "mock-thinking", before + 2)[-1]
    assert int(kept["input_tokens"]) - int(dropped["input_tokens"]) == MOCK_THOUGHT_TOKENS
    off = claude.messages.create(model="ac-thinking", max_tokens=2000, messages=[{"role": "user", "content": "Why?"}],
                                 thinking={"type": "disabled"})
    assert [b.type for b in off.content] == ["text"]


def test_openai_reasoning_replays_with_the_upstreams_signature_too(oai, upstream):
    r = oai.chat.completions.create(model="ac-thinking", messages=[{"role": "user", "content": "Why?"}],
                                    extra_body={"thinking": {"type": "enabled"}})
    message = r.choices[0].message
    assert message.model_extra["reasoning_content"] == MOCK_THOUGHT and message.content == "Why?"
    before = len(usage_lines(upstream, "mock-thinking"))
    history = [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": message.content,
                                                     "reasoning_content": MOCK_THOUGHT}, {"role": "user", "content": "More?"}]
    r = oai.chat.completions.create(model="ac-thinking", messages=history)
    assert r.choices[0].message.content == "More?"
    r = oai.chat.completions.create(model="ac-thinking-forgetful", messages=history)
    kept, dropped = wait_usage(upstream, "mock-thinking", before + 2)[-2:]
    assert int(kept["input_tokens"]) - int(dropped["input_tokens"]) == MOCK_THOUGHT_TOKENS


def test_a_thinking_tool_loop_sends_back_the_upstreams_blocks(claude, fake):
    thinking = {"type": "enabled", "budget_tokens": 2000}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Run echo hi."}]
    first = claude.messages.create(model="fake-thinking-tools", max_tokens=5000, thinking=thinking, tools=[BASH], messages=messages)
    assert [b.type for b in first.content] == ["thinking", "tool_use"] and first.content[0].thinking == "Plan 0."
    assert first.content[0].signature.startswith("lc2.") and FAKE_SIG not in first.model_dump_json()
    [use] = [b for b in first.content if b.type == "tool_use"]
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "hi"}]}]
    second = claude.messages.create(model="fake-thinking-tools", max_tokens=5000, thinking=thinking, tools=[BASH], messages=messages)
    assert second.content[-1].text == "It printed hi."
    sent = fake.sent("thinking-tools")[-1]["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert sent["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Plan 0.", "signature": FAKE_SIG + "0"},
        {"type": "redacted_thinking", "data": "ENC0"},
        {"type": "tool_use", "id": "toolu_01FakeCall", "name": "Bash", "input": {"command": "echo hi"}},
    ]
    # Without the signatures, the loop goes on with thinking off rather than failing upstream.
    claude.messages.create(model="fake-thinking-tools-forgetful", max_tokens=5000, thinking=thinking, tools=[BASH], messages=messages)
    sent = fake.sent("thinking-tools-forgetful")[-1]["body"]
    assert "thinking" not in sent and [b["type"] for b in sent["messages"][1]["content"]] == ["tool_use"]


def test_stop_sequences(claude, oai):
    message = claude.messages.create(model="ac-echo", max_tokens=50, stop_sequences=["STOP"],
                                     messages=[{"role": "user", "content": "alpha beta STOP gamma"}])
    assert message.content[0].text == "alpha beta " and (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")
    r = oai.chat.completions.create(model="ac-echo", messages=[{"role": "user", "content": "alpha beta STOP gamma"}], stop=["STOP"])
    assert r.choices[0].message.content == "alpha beta " and r.choices[0].finish_reason == "stop"
    # An upstream that ignores stop sequences is stopped here.
    message = claude.messages.create(model="fake-ignores-stop", max_tokens=50, stop_sequences=["END"],
                                     messages=[{"role": "user", "content": "x"}])
    assert message.content[0].text == "alpha " and (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


def test_what_is_sent_upstream(claude, fake):
    claude.messages.create(model="fake-exact", max_tokens=1900, system="Be brief.", extra_body={"temperature": 0.3, "top_k": 5},
                           stop_sequences=["END"], messages=[{"role": "user", "content": "hi"}])
    [count] = fake.sent("exact", "/v1/messages/count_tokens")[-1:]
    sent = fake.sent("exact")[-1]
    headers, body = sent["headers"], sent["body"]
    assert headers["x-api-key"] == "sk-ant-fake-secret" and headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,b2" and "authorization" not in headers
    assert body == {
        "model": "exact", "max_tokens": 5000 - FAKE_TOKENS, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "system": [{"type": "text", "text": "Be brief."}], "temperature": 0.3, "top_k": 5, "stop_sequences": ["END"], "stream": True,
        "metadata": {"user_id": "longcat-front"},
    }
    assert count["body"] == {"model": "exact", "messages": body["messages"], "system": body["system"]}
    assert claude.messages.count_tokens(model="fake-exact", messages=[{"role": "user", "content": "hi"}]).input_tokens == FAKE_TOKENS


# ======================================================================= disconnect, replicas


def test_client_disconnect_closes_the_upstream_request(front, upstream):
    up_before = len(usage_lines(upstream, "mock-slow"))
    front_before = len(usage_lines(front, "ac-slow"))
    received = 0
    body = {"model": "ac-slow", "max_tokens": 1000, "stream": True, "messages": [{"role": "user", "content": "word " * 300}]}
    with httpx.stream("POST", front.base_url + "/anthropic/v1/messages", json=body, headers={"x-api-key": front.key},
                      timeout=30) as response:
        for line in response.iter_lines():
            if '"text_delta"' in line:
                received += 1
            if received >= 5:
                break
    closed_at = time.monotonic()
    up = wait_usage(upstream, "mock-slow", up_before + 1, timeout=5)[-1]
    assert time.monotonic() - closed_at < 3
    assert up["outcome"] == "client_closed" and int(up["output_tokens"]) < 100, up  # 300 words at 20 ms each: cut well before
    mine = wait_usage(front, "ac-slow", front_before + 1)[-1]
    assert mine["outcome"] == "client_closed" and received <= int(mine["output_tokens"]) <= int(up["output_tokens"]) + 2, (mine, up)


def test_replica_failover(claude, front):
    for i in range(4):  # round-robin: half of them try the dead replica first
        message = claude.messages.create(model="ac-replicas", max_tokens=20, messages=[{"role": "user", "content": f"attempt {i}"}])
        assert message.content[0].text == f"attempt {i}"
    assert re.search(r"ac-replicas: upstream \S+ unreachable \(connection refused\); trying the next replica", front.log())


def test_a_replica_that_drops_requests_is_not_sent_them_twice(claude, front, dropper):
    """A dropped request may already be generating upstream, so it is never sent again: the
    client gets a 502, the replica is set aside, and the next requests go to the healthy one."""
    results = []
    for i in range(4):
        try:
            message = claude.messages.create(model="ac-dropping", max_tokens=20, messages=[{"role": "user", "content": f"try {i}"}])
            results.append(message.content[0].text)
        except anthropic.InternalServerError as exc:
            assert exc.status_code == 502 and "dropped the request" in exc.body["error"]["message"]
            results.append("dropped")
    assert results.count("dropped") <= 1 and len(dropper[1]) == results.count("dropped")
    assert [r for r in results if r != "dropped"] == [f"try {i}" for i in range(4) if results[i] != "dropped"]


def test_all_replicas_down_is_a_502(claude):
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(model="ac-down", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502 and info.value.body["error"]["code"] == "upstream_error"
    assert "could not be reached (tried 2 replicas)" in info.value.body["error"]["message"]


def test_wrong_upstream_key_is_the_operators_problem(claude, front):
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(model="ac-badkey", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502 and info.value.body["error"]["code"] == "upstream_error"
    assert "api_key" in info.value.body["error"]["message"] and "ak_not_a_real_key" not in str(info.value.body)
    assert "ak_not_a_real_key" not in front.log()


# ======================================================================= errors


@pytest.mark.parametrize(
    "model, status, kind, code, words",
    [
        ("fake-status-400", 400, "invalid_request_error", "invalid_parameter", "max_tokens: 999999 > 64000"),
        ("fake-ctx-400", 400, "invalid_request_error", "context_length_exceeded", "prompt is too long"),
        ("ac-small", 400, "invalid_request_error", "context_length_exceeded", "context window"),
        ("fake-status-401", 502, "api_error", "upstream_error", "credentials"),
        ("fake-status-402", 502, "api_error", "upstream_error", "billing"),
        ("fake-status-404", 502, "api_error", "upstream_error", "upstream_model"),
        ("fake-status-429", 503, "overloaded_error", "overloaded", "busy"),
        ("fake-status-529", 503, "overloaded_error", "overloaded", "busy"),
        ("fake-status-500", 502, "api_error", "upstream_error", "failed (HTTP 500)"),
        ("fake-text-500", 502, "api_error", "upstream_error", "failed (HTTP 500)"),
        ("fake-error-first", 503, "overloaded_error", "overloaded", "busy"),
        ("fake-garbage-first", 502, "api_error", "upstream_error", "malformed"),
        ("fake-slow-headers", 502, "api_error", "upstream_error", "did not answer in time"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_errors_before_any_output_are_http_errors(front, model, status, kind, code, words, stream):
    prompt = "word " * 300 if model == "ac-small" else "hi"
    r = post_messages(front, {"model": model, "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": prompt}]})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == (kind, code) and words in error["message"], error
    assert "Traceback" not in r.text and "invalid x-api-key" not in r.text and "credit balance" not in r.text
    if status == 503:
        # The server's own Retry-After; a request while it lasts is refused here, with what is left of it.
        assert 1 <= int(r.headers["retry-after"]) <= 7 if model == "fake-status-429" else r.headers["retry-after"] == "2"


def test_errors_after_output_are_error_events(front):
    for model, words in [("fake-error-mid", "Internal server error while sampling"), ("fake-garbage-mid", "malformed"),
                         ("fake-cut-mid", "before the reply was complete")]:
        r = post_messages(front, {"model": model, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        summary = check_stream(parse_sse(r.text))
        assert summary.text == "alpha" and summary.error["type"] == "api_error" and words in summary.error["message"], summary.error
        # Non-streaming: no partial answer, the error.
        r = post_messages(front, {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    r = httpx.post(front.base_url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {front.key}"},
                   json={"model": "fake-error-mid", "messages": [{"role": "user", "content": "hi"}], "stream": True}, timeout=30)
    chunks = chat_chunks(r.text)
    assert chunks[-1]["error"]["code"] == "upstream_error" and "while sampling" in chunks[-1]["error"]["message"]
