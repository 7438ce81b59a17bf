"""The `openai_compat` engine against a real third-party OpenAI-compatible server:
llama-cpp-python's own (`python -m llama_cpp.server`), serving the SmolLM2-135M GGUF the
platform embeds. A LongCat server fronts it; the official SDKs talk to the front, and every
answer is checked against what the llama server says when asked directly (greedy decoding, so
the same request gives the same text).

What this server does differently, and what the front makes of it:

- its streams carry no usage (it ignores `stream_options`): the front counts the output from
  the pieces, one token each, exactly its count; with `tokenize = "llama_cpp_python"` the prompt
  is the server's own count too (a one-token completion of the same request);
- by default (`--interrupt_requests true`) a new request cuts the stream in progress short with
  `[DONE]` and no finish_reason: the front reports that as an error, not a finished reply;
- it fails after its 200, with an empty stream, on a prompt over its context and on an automatic
  tool choice; `tool_choice` "required" is a 500;
- with `--chat_format chatml-function-calling`, a named tool choice gives a real, grammar-
  constrained tool call; without a `tool_choice` it ignores the tools and answers in text.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.server import Server, free_port, write_config
from tests.support.wire import chat_chunks

pytestmark = pytest.mark.embedded

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# Anthropic's SDK no longer takes sampling parameters; the Messages API still does.
GREEDY = {"temperature": 0}
STORY = "Write a long story about a lighthouse keeper who finds a message in a bottle."


# ======================================================================= the servers


class LlamaServer:
    """`python -m llama_cpp.server` on a free loopback port, with the platform's bundled GGUF."""

    def __init__(self, log_path: Path, *options: str, port: int | None = None) -> None:
        from longcat.engines.embedded import bundled_model_path

        self.port = port or free_port()
        self.log_path = log_path
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path()), "--n_ctx", "8192",
               "--host", "127.0.0.1", "--port", str(self.port), "--chat_format", "chatml-function-calling",
               "--verbose", "false", *options]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 60) -> LlamaServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def chat(self, **body: Any) -> dict[str, Any]:
        """The same request asked directly, not streamed: the server's own text and usage."""
        r = httpx.post(self.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=60)
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    # --interrupt_requests false: requests the front sends at once queue instead of cutting each
    # other off (the README's advice for this server).
    server = LlamaServer(tmp_path_factory.mktemp("llama") / "llama.log", "--interrupt_requests", "false")
    try:
        yield server.wait()
    finally:
        server.stop()


INTERRUPTING_PORT = free_port()  # a second llama server with its default settings, started by the test that needs it


@pytest.fixture(scope="module")
def front(llama, tmp_path_factory):
    def model(id: str, port: int, **extra: str) -> str:
        lines = [f'id = "{id}"', 'engine = "openai_compat"', f'base_url = "http://127.0.0.1:{port}/v1"',
                 'upstream_model = "smollm2"', "context_window = 8192", "max_output = 4096",
                 *(f"{k} = {v}" for k, v in extra.items())]
        return "[[models]]\n" + "\n".join(lines) + "\n"

    config = "\n".join([
        model("smol", llama.port, tokenize='"llama_cpp_python"'),
        model("smol-estimated", llama.port, tokenize='"none"'),
        # min_tokens (a llama-cpp-python field) keeps a reply going: a disconnect must be what ends it
        model("smol-endless", llama.port, extra_body="{ min_tokens = 4000 }"),
        model("smol-interrupting", INTERRUPTING_PORT),
    ])
    data = tmp_path_factory.mktemp("llamacpp-front")
    server = Server(data, write_config(data / "config.toml", config), free_port()).start()
    server.key = server.new_key("llamacpp@example.com")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(front):
    return openai.OpenAI(api_key=front.key, base_url=front.base_url + "/openai/v1", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def claude(front):
    return anthropic.Anthropic(api_key=front.key, base_url=front.base_url + "/anthropic", max_retries=0, timeout=60)


def record(front: Server, request_id: str) -> dict[str, Any]:
    """The front's usage record of one request, from GET /api/v1/usage."""
    report = httpx.get(front.base_url + "/api/v1/usage?limit=100", headers={"Authorization": f"Bearer {front.key}"},
                       timeout=10).json()
    [found] = [r for r in report["recent"] if r["request_id"] == request_id]
    return found


def content(line: str) -> str:
    """The text of one SSE line of a Chat Completions stream ("" if none)."""
    if not line.startswith("data: {"):
        return ""
    choices = json.loads(line[6:]).get("choices") or [{}]
    return choices[0].get("delta", {}).get("content") or ""


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ======================================================================= text and usage


def test_text_and_usage_are_the_servers_own(oai, llama, front):
    body = {"messages": ask("Explain in two sentences why the sky is blue."), "max_tokens": 120, "temperature": 0, "seed": 7}
    direct = llama.chat(**body)
    raw = oai.chat.completions.with_raw_response.create(model="smol", **body)
    r = raw.parse()
    text = r.choices[0].message.content
    assert text == direct["choices"][0]["message"]["content"] and len(text.split()) >= 5
    assert r.choices[0].finish_reason == direct["choices"][0]["finish_reason"]
    want = direct["usage"]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want["prompt_tokens"], want["completion_tokens"])
    mine = record(front, raw.headers["x-request-id"])
    assert (mine["input_tokens"], mine["output_tokens"], mine["status"]) == (want["prompt_tokens"], want["completion_tokens"], "ok")
    assert mine["billed_tokens"] == want["total_tokens"]


