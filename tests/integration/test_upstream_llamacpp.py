"""The `openai_compat` engine against a real third-party OpenAI-compatible server: llama.cpp's
own (the HTTP code of `llama-server`, run through xllamacpp by `tests/support/llamacpp_server.py`
as a process of its own), serving the SmolLM2-135M GGUF the platform embeds, with `--jinja`. A
LongCat server fronts it; the official SDKs talk to the front, and every answer is checked
against what the llama.cpp server says when asked directly (greedy decoding, so the same request
gives the same text).

What this server does, found by asking it, and what the front makes of it:

- its streams end with a usage chunk (`choices: []`, with `prompt_tokens_details.cached_tokens`)
  when asked with `stream_options.include_usage`: the front bills the server's own counts;
  `/apply-template` + `/tokenize` (`tokenize = "llamacpp"`) give exactly the prompt count the
  server reports, so the front counts before admission what the server will bill;
- requests beyond its `--parallel` slots wait in its queue; none cuts another short;
- a client that goes away frees its slot at once (`/slots` says `is_processing: false` within
  a tenth of a second);
- a prompt over its context is an HTTP 400 (`exceed_context_size_error`) before any stream,
  streamed or not: the front passes it on as `context_length_exceeded`;
- a stop sequence ends the reply with `finish_reason: "stop"` and no word of which sequence
  matched, and the sequence is not sent (its tokens are in `completion_tokens`): Anthropic
  clients see `end_turn`;
- SmolLM2's chat template knows nothing of tools (`/props`: `supports_tools: false`), and then
  this server drops them: they are not in the prompt, and `tool_choice` ("auto", "required" or a
  named function) changes nothing: the answer is text. Without `--jinja` any request with
  tools is a 500 ("tools param requires --jinja flag"), a 502 from the front;
- `response_format` (`json_object`, `json_schema`) is a grammar on the server: the reply parses;
- killed mid-reply, its stream just stops: the front sends an error, not a finished reply; its
  `/health` then fails, and with `health_path = "/health"` the front takes it out (a 503 at once,
  no connection tried) until it passes again.

It also serves Anthropic's `POST /v1/messages` (streamed or not) and `/v1/messages/count_tokens`
itself, so an `anthropic_compat` model can sit on it directly (`tokenize = "anthropic"`): its
usage counts the prompt read from its cache apart (`cache_read_input_tokens`), the count is the
prompt it bills, a disconnect frees the slot as fast, and tools are dropped as above. A stop
sequence ends the reply with `stop_reason: "end_turn"` and the sequence in `stop_sequence`, which
the front does not turn into `stop_sequence`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.llamacpp_server import LlamaCppServer
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
# One thread: on a busy two-core machine a second llama.cpp thread mostly waits for the first.
OPTIONS = ("--jinja", "--alias", "smollm2", "--threads", "1", "--ctx", "8192")
SMALL_CONTEXT = 64  # the context the front is told for "smol-small": the clip of max_tokens shows its count


# ======================================================================= the servers


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    server = LlamaCppServer(tmp_path_factory.mktemp("llama") / "llama.log", free_port(), *OPTIONS)
    try:
        yield server.start()
    finally:
        server.stop()


DOOMED_PORT = free_port()  # a second llama.cpp server, started (and killed) by the test that needs it


@pytest.fixture(scope="module")
def front(llama, tmp_path_factory):
    def model(id: str, port: int, context: int = 8192, engine: str = "openai_compat", **extra: str) -> str:
        base = f"http://127.0.0.1:{port}" + ("/v1" if engine == "openai_compat" else "")
        lines = [f'id = "{id}"', f'engine = "{engine}"', f'base_url = "{base}"',
                 'upstream_model = "smollm2"', f"context_window = {context}", f"max_output = {min(4096, context)}",
                 "timeout = { connect = 5, read = 120 }", *(f"{k} = {v}" for k, v in extra.items())]
        return "[[models]]\n" + "\n".join(lines) + "\n"

    config = "\n".join([
        model("smol", llama.port, tokenize='"llamacpp"'),
        model("smol-estimated", llama.port, tokenize='"none"'),
        # ignore_eos (a llama.cpp field) keeps a reply going to its max_tokens
        model("smol-endless", llama.port, tokenize='"llamacpp"', extra_body="{ ignore_eos = true }"),
        model("smol-small", llama.port, SMALL_CONTEXT, tokenize='"llamacpp"', extra_body="{ ignore_eos = true }"),
        model("smol-doomed", DOOMED_PORT, tokenize='"llamacpp"', health_path='"/health"', health_interval="0.5",
              health_timeout="1"),
        # Its Anthropic-compatible endpoint: /v1/messages and /v1/messages/count_tokens at the root.
        model("smol-messages", llama.port, engine="anthropic_compat", tokenize='"anthropic"'),
        model("smol-messages-endless", llama.port, engine="anthropic_compat", extra_body="{ ignore_eos = true }"),
    ])
    data = tmp_path_factory.mktemp("llamacpp-front")
    server = Server(data, write_config(data / "config.toml", config), free_port()).start()
    server.key = server.new_key("llamacpp@example.com")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(front):
    return openai.OpenAI(api_key=front.key, base_url=front.base_url + "/openai/v1", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def claude(front):
    return anthropic.Anthropic(api_key=front.key, base_url=front.base_url + "/anthropic", max_retries=0, timeout=120)


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


def server_count(llama: LlamaCppServer, messages: list[dict[str, Any]], **extra: Any) -> int:
    """The prompt's tokens as the server counts them: its template, then its tokenizer."""
    prompt = llama.post("/apply-template", {"messages": messages, **extra})["prompt"]
    return len(llama.post("/tokenize", {"content": prompt, "add_special": True, "parse_special": True})["tokens"])


