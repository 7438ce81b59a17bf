"""The embedded SmolLM2 engine through the real API: text, streaming, grammar-enforced JSON and
tool calls, its real context limit, and freeing the engine when a client leaves."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import openai
import pytest

from tests.support.server import usage_lines

pytestmark = pytest.mark.embedded

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "Get the time", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture()
def client(embedded_server):
    return openai.OpenAI(api_key=embedded_server.key, base_url=embedded_server.base_url + "/openai/v1", max_retries=0)


def test_stream_real_text(client):
    chunks = list(
        client.chat.completions.create(
            model="LongCat-2.0-Preview",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = chunks[-1].usage
    assert 0 < usage.completion_tokens <= 30 and usage.prompt_tokens > 5


def test_seeded_sampling_is_reproducible(client):
    ask = lambda: client.chat.completions.create(  # noqa: E731
        model="LongCat-2.0-Preview", messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=12, seed=42, temperature=1.0
    ).choices[0].message.content
    assert ask() == ask()


def test_json_schema_is_enforced(client):
    schema = {
        "type": "object",
        # Bounded lengths keep the whole object well inside max_tokens, so it always completes.
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "pets": {"type": "array", "items": {"type": "string", "maxLength": 15}, "maxItems": 3},
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="LongCat-2.0-Preview",
        messages=[{"role": "user", "content": "Describe a person."}],
        max_tokens=300,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"name", "age", "pets"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int) and isinstance(data["pets"], list)


def test_json_object_mode(client):
    r = client.chat.completions.create(
        model="LongCat-2.0-Preview",
        messages=[{"role": "user", "content": "Reply with a JSON object with the keys name and color for a cat."}],
        max_tokens=300,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_required_tool_call_is_a_real_tool_call(client):
    r = client.chat.completions.create(
        model="LongCat-2.0-Preview",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER, TIME],
        tool_choice="required",
        max_tokens=100,
        # Greedy: a 135M model sampled warm can ramble inside a string argument until max_tokens.
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.function.arguments), dict)
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", call.id)


def test_named_tool_call_streamed(client):
    chunks = list(
        client.chat.completions.create(
            model="LongCat-2.0-Preview",
            messages=[{"role": "user", "content": "Weather in Rome?"}],
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=100,
            temperature=0,
            stream=True,
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].function.name == "get_weather"
    args = json.loads("".join(d.function.arguments or "" for d in deltas))
    assert isinstance(args.get("city"), str)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_round_trip_replays_into_the_prompt(client):
    r = client.chat.completions.create(
        model="LongCat-2.0-Preview",
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees"},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=40,
    )
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")


def test_prompt_over_the_real_context_window(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="LongCat-2.0-Preview", messages=[{"role": "user", "content": "hello " * 9000}], max_tokens=10
        )
    err = info.value.body
    assert err["code"] == "context_length_exceeded"
    assert "8,192" in err["message"] and re.search(r"\d{1,2},\d{3} prompt tokens", err["message"])


def test_max_tokens_over_max_output(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="LongCat-2.0-Preview", messages=[{"role": "user", "content": "hi"}], max_tokens=9000)
    assert "8,192" in info.value.body["message"]


def test_model_detail_is_truthful(embedded_server):
    r = httpx.get(embedded_server.base_url + "/openai/v1/models/LongCat-2.0-Preview", headers={"Authorization": f"Bearer {embedded_server.key}"})
    detail = r.json()
    assert detail["context_length"] == 8192
    assert detail["engine"]["type"] == "embedded" and "SmolLM2-135M-Instruct" in detail["engine"]["weights"]
    assert detail["architecture"]["instruct_type"] == "chatml"


def _usage_lines(server) -> list[dict]:
    return usage_lines(server)


def test_client_disconnect_frees_the_engine(embedded_server):
    body = {
        "model": "LongCat-2.0-Preview",
        "messages": [{"role": "user", "content": "Write a very long story about a dragon, at least a thousand words."}],
        "max_tokens": 3000,
        "temperature": 0.8,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {embedded_server.key}"}
    before = len(_usage_lines(embedded_server))
    received = 0
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", embedded_server.base_url + "/openai/v1/chat/completions", json=body, headers=headers) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content"' in line and '"role"' not in line:
                    received += 1
                if received >= 8:
                    break
    # The stream is closed: the engine must be free for the next request almost at once.
    started = time.monotonic()
    r = httpx.post(
        embedded_server.base_url + "/openai/v1/chat/completions",
        headers=headers,
        json={"model": "LongCat-2.0-Preview", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5},
        timeout=60,
    )
    assert r.status_code == 200
    # Seconds at most (a loaded machine), not the half minute the rest of 3000 tokens would take.
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(_usage_lines(embedded_server)) < before + 2:
        time.sleep(0.05)
    cut = [line for line in _usage_lines(embedded_server)[before:] if line["outcome"] == "client_closed"]
    assert cut, _usage_lines(embedded_server)[before:]
    generated = cut[0]["output_tokens"]
    # What was generated after the client left is a few tokens at most, never the rest of 3000.
    assert received <= generated <= received + 10, (received, generated)


def test_concurrent_requests_queue_and_all_finish(embedded_server):
    headers = {"Authorization": f"Bearer {embedded_server.key}"}
    results: list[int] = []

    def one(i: int) -> None:
        r = httpx.post(
            embedded_server.base_url + "/openai/v1/chat/completions",
            headers=headers,
            json={"model": "LongCat-2.0-Preview", "messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 10},
            timeout=120,
        )
        results.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [200] * 6


def test_a_schema_too_big_to_enforce_is_a_400_not_a_crash(client, embedded_server):
    # {"maxLength": 100000} expands to a grammar nested 100,000 deep: llama.cpp's recursive
    # parser would overflow its stack and take the server down.
    huge = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 100000}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="LongCat-2.0-Preview",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": huge}},
        )
    assert "at most 1,000" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="LongCat-2.0-Preview",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            tools=[{"type": "function", "function": {"name": "f", "parameters": huge}}],
            tool_choice="required",
        )
    assert httpx.get(embedded_server.base_url + "/health").status_code == 200
