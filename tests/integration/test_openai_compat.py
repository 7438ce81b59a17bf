"""The `openai_compat` engine end to end: a real LongCat server (mock engines) is the upstream, a
second LongCat server serves `openai_compat` models in front of it, and the official SDKs talk to
the front. Error paths use a small deliberately failing upstream (Starlette, in this process).
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
from tests.support.server import Server, free_port, usage_lines, wait_usage, write_config
from tests.support.upstreams import dropping_port, serve_app
from tests.support.wire import chat_chunks

TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
BASH = {
    "type": "function",
    "function": {
        "name": "Bash",
        "description": "Run a shell command",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
}
FAKE_TOKENS = 4242

# ======================================================================= a failing upstream


class Fake:
    """An OpenAI-compatible server that misbehaves on request: the upstream model name says how."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/apply-template", self.apply_template, methods=["POST"]),
        ])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def last(self, model: str) -> dict[str, Any]:
        return [r for r in self.requests if r["body"].get("model") == model][-1]

    async def tokenize(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"path": "/tokenize", "body": body, "headers": dict(request.headers)})
        if "messages" in body:  # vLLM
            huge = "HUGE" in json.dumps(body["messages"])
            return JSONResponse({"count": 10**7 if huge else FAKE_TOKENS, "max_model_len": 8192, "tokens": []})
        return JSONResponse({"tokens": list(range(len(body["content"].split())))})  # llama.cpp

    async def apply_template(self, request: Request) -> Response:
        body = await request.json()
        text = " ".join(str(m.get("content")) for m in body["messages"])
        return JSONResponse({"prompt": f"<s> {text} <assistant>"})

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"path": "/v1/chat/completions", "body": body, "headers": dict(request.headers)})
        how = body["model"]
        if how.startswith("status-"):
            status = int(how.split("-")[1])
            headers = {"Retry-After": "7"} if status == 429 else {}
            return PlainTextResponse("Traceback (most recent call last): internal detail", status, headers=headers)
        if how == "ctx-400":
            return JSONResponse({"object": "error", "type": "BadRequestError", "code": 400, "message":
                                 "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens."}, 400)
        if how == "bad-400":
            return JSONResponse({"error": {"message": "top_k must be -1 or at least 1", "type": "invalid_request_error"}}, 400)
        if how == "slow-headers":
            await asyncio.sleep(1.5)
        return StreamingResponse(self.frames(how, body), media_type="text/event-stream")

    async def frames(self, how: str, body: dict[str, Any]):
        def chunk(delta=None, finish=None, usage=None, **extra):
            out: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": how,
                                   "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}
            if usage:
                out["usage"] = usage
            return f"data: {json.dumps(out)}\n\n".encode()

        usage = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16, "prompt_tokens_details": {"cached_tokens": 4}}
        yield chunk({"role": "assistant", "content": ""})
        if how == "garbage-first":
            yield b"data: {not json\n\n"
            return
        if how == "error-first":
            yield b'data: {"error": {"message": "KV cache is full", "type": "server_error", "code": 503}}\n\n'
            return
        yield chunk({"content": "alpha"})
        if how == "garbage-mid":
            yield b"data: {not json\n\n"
            return
        if how == "cut-mid":
            return
        if how == "error-mid":
            yield b'data: {"error": {"message": "CUDA error: an illegal memory access", "type": "server_error"}}\n\n'
            return
        if how == "stop-reason":  # vLLM: the matched stop string in `stop_reason`
            yield chunk({"content": " "}, "stop", stop_reason="END")
        elif how == "ignores-stop":
            for piece in (" E", "ND beta", " gamma"):
                yield chunk({"content": piece})
                await asyncio.sleep(0.01)
            yield chunk({}, "length")
        else:
            yield chunk({"content": " beta"}, "stop")
        yield chunk(usage=usage)
        yield b"data: [DONE]\n\n"


@pytest.fixture(scope="module")
def fake():
    app = Fake()
    with serve_app(app.app, app.port):
        yield app


@pytest.fixture(scope="module")
def dropper():
    """A replica that accepts connections and closes them at once, before any byte of a reply."""
    with dropping_port() as (port, accepted):
        yield f"http://127.0.0.1:{port}/v1", accepted


# ======================================================================= the two LongCat servers


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