def serves(front: Server, model: str, timeout: float = 60) -> None:
    """Wait until `model` answers a short request (a replica out for its health comes back)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.post(front.base_url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {front.key}"},
                       json={"model": model, "messages": ask("Say hi."), "max_tokens": 3}, timeout=120)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text


def busy(llama: LlamaCppServer) -> bool:
    return any(slot["is_processing"] for slot in httpx.get(llama.url + "/slots", timeout=10).json())


# ======================================================================= text and usage


def test_text_and_usage_are_the_servers_own(oai, llama, front):
    body = {"messages": ask("Explain in two sentences why the sky is blue."), "max_tokens": 40, "temperature": 0, "seed": 7}
    direct = llama.chat(**body)
    raw = oai.chat.completions.with_raw_response.create(model="smol", **body)
    r = raw.parse()
    text = r.choices[0].message.content
    assert text == direct["choices"][0]["message"]["content"] and len(text.split()) >= 5
    assert r.choices[0].finish_reason == direct["choices"][0]["finish_reason"]
    want = direct["usage"]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want["prompt_tokens"], want["completion_tokens"])
    # The same prompt again: the server read it from its cache, and says so.
    assert r.usage.prompt_tokens_details.cached_tokens == want["prompt_tokens"] - 1
    mine = record(front, raw.headers["x-request-id"])
    status = {"stop": "ok", "length": "length"}[direct["choices"][0]["finish_reason"]]
    assert (mine["input_tokens"], mine["output_tokens"], mine["status"]) == (want["prompt_tokens"], want["completion_tokens"], status)
    assert mine["billed_tokens"] == want["total_tokens"]


def test_streaming_text_and_usage(oai, llama, front):
    body = {"messages": ask("Name three colours of the rainbow."), "max_tokens": 30, "temperature": 0}
    direct = llama.chat(**body)
    raw = oai.chat.completions.with_raw_response.create(model="smol", stream=True, stream_options={"include_usage": True}, **body)
    chunks = list(raw.parse())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == direct["choices"][0]["message"]["content"] and len(pieces) >= 5  # streamed, not collected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        direct["choices"][0]["finish_reason"]]
    usage, want = chunks[-1].usage, direct["usage"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (want["prompt_tokens"], want["completion_tokens"])
    mine = record(front, raw.headers["x-request-id"])
    assert (mine["input_tokens"], mine["output_tokens"], mine["stream"]) == (want["prompt_tokens"], want["completion_tokens"], True)


def test_without_a_tokenizer_the_usage_is_still_the_servers(oai, llama, front):
    body = {"messages": ask("What is a lighthouse?"), "max_tokens": 20, "temperature": 0}
    direct = llama.chat(**body)
    raw = oai.chat.completions.with_raw_response.create(model="smol-estimated", **body)
    r = raw.parse()
    assert r.choices[0].message.content == direct["choices"][0]["message"]["content"]
    # Estimated before admission, but billed by the server's own count from its last chunk.
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (direct["usage"]["prompt_tokens"],
                                                                  direct["usage"]["completion_tokens"])
    mine = record(front, raw.headers["x-request-id"])
    assert (mine["input_tokens"], mine["output_tokens"]) == (r.usage.prompt_tokens, r.usage.completion_tokens)


def test_anthropic_sdk_through_the_front(claude, llama, front):
    question = ask("Give me one tip for learning to cook.")
    direct = llama.chat(messages=question, max_tokens=30, temperature=0)
    want = direct["usage"]
    raw = claude.messages.with_raw_response.create(model="smol", max_tokens=30, extra_body=GREEDY, messages=question)
    message = raw.parse()
    assert message.content[0].text == direct["choices"][0]["message"]["content"]
    assert message.stop_reason == {"stop": "end_turn", "length": "max_tokens"}[direct["choices"][0]["finish_reason"]]
    # Anthropic counts the prompt read from the server's cache apart.
    assert message.usage.cache_read_input_tokens == want["prompt_tokens"] - 1  # asked directly just before
    assert (message.usage.input_tokens + message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        want["prompt_tokens"], want["completion_tokens"])
    mine = record(front, raw.headers["request-id"])
    assert (mine["input_tokens"], mine["output_tokens"]) == (want["prompt_tokens"], want["completion_tokens"])

    with claude.messages.stream(model="smol", max_tokens=30, extra_body=GREEDY, messages=question) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["request-id"]
    assert text == direct["choices"][0]["message"]["content"]
    assert (final.usage.input_tokens + final.usage.cache_read_input_tokens, final.usage.output_tokens) == (
        want["prompt_tokens"], want["completion_tokens"])
    assert record(front, request_id)["output_tokens"] == want["completion_tokens"]


def test_requests_beyond_its_slots_wait_their_turn(oai, llama):
    """One slot (--parallel 1), three requests at once: the server queues them; none is cut short."""
    from concurrent.futures import ThreadPoolExecutor

    questions = [ask(f"Count from {n} to {n + 5}.") for n in (1, 10, 20)]
    direct = [llama.chat(messages=q, max_tokens=12, temperature=0)["choices"][0]["message"]["content"] for q in questions]

    def through_front(question):
        chunks = list(oai.chat.completions.create(model="smol", messages=question, max_tokens=12, temperature=0, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(through_front, questions))
    assert [text for text, _ in results] == direct
    assert all(finish in (["stop"], ["length"]) for _, finish in results)


# ======================================================================= counting


def test_the_front_counts_the_prompt_exactly_as_the_server_does(oai, llama, front):
    """`tokenize = "llamacpp"`: with an exact count the front lowers max_tokens to the room left
    in the context it was told (64 tokens for smol-small), so the reply's length shows the count."""
    question = ask("Tell me about the sea.")
    counted = server_count(llama, question)
    assert counted == llama.chat(messages=question, max_tokens=1, temperature=0)["usage"]["prompt_tokens"]
    assert counted < SMALL_CONTEXT - 5
    r = oai.chat.completions.create(model="smol-small", messages=question, max_tokens=60, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (counted, SMALL_CONTEXT - counted)

    # A prompt over that context: refused by the front itself, which names the server's count.
    longer = ask("Tell me about the sea. " * 12)
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="smol-small", messages=longer, max_tokens=5)
    assert info.value.body["code"] == "context_length_exceeded"
    assert f"needs {server_count(llama, longer)} prompt tokens" in info.value.body["message"]