def test_streaming_text_and_usage(oai, llama, front):
    body = {"messages": ask("Name three colours of the rainbow and say one thing about each."), "max_tokens": 80,
            "temperature": 0}
    direct = llama.chat(**body)
    raw = oai.chat.completions.with_raw_response.create(model="smol", stream=True, stream_options={"include_usage": True}, **body)
    chunks = list(raw.parse())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == direct["choices"][0]["message"]["content"] and len(pieces) >= 10  # streamed, not collected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        direct["choices"][0]["finish_reason"]]
    usage, want = chunks[-1].usage, direct["usage"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (want["prompt_tokens"], want["completion_tokens"])
    mine = record(front, raw.headers["x-request-id"])
    assert (mine["input_tokens"], mine["output_tokens"], mine["stream"]) == (want["prompt_tokens"], want["completion_tokens"], True)


def test_without_a_tokenizer_the_prompt_is_estimated_and_the_output_still_exact(oai, llama, front):
    body = {"messages": ask("What is a lighthouse?"), "max_tokens": 60, "temperature": 0}
    direct = llama.chat(**body)
    raw = oai.chat.completions.with_raw_response.create(model="smol-estimated", **body)
    r = raw.parse()
    assert r.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert r.usage.completion_tokens == direct["usage"]["completion_tokens"]  # counted from the pieces
    mine = record(front, raw.headers["x-request-id"])
    assert (mine["input_tokens"], mine["output_tokens"]) == (r.usage.prompt_tokens, r.usage.completion_tokens)


def test_anthropic_sdk_through_the_front(claude, llama, front):
    question = ask("Give me one tip for learning to cook.")
    direct = llama.chat(messages=question, max_tokens=100, temperature=0)
    want = direct["usage"]
    raw = claude.messages.with_raw_response.create(model="smol", max_tokens=100, extra_body=GREEDY, messages=question)
    message = raw.parse()
    assert message.content[0].text == direct["choices"][0]["message"]["content"]
    assert message.stop_reason == {"stop": "end_turn", "length": "max_tokens"}[direct["choices"][0]["finish_reason"]]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (want["prompt_tokens"], want["completion_tokens"])
    mine = record(front, raw.headers["request-id"])
    assert (mine["input_tokens"], mine["output_tokens"]) == (want["prompt_tokens"], want["completion_tokens"])

    with claude.messages.stream(model="smol", max_tokens=100, extra_body=GREEDY, messages=question) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["request-id"]
    assert text == direct["choices"][0]["message"]["content"]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (want["prompt_tokens"], want["completion_tokens"])
    assert record(front, request_id)["output_tokens"] == want["completion_tokens"]


# ======================================================================= max_tokens, stop


def test_max_tokens_is_honoured(oai, claude, llama, front):
    body = {"messages": ask(STORY), "max_tokens": 9, "temperature": 0}
    direct = llama.chat(**body)
    raw = oai.chat.completions.with_raw_response.create(model="smol", **body)
    r = raw.parse()
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 9 == direct["usage"]["completion_tokens"]
    assert r.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert record(front, raw.headers["x-request-id"])["output_tokens"] == 9
    message = claude.messages.create(model="smol", max_tokens=9, extra_body=GREEDY, messages=ask(STORY))
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 9


def test_stop_sequence(oai, claude, llama):
    question = ask("List the days of the week, one per line.")
    full = llama.chat(messages=question, max_tokens=80, temperature=0)["choices"][0]["message"]["content"]
    words = [w.strip(".,:;!?") for w in full.split()]
    stop = next(w for w in words[3:] if len(w) >= 5)  # a word from the middle of the reply
    expected = full[: full.index(stop)]
    r = oai.chat.completions.create(model="smol", messages=question, max_tokens=80, temperature=0, stop=[stop])
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    chunks = list(oai.chat.completions.create(model="smol", messages=question, max_tokens=80, temperature=0, stop=[stop],
                                              stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    message = claude.messages.create(model="smol", max_tokens=80, extra_body=GREEDY, stop_sequences=[stop], messages=question)
    assert message.content[0].text == expected
    # The server applies the stop itself and says only "stop", not which sequence matched (vLLM
    # does): an Anthropic client sees end_turn rather than stop_sequence.
    assert message.stop_reason == "end_turn"


# ======================================================================= disconnect, interruption


def test_a_client_disconnect_frees_the_upstream(front, llama, oai):
    received = 0
    body = {"model": "smol-endless", "messages": ask(STORY), "max_tokens": 4000, "stream": True}
    with httpx.stream("POST", front.base_url + "/openai/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {front.key}"}, timeout=30) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            received += bool(content(line))
            if received >= 20:
                break
    closed_at = time.monotonic()
    # The server prints this when it notices the client has gone (and only then: no other
    # request is waiting to interrupt it).
    while "Disconnected from client" not in llama.log():
        assert time.monotonic() - closed_at < 5, llama.log()[-2000:]
        time.sleep(0.05)
    started = time.monotonic()
    r = oai.chat.completions.create(model="smol", messages=ask("Say hi."), max_tokens=5, temperature=0)
    # 4,000 tokens at ~150 a second would have kept the model busy for half a minute.
    assert r.choices[0].message.content and time.monotonic() - started < 5
    mine = record(front, request_id)
    assert mine["status"] == "client_closed" and received <= mine["output_tokens"] < 400, mine


def test_a_reply_the_server_interrupts_is_an_error_not_a_finished_reply(front, tmp_path):
    """With its default --interrupt_requests, the server ends a stream with [DONE] and no
    finish_reason when another request arrives: the front says the reply broke off."""
    server = LlamaServer(tmp_path / "interrupting.log", port=INTERRUPTING_PORT)
    try:
        server.wait()
        headers = {"Authorization": f"Bearer {front.key}"}
        body = {"model": "smol-interrupting", "messages": ask(STORY), "max_tokens": 1000, "stream": True}
        with httpx.stream("POST", front.base_url + "/openai/v1/chat/completions", json=body, headers=headers,
                          timeout=60) as first:
            lines = first.iter_lines()
            received = 0
            for line in lines:
                received += bool(content(line))
                if received >= 5:
                    break
            second = httpx.post(front.base_url + "/openai/v1/chat/completions", headers=headers, timeout=60,
                                json={"model": "smol-interrupting", "messages": ask("Say hi."), "max_tokens": 5})
            rest = "\n".join(lines)
        assert second.status_code == 200 and second.json()["choices"][0]["message"]["content"]
        chunks = chat_chunks(rest)
        assert not [c for c in chunks if c.get("choices") and c["choices"][0].get("finish_reason")]
        error = chunks[-1]["error"]
        assert error["code"] == "upstream_error" and "without finishing the reply" in error["message"], chunks[-1]
    finally:
        server.stop()


# ======================================================================= tools


def test_a_named_tool_choice_is_a_real_tool_call(oai, claude):
    question = ask("What is the weather like in Paris today?")
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = oai.chat.completions.create(model="smol", messages=question, tools=[WEATHER], tool_choice=named, max_tokens=60,
                                    temperature=0)
    choice = r.choices[0]
    [call] = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)  # the server's grammar follows the schema
    assert isinstance(arguments["city"], str) and arguments["city"]

    chunks = list(oai.chat.completions.create(model="smol", messages=question, tools=[WEATHER], tool_choice=named,
                                              max_tokens=60, temperature=0, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", deltas[0].id) and deltas[0].function.name == "get_weather"
    assert len({d.index for d in deltas}) == 1 and not any(d.id for d in deltas[1:])  # one call, named once
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == arguments

    # The tool's result back: this chat format does not show tool messages to the model, but the
    # conversation goes on with a well-formed answer.
    follow = oai.chat.completions.create(model="smol", tools=[WEATHER], max_tokens=40, temperature=0, messages=[
        *question, choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees"}])
    assert follow.choices[0].message.content and follow.choices[0].finish_reason in ("stop", "length")

    tool = {"name": "get_weather", "description": "Get the current weather in a city",
            "input_schema": WEATHER["function"]["parameters"]}
    message = claude.messages.create(model="smol", max_tokens=60, extra_body=GREEDY, messages=question, tools=[tool],
                                     tool_choice={"type": "tool", "name": "get_weather"})
    [use] = [b for b in message.content if b.type == "tool_use"]
    assert message.stop_reason == "tool_use" and use.name == "get_weather" and use.input == arguments


def test_tools_without_a_named_choice_get_a_well_formed_answer(oai, front):
    # No tool_choice: this server then ignores the tools (OpenAI's default would be "auto", which
    # it cannot stream) and answers in text.
    r = oai.chat.completions.create(model="smol", messages=ask("What is the weather like in Paris today?"),
                                    tools=[WEATHER], max_tokens=40, temperature=0)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason in ("stop", "length")
    # "required" is an internal error of this server (an assertion in its chat format): a 502.
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="smol-estimated", messages=ask("Weather in Paris?"), tools=[WEATHER],
                                    tool_choice="required", max_tokens=40)
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_error"


# ======================================================================= context


def test_a_prompt_over_the_context(oai, front):
    too_long = ask("word " * 9000)
    # Counted by the server: its own 400, passed on.
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="smol", messages=too_long, max_tokens=10)
    assert info.value.body["code"] == "context_length_exceeded" and "8192" in info.value.body["message"]
    # Estimated: the server fails after its 200 with an empty stream; nothing is billed.
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="smol-estimated", messages=too_long, max_tokens=10)
    assert info.value.status_code == 502 and "sent an empty reply" in info.value.body["message"]