@pytest.fixture(scope="module")
def upstream(mock_server):
    """The session's mock server, with a key of its own account for the front to use."""
    mock_server.front_key = mock_server.new_key("openai-compat-front@example.com", name="front")
    return mock_server


@pytest.fixture(scope="module")
def front(upstream, fake, dropper, tmp_path_factory):
    up = upstream.base_url + "/openai/v1"
    dead = f"http://127.0.0.1:{closed_port()}/v1"

    def model(id: str, upstream_model: str, base: str = up, **extra: Any) -> str:
        lines = [f'id = "{id}"', 'engine = "openai_compat"', f'upstream_model = "{upstream_model}"',
                 f"context_window = {extra.pop('context_window', 1048576)}", f"max_output = {extra.pop('max_output', 131072)}"]
        if "base_urls" not in extra:
            lines.append(f'base_url = "{base}"')
        if base == up and "api_key" not in extra:
            lines.append('api_key_env = "FRONT_UPSTREAM_KEY"')
        for key, value in extra.items():
            lines.append(f"{key} = {json.dumps(value) if not isinstance(value, str) or not value.startswith('{') else value}")
        return "[[models]]\n" + "\n".join(lines) + "\n"

    fake_v1 = fake.url + "/v1"
    config = "\n".join([
        model("up-echo", "mock-echo"),
        model("up-agent", "LongCat-2.0-Preview"),
        model("up-thinking", "mock-thinking", thinking_param="thinking"),
        model("up-slow", "mock-slow"),
        model("up-replicas", "mock-echo", base_urls=[dead, up]),
        model("up-dropping", "mock-echo", base_urls=[dropper[0], up]),
        model("up-down", "mock-echo", base_urls=[dead, f"http://127.0.0.1:{closed_port()}/v1"]),
        model("up-badkey", "mock-echo", api_key="ak_not_a_real_key_0123456789"),
        model("up-no-tokenize", "mock-echo", tokenize="vllm"),  # LongCat has no /tokenize
        *(model(f"fake-{how}", how, fake_v1) for how in (
            "status-500", "status-429", "status-503", "status-401", "status-404", "ctx-400", "bad-400", "garbage-first",
            "error-first", "garbage-mid", "cut-mid", "error-mid", "stop-reason", "ignores-stop")),
        model("fake-slow-headers", "slow-headers", fake_v1, timeout="{ connect = 1, read = 0.5 }"),
        model("fake-vllm", "plain", fake_v1, tokenize="vllm", thinking_param="chat_template_kwargs", api_key="sk-fake-secret",
              context_window=5000, max_output=2000),
        model("fake-llamacpp", "plain", fake_v1, tokenize="llamacpp"),
        model("fake-salted", "salted", fake_v1, send_user=True, cache_salt=True),
    ])
    data = tmp_path_factory.mktemp("openai-compat-front")
    server = Server(data, write_config(data / "config.toml", config), free_port(), env={"FRONT_UPSTREAM_KEY": upstream.front_key})
    server.start()
    server.key = server.new_key("tester@example.com")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(front):
    return openai.OpenAI(api_key=front.key, base_url=front.base_url + "/openai/v1", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def claude(front):
    return anthropic.Anthropic(api_key=front.key, base_url=front.base_url + "/anthropic", max_retries=0, timeout=30)


# ======================================================================= text


def test_text_and_usage_are_the_upstreams(oai, upstream):
    before = len(usage_lines(upstream, "mock-echo"))
    r = oai.chat.completions.create(model="up-echo", messages=[{"role": "system", "content": "Be brief."},
                                                               {"role": "user", "content": "Hello there, upstream!"}])
    assert r.choices[0].message.content == "Hello there, upstream!" and r.choices[0].finish_reason == "stop"
    up = wait_usage(upstream, "mock-echo", before + 1)[-1]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (int(up["input_tokens"]), int(up["output_tokens"])) and up["outcome"] == "ok"
    assert r.model == "up-echo"


def test_streaming_text_and_usage(oai, upstream, front):
    before = len(usage_lines(upstream, "mock-echo"))
    mine_before = len(usage_lines(front, "up-echo"))  # the line of this request, not the last one logged
    chunks = list(oai.chat.completions.create(model="up-echo", messages=[{"role": "user", "content": "one two three four"}],
                                              stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three four"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 4  # streamed, not collected
    up = wait_usage(upstream, "mock-echo", before + 1)[-1]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (int(up["input_tokens"]), int(up["output_tokens"]))
    mine = wait_usage(front, "up-echo", mine_before + 1)[-1]
    assert (mine["input_tokens"], mine["output_tokens"], mine["outcome"]) == (up["input_tokens"], up["output_tokens"], "ok")


def test_anthropic_sdk_through_the_front(claude, upstream):
    before = len(usage_lines(upstream, "mock-echo"))
    message = claude.messages.create(model="up-echo", max_tokens=100, messages=[{"role": "user", "content": "Hi from Claude"}])
    assert message.content[0].text == "Hi from Claude" and message.stop_reason == "end_turn"
    up = wait_usage(upstream, "mock-echo", before + 1)[-1]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (int(up["input_tokens"]), int(up["output_tokens"]))
    with claude.messages.stream(model="up-echo", max_tokens=100, messages=[{"role": "user", "content": "Streamed back"}]) as s:
        assert "".join(s.text_stream) == "Streamed back"
        final = s.get_final_message()
    up = wait_usage(upstream, "mock-echo", before + 2)[-1]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (int(up["input_tokens"]), int(up["output_tokens"]))


def test_model_detail_is_truthful_and_has_no_credentials(front, upstream):
    r = httpx.get(front.base_url + "/openai/v1/models/up-replicas", headers={"Authorization": f"Bearer {front.key}"})
    engine = r.json()["engine"]
    assert engine["type"] == "openai_compat" and engine["upstream_model"] == "mock-echo" and engine["replicas"] == 2
    # Where the upstream lives is for the operator: an admin's key sees it, a user's does not.
    assert "upstream" not in engine
    front.cli("users", "create", "ops-oc@example.com", "--admin")
    admin = front.cli("keys", "create", "ops-oc@example.com").stdout.strip().splitlines()[-1]
    r = httpx.get(front.base_url + "/openai/v1/models/up-replicas", headers={"Authorization": f"Bearer {admin}"})
    engine = r.json()["engine"]
    assert engine["upstream"][1] == upstream.base_url + "/openai/v1" and len(engine["upstream"]) == 2
    assert upstream.front_key not in r.text


# ======================================================================= tools, thinking, stop


def test_tool_call_round_trip(oai):
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Run echo."}]
    r = oai.chat.completions.create(model="up-agent", messages=messages, tools=[BASH])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert TOOL_ID.match(call.id) and call.function.name == "Bash"
    assert json.loads(call.function.arguments) == {"command": "echo mock-tool-ran"}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "mock-tool-ran"}]
    r = oai.chat.completions.create(model="up-agent", messages=messages, tools=[BASH])
    assert r.choices[0].message.content == "The command ran and printed mock-tool-ran."


def test_tool_call_streamed_to_claude(claude, front):
    tool = {"name": "Bash", "input_schema": BASH["function"]["parameters"]}
    body = {"model": "up-agent", "max_tokens": 200, "tools": [tool], "messages": [{"role": "user", "content": "Run echo."}]}
    with claude.messages.stream(**body) as s:
        final = s.get_final_message()
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert use.name == "Bash" and use.input == {"command": "echo mock-tool-ran"} and final.stop_reason == "tool_use"
    with httpx.stream("POST", front.base_url + "/anthropic/v1/messages", json={**body, "stream": True},
                      headers={"x-api-key": front.key}, timeout=30) as response:
        summary = check_stream(parse_sse(response.read().decode()))
    assert summary.tool_uses[0]["input"] == {"command": "echo mock-tool-ran"} and summary.stop_reason == "tool_use"


def test_thinking_passes_through_and_can_be_turned_off(oai, claude):
    r = oai.chat.completions.create(model="up-thinking", messages=[{"role": "user", "content": "Why?"}])
    assert r.choices[0].message.model_extra["reasoning_content"] == "Let me think about this step by step."
    assert r.choices[0].message.content == "Why?"
    with claude.messages.stream(model="up-thinking", max_tokens=200, messages=[{"role": "user", "content": "Why?"}],
                                thinking={"type": "enabled", "budget_tokens": 100}) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think about this step by step." and final.content[0].signature
    off = claude.messages.create(model="up-thinking", max_tokens=200, messages=[{"role": "user", "content": "Why?"}],
                                 thinking={"type": "disabled"})
    assert [b.type for b in off.content] == ["text"]  # thinking_param = "thinking" told the upstream


def test_stop_sequences(oai, claude):
    r = oai.chat.completions.create(model="up-echo", messages=[{"role": "user", "content": "alpha beta STOP gamma"}], stop=["STOP"])
    assert r.choices[0].message.content == "alpha beta " and r.choices[0].finish_reason == "stop"
    # vLLM names the stop string it matched; an upstream that ignores `stop` is stopped here.
    for model in ("fake-stop-reason", "fake-ignores-stop"):
        message = claude.messages.create(model=model, max_tokens=50, stop_sequences=["END"], messages=[{"role": "user", "content": "x"}])
        assert message.content[0].text == "alpha " and (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END"), model


# ======================================================================= disconnect, replicas


def test_client_disconnect_closes_the_upstream_request(front, upstream):
    up_before = len(usage_lines(upstream, "mock-slow"))
    front_before = len(usage_lines(front, "up-slow"))
    received = 0
    body = {"model": "up-slow", "messages": [{"role": "user", "content": "word " * 300}], "stream": True}
    with httpx.stream("POST", front.base_url + "/openai/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {front.key}"}, timeout=30) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"role"' not in line:
                received += 1
            if received >= 5:
                break
    closed_at = time.monotonic()
    up = wait_usage(upstream, "mock-slow", up_before + 1, timeout=5)[-1]
    assert time.monotonic() - closed_at < 3
    assert up["outcome"] == "client_closed" and int(up["output_tokens"]) < 100, up  # 300 words at 20 ms each: cut well before
    mine = wait_usage(front, "up-slow", front_before + 1)[-1]
    assert mine["outcome"] == "client_closed" and received <= int(mine["output_tokens"]) <= int(up["output_tokens"]) + 2, (mine, up)


def test_replica_failover(oai, front):
    for i in range(4):  # round-robin: half of them try the dead replica first
        r = oai.chat.completions.create(model="up-replicas", messages=[{"role": "user", "content": f"attempt {i}"}])
        assert r.choices[0].message.content == f"attempt {i}"
    assert "unreachable (connection refused); trying the next replica" in front.log()


def test_a_replica_that_drops_requests_is_not_sent_them_twice(oai, front, dropper):
    """A dropped request may already be generating upstream, so it is never sent again: the
    client gets a 502, the replica is set aside, and the next requests go to the healthy one."""
    results = []
    for i in range(4):
        try:
            r = oai.chat.completions.create(model="up-dropping", messages=[{"role": "user", "content": f"try {i}"}])
            results.append(r.choices[0].message.content)
        except openai.InternalServerError as exc:
            assert exc.status_code == 502 and "dropped the request" in exc.body["message"]
            results.append("dropped")
    assert results.count("dropped") <= 1 and len(dropper[1]) == results.count("dropped")
    assert [r for r in results if r != "dropped"] == [f"try {i}" for i in range(4) if results[i] != "dropped"]


def test_all_replicas_down_is_a_502(oai):
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="up-down", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_error" and "could not be reached (tried 2 replicas)" in info.value.body["message"]


def test_wrong_upstream_key_is_the_operators_problem(oai, front):
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="up-badkey", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_error"
    assert "api_key" in info.value.body["message"] and "ak_not_a_real_key" not in str(info.value.body)
    assert "ak_not_a_real_key" not in front.log()


# ======================================================================= errors


@pytest.mark.parametrize(
    "model, status, code, words",
    [
        ("fake-status-500", 502, "upstream_error", "failed (HTTP 500)"),
        ("fake-status-429", 503, "overloaded", "busy"),
        ("fake-status-503", 503, "overloaded", "busy"),
        ("fake-status-401", 502, "upstream_error", "credentials"),
        ("fake-status-404", 502, "upstream_error", "upstream_model"),
        ("fake-ctx-400", 400, "context_length_exceeded", "maximum context length is 8192"),
        ("fake-bad-400", 400, "invalid_parameter", "top_k must be"),
        ("fake-garbage-first", 502, "upstream_error", "malformed"),
        ("fake-error-first", 503, "overloaded", "busy"),
        ("fake-slow-headers", 502, "upstream_error", "did not answer in time"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_errors_before_any_output_are_http_errors(front, model, status, code, words, stream):
    r = httpx.post(front.base_url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {front.key}"},
                   json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and words in error["message"], error
    assert "Traceback" not in r.text and "internal detail" not in r.text
    if status == 503:
        # The server's own Retry-After; a request while it lasts is refused here, with what is left of it.
        assert 1 <= int(r.headers["retry-after"]) <= 7 if model == "fake-status-429" else r.headers["retry-after"] == "2"


def test_errors_after_output_are_error_events(front):
    for model, words in [("fake-garbage-mid", "malformed"), ("fake-cut-mid", "before the reply was complete"),
                         ("fake-error-mid", "illegal memory access")]:
        r = httpx.post(front.base_url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {front.key}"},
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}, timeout=30)
        assert r.status_code == 200
        chunks = chat_chunks(r.text)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")) == "alpha"
        assert chunks[-1]["error"]["code"] == "upstream_error" and words in chunks[-1]["error"]["message"], chunks[-1]
        # Non-streaming: no partial answer, the error.
        r = httpx.post(front.base_url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {front.key}"},
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"


def test_anthropic_errors_use_anthropics_envelope(claude):
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(model="fake-status-429", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503 and info.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="fake-ctx-400", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["code"] == "context_length_exceeded"


# ======================================================================= what is sent upstream, counting


def test_request_sent_upstream(oai, fake):
    oai.chat.completions.create(
        model="fake-vllm", messages=[{"role": "user", "content": "hi"}], temperature=0.3, seed=5, stop=["END"],
        extra_body={"thinking": {"type": "disabled"}},
    )
    sent = fake.last("plain")
    body = sent["body"]
    assert sent["headers"]["authorization"] == "Bearer sk-fake-secret"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert (body["temperature"], body["seed"], body["stop"]) == (0.3, 5, ["END"])
    # tokenize = "vllm": the prompt is 4242 tokens, so max_tokens (default: max_output 2000) fits 5000.
    assert body["max_tokens"] == 5000 - FAKE_TOKENS


def test_vllm_and_llamacpp_token_counts(claude, fake):
    count = claude.messages.count_tokens(model="fake-vllm", messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens == FAKE_TOKENS
    assert fake.requests[-1]["body"]["messages"] == [{"role": "user", "content": "hi"}]
    count = claude.messages.count_tokens(model="fake-llamacpp", messages=[{"role": "user", "content": "one two three"}])
    assert count.input_tokens == len("<s> one two three <assistant>".split())
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="fake-vllm", max_tokens=10, messages=[{"role": "user", "content": "HUGE"}])
    assert info.value.body["error"]["code"] == "context_length_exceeded" and "10,000,000" in info.value.body["error"]["message"]


def test_an_upstream_that_cannot_count_gets_an_estimate(oai, front):
    for _ in range(2):
        r = oai.chat.completions.create(model="up-no-tokenize", messages=[{"role": "user", "content": "still works"}])
        assert r.choices[0].message.content == "still works"
    assert front.log().count("model up-no-tokenize: the upstream could not count tokens") == 1


def test_the_account_reaches_the_upstream_only_as_an_opaque_tag(front, fake):
    """With `send_user` and `cache_salt` (vLLM), the upstream learns which account a request is
    for, so its prefix cache serves each account only its own prompts; it never learns who."""

    def tag_of(key: str) -> tuple[str, str]:
        httpx.post(front.base_url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "fake-salted", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        body = fake.last("salted")["body"]
        return body["user"], body["cache_salt"]

    first, second = front.new_key("salt-a@example.com"), front.new_key("salt-b@example.com")
    user, salt = tag_of(first)
    assert user == salt and re.fullmatch(r"lc-[0-9a-f]{24}", user)
    assert tag_of(first) == (user, salt)  # stable for the account
    assert tag_of(front.new_key("salt-a@example.com", name="second"))[0] == user  # whichever of its keys
    assert tag_of(second)[0] != user
    assert "user" not in fake.last("plain")["body"] and "cache_salt" not in fake.last("plain")["body"]