def test_a_prompt_over_the_context(oai, llama):
    too_long = ask("word " * 9000)
    with pytest.raises(httpx.HTTPStatusError) as direct:
        llama.chat(messages=too_long, max_tokens=10)
    said = direct.value.response.json()["error"]
    assert direct.value.response.status_code == 400 and said["type"] == "exceed_context_size_error"
    # Counted by the front ("llamacpp"): refused before the server generates, with its count.
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="smol", messages=too_long, max_tokens=10)
    assert info.value.body["code"] == "context_length_exceeded"
    assert f"needs {said['n_prompt_tokens']:,} prompt tokens" in info.value.body["message"]
    # Estimated ("none"): the server's own 400, streamed or not, passed on as the same error.
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            oai.chat.completions.create(model="smol-estimated", messages=too_long, max_tokens=10, stream=stream)
        assert info.value.body["code"] == "context_length_exceeded" and "8192" in info.value.body["message"]


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
    full = llama.chat(messages=question, max_tokens=40, temperature=0)["choices"][0]["message"]["content"]
    words = [w.strip(".,:;!?") for w in full.split()]
    stop = next(w for w in words[3:] if len(w) >= 5)  # a word from the middle of the reply
    expected = full[: full.index(stop)]
    direct = llama.chat(messages=question, max_tokens=40, temperature=0, stop=[stop])
    assert direct["choices"][0]["message"]["content"] == expected and direct["choices"][0]["finish_reason"] == "stop"
    r = oai.chat.completions.create(model="smol", messages=question, max_tokens=40, temperature=0, stop=[stop])
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == direct["usage"]["completion_tokens"]  # the server's count, the stop's tokens in
    chunks = list(oai.chat.completions.create(model="smol", messages=question, max_tokens=40, temperature=0, stop=[stop],
                                              stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    message = claude.messages.create(model="smol", max_tokens=40, extra_body=GREEDY, stop_sequences=[stop], messages=question)
    assert message.content[0].text == expected
    # The server applies the stop itself and says only "stop", not which sequence matched (vLLM
    # does): an Anthropic client sees end_turn rather than stop_sequence.
    assert message.stop_reason == "end_turn"


# ======================================================================= disconnect, a dying server


def test_a_client_disconnect_frees_the_upstream(front, llama, oai):
    received = 0
    body = {"model": "smol-endless", "messages": ask(STORY), "max_tokens": 4000, "stream": True}
    with httpx.stream("POST", front.base_url + "/openai/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {front.key}"}, timeout=120) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()  # held: a dropped iterator would close the connection at once
        for line in lines:
            received += bool(content(line))
            if received >= 10:
                break
        assert busy(llama)
    closed_at = time.monotonic()
    while busy(llama):
        assert time.monotonic() - closed_at < 5, "the server still generates for a client that left"
        time.sleep(0.05)
    started = time.monotonic()
    r = oai.chat.completions.create(model="smol", messages=ask("Say hi."), max_tokens=3, temperature=0)
    # 4,000 tokens would have kept the model busy for a minute at least.
    assert r.choices[0].message.content and time.monotonic() - started < 30
    mine = record(front, request_id)
    # Billed with the front's exact prompt count (the usage chunk never came) and the pieces received.
    assert mine["status"] == "client_closed" and received <= mine["output_tokens"] < 400, mine
    assert mine["input_tokens"] == server_count(llama, ask(STORY))


def test_a_server_killed_mid_reply_is_an_error_not_a_finished_reply(front, tmp_path):
    doomed = LlamaCppServer(tmp_path / "doomed.log", DOOMED_PORT, *OPTIONS)
    headers = {"Authorization": f"Bearer {front.key}"}
    body = {"model": "smol-doomed", "messages": ask(STORY), "max_tokens": 1000, "stream": True}
    try:
        doomed.start()
        serves(front, "smol-doomed")  # its health checks failed until now: it comes back after two passes
        with httpx.stream("POST", front.base_url + "/openai/v1/chat/completions", json=body, headers=headers,
                          timeout=120) as response:
            request_id = response.headers["x-request-id"]
            lines = response.iter_lines()
            received = 0
            for line in lines:
                received += bool(content(line))
                if received >= 5:
                    break
            doomed.kill()
            rest = "\n".join(lines)
        chunks = chat_chunks(rest)
        assert not [c for c in chunks if c.get("choices") and c["choices"][0].get("finish_reason")]
        error = chunks[-1]["error"]
        assert error["code"] == "upstream_error" and "mid-reply" in error["message"], chunks[-1]
        mine = record(front, request_id)
        assert mine["status"] != "ok" and mine["output_tokens"] >= received, mine

        # Its /health fails now: after two probes the front no longer tries it, and says so at once
        # (the circuit breaker may say it first, after five refused connections in a row).
        deadline = time.monotonic() + 10
        while True:
            down = httpx.post(front.base_url + "/openai/v1/chat/completions", headers=headers, timeout=30,
                              json={"model": "smol-doomed", "messages": ask("Say hi."), "max_tokens": 3})
            if "health" in down.text or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        error = down.json()["error"]
        assert down.status_code == 503 and error["code"] == "upstream_unavailable", down.text
        assert "1 failing health checks" in error["message"] and str(DOOMED_PORT) not in error["message"]

        # Started again on the same port, it passes its checks and serves the front again.
        doomed.start()
        serves(front, "smol-doomed")
    finally:
        doomed.stop()


# ======================================================================= tools


def test_tools_with_a_template_that_has_none_are_dropped(oai, claude, llama):
    """SmolLM2's template has no tools: the server leaves them out of the prompt and ignores the
    tool choice, whatever it is; the front passes on what it answers, text."""
    question = ask("What is the weather like in Paris today?")
    assert llama.post("/apply-template", {"messages": question, "tools": [WEATHER]}) == llama.post(
        "/apply-template", {"messages": question})
    plain = llama.chat(messages=question, max_tokens=12, temperature=0)
    for choice in ("auto", "required", {"type": "function", "function": {"name": "get_weather"}}):
        r = oai.chat.completions.create(model="smol", messages=question, tools=[WEATHER], tool_choice=choice,
                                        max_tokens=12, temperature=0)
        assert r.choices[0].message.content == plain["choices"][0]["message"]["content"], choice
        assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason == plain["choices"][0]["finish_reason"]
        assert r.usage.prompt_tokens == plain["usage"]["prompt_tokens"]

    # A conversation that went through a tool call (made elsewhere) still gets a well-formed answer.
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    follow = oai.chat.completions.create(model="smol", tools=[WEATHER], max_tokens=12, temperature=0, messages=[
        *question, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees"}])
    assert follow.choices[0].message.content and follow.choices[0].finish_reason in ("stop", "length")

    tool = {"name": "get_weather", "description": "Get the current weather in a city",
            "input_schema": WEATHER["function"]["parameters"]}
    message = claude.messages.create(model="smol", max_tokens=12, extra_body=GREEDY, messages=question, tools=[tool],
                                     tool_choice={"type": "tool", "name": "get_weather"})
    assert [b.type for b in message.content] == ["text"] and message.stop_reason == "max_tokens"
    assert message.content[0].text == plain["choices"][0]["message"]["content"]


# ======================================================================= structured output


def test_json_schema_is_the_servers_grammar(oai, llama):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    question = ask("Give me a city and its country as JSON.")
    direct = llama.chat(messages=question, max_tokens=30, temperature=0,
                        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
    r = oai.chat.completions.create(model="smol", messages=question, max_tokens=30, temperature=0,
                                    response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
    assert r.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert isinstance(json.loads(r.choices[0].message.content)["city"], str)  # constrained: it parses


# ======================================================================= its Anthropic endpoint


def test_its_messages_endpoint_behind_anthropic_compat(claude, oai, llama, front):
    """`anthropic_compat` on the server's own /v1/messages: the same text as asked directly, the
    prompt counted by its /v1/messages/count_tokens, usage billed as it reports, both SDKs."""
    question = ask("Give me one tip for learning to cook.")
    direct = llama.post("/v1/messages", {"model": "smollm2", "max_tokens": 24, "temperature": 0, "messages": question})
    want_in = direct["usage"]["input_tokens"] + direct["usage"].get("cache_read_input_tokens", 0)
    want_out, want_text = direct["usage"]["output_tokens"], direct["content"][0]["text"]
    assert llama.post("/v1/messages/count_tokens", {"model": "smollm2", "messages": question})["input_tokens"] == want_in
    assert claude.messages.count_tokens(model="smol-messages", messages=question).input_tokens == want_in

    raw = claude.messages.with_raw_response.create(model="smol-messages", max_tokens=24, extra_body=GREEDY, messages=question)
    message = raw.parse()
    assert message.content[0].text == want_text and message.stop_reason == direct["stop_reason"]
    assert (message.usage.input_tokens + message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        want_in, want_out)
    assert message.usage.cache_read_input_tokens > 0  # the same prompt again: read from its cache
    mine = record(front, raw.headers["request-id"])
    assert (mine["input_tokens"], mine["output_tokens"], mine["cached_tokens"]) == (
        want_in, want_out, message.usage.cache_read_input_tokens)

    with claude.messages.stream(model="smol-messages", max_tokens=24, extra_body=GREEDY, messages=question) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == want_text and len(pieces) >= 5
    assert (final.usage.input_tokens + final.usage.cache_read_input_tokens, final.usage.output_tokens) == (want_in, want_out)

    raw = oai.chat.completions.with_raw_response.create(model="smol-messages", messages=question, max_tokens=24, temperature=0,
                                                        stream=True, stream_options={"include_usage": True})
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want_text
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (want_in, want_out)
    assert record(front, raw.headers["x-request-id"])["output_tokens"] == want_out

    # SmolLM2's template has no tools: the server drops them here too, even a forced one.
    tool = {"name": "get_weather", "description": "Get the current weather in a city",
            "input_schema": WEATHER["function"]["parameters"]}
    forced = claude.messages.create(model="smol-messages", max_tokens=12, extra_body=GREEDY, messages=question, tools=[tool],
                                    tool_choice={"type": "any"})
    assert [b.type for b in forced.content] == ["text"] and forced.content[0].text == want_text[: len(forced.content[0].text)]


def test_a_disconnect_from_its_messages_endpoint_frees_the_slot(front, llama):
    received = 0
    body = {"model": "smol-messages-endless", "messages": ask(STORY), "max_tokens": 4000, "stream": True}
    with httpx.stream("POST", front.base_url + "/anthropic/v1/messages", json=body, headers={"x-api-key": front.key},
                      timeout=120) as response:
        request_id = response.headers["request-id"]
        lines = response.iter_lines()  # held: a dropped iterator would close the connection at once
        for line in lines:
            received += '"text_delta"' in line
            if received >= 10:
                break
        assert busy(llama)
    closed_at = time.monotonic()
    while busy(llama):
        assert time.monotonic() - closed_at < 5, "the server still generates for a client that left"
        time.sleep(0.05)
    mine = record(front, request_id)
    assert mine["status"] == "client_closed" and received <= mine["output_tokens"] < 400, mine
