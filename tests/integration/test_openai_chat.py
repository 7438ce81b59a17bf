"""Chat Completions through the official `openai` SDK against a real server (mock engines)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.support.wire import chat_chunks, strict

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "Bash",
            "description": "Run a shell command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
        },
    }
]


@pytest.fixture()
def client(mock_server):
    return openai.OpenAI(api_key=mock_server.key, base_url=mock_server.base_url + "/openai/v1", max_retries=0)


def test_create_echo(client):
    r = client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "ping pong"}])
    assert r.choices[0].message.content == "ping pong"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 2 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    strict(ChatCompletion, r.model_dump(exclude_unset=True))


def test_base_url_without_v1_as_in_the_seed(mock_server):
    c = openai.OpenAI(api_key=mock_server.key, base_url=mock_server.base_url + "/openai", max_retries=0)
    r = c.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "hi"
    assert [m.id for m in c.models.list()][0] == "LongCat-2.0-Preview"


def test_stream_shapes_and_usage(client):
    stream = client.chat.completions.create(
        model="mock-echo",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    for c in chunks:
        strict(ChatCompletionChunk, c.model_dump(exclude_unset=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(mock_server):
    r = httpx.post(
        mock_server.base_url + "/openai/v1/chat/completions",
        headers={"Authorization": f"Bearer {mock_server.key}"},
        json={"model": "mock-echo", "messages": [{"role": "user", "content": "a b"}], "stream": True},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = chat_chunks(r.text)
    assert all(c["choices"] for c in chunks) and all("usage" not in c for c in chunks)


def test_tool_call_round_trip_streamed(client):
    messages = [{"role": "user", "content": "run something"}]
    stream = client.chat.completions.create(model="LongCat-2.0-Preview", messages=messages, tools=TOOLS, stream=True)
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    first = calls[0]
    assert first.index == 0 and first.id and first.type == "function" and first.function.name == "Bash"
    assert all(tc.index == 0 for tc in calls)
    args = "".join(tc.function.arguments or "" for tc in calls)
    assert json.loads(args) == {"command": "echo mock-tool-ran"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [{"id": first.id, "type": "function", "function": {"name": "Bash", "arguments": args}}]},
        {"role": "tool", "tool_call_id": first.id, "content": "mock-tool-ran\n"},
    ]
    r = client.chat.completions.create(model="LongCat-2.0-Preview", messages=messages, tools=TOOLS)
    assert r.choices[0].message.content == "The command ran and printed mock-tool-ran."
    assert r.choices[0].finish_reason == "stop"


def test_tool_call_non_streamed(client):
    r = client.chat.completions.create(
        model="LongCat-2.0-Preview", messages=[{"role": "user", "content": "go"}], tools=TOOLS, tool_choice="auto"
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert call.function.name == "Bash" and json.loads(call.function.arguments)["command"] == "echo mock-tool-ran"
    assert call.id.startswith("call_")


def test_stop_sequence_and_max_tokens(client):
    r = client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "alpha beta gamma"}], stop=[" gam"])
    assert r.choices[0].message.content == "alpha beta" and r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "a b c d e"}], max_tokens=2)
    assert r.choices[0].message.content == "a b" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 2
    r = client.chat.completions.create(
        model="mock-echo", messages=[{"role": "user", "content": "a b c d e"}], max_completion_tokens=3
    )
    assert r.usage.completion_tokens == 3


def test_reasoning_content_and_thinking_switch(client):
    r = client.chat.completions.create(model="mock-thinking", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.reasoning_content.startswith("Let me think")
    r = client.chat.completions.create(
        model="mock-thinking", messages=[{"role": "user", "content": "hi"}], extra_body={"thinking": {"type": "disabled"}}
    )
    assert getattr(r.choices[0].message, "reasoning_content", None) is None
    chunks = list(client.chat.completions.create(model="mock-thinking", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert any(getattr(c.choices[0].delta, "reasoning_content", None) for c in chunks if c.choices)


def test_array_content_and_unknown_fields_are_fine(client):
    r = client.chat.completions.create(
        model="mock-echo",
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "sys"}]},
            {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
        ],
        temperature=0.2,
        top_p=0.9,
        seed=7,
        extra_body={"metadata": {"a": 1}, "store": False, "brand_new_field": {"x": [1]}},
    )
    assert r.choices[0].message.content == "x\ny"


def test_engine_failure_mid_stream_raises_in_the_sdk(client):
    with pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(model="mock-fail", messages=[{"role": "user", "content": "a b c d e f"}], stream=True):
            pass
    assert "failed" in str(info.value)


def test_engine_failure_before_output_is_a_5xx(client):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="mock-fail", messages=[{"role": "user", "content": "a b c d e f"}])
    assert info.value.status_code == 502


@pytest.mark.parametrize(
    "call, exc, status",
    [
        (lambda c: c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}]), openai.BadRequestError, 400),
        (lambda c: c.chat.completions.create(model="mock-echo", messages=[]), openai.BadRequestError, 400),
        (lambda c: c.chat.completions.create(model="mock-small", messages=[{"role": "user", "content": "x"}], max_tokens=101), openai.BadRequestError, 400),
        (lambda c: c.models.retrieve("nope"), openai.NotFoundError, 404),
    ],
)
def test_errors_raise_the_sdk_exceptions(client, call, exc, status):
    with pytest.raises(exc) as info:
        call(client)
    assert info.value.status_code == status
    assert info.value.body["type"] in ("invalid_request_error",)
    assert info.value.body["message"]


def test_bad_key_raises_authentication_error(mock_server):
    c = openai.OpenAI(api_key="ak_wrong", base_url=mock_server.base_url + "/openai/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        c.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "invalid_api_key"
    assert "ak_wrong" not in info.value.message


def test_model_list_and_detail(client, mock_server):
    ids = [m.id for m in client.models.list()]
    assert "LongCat-2.0-Preview" in ids and "mock-echo" in ids
    r = httpx.get(mock_server.base_url + "/openai/v1/models/mock-small", headers={"Authorization": f"Bearer {mock_server.key}"})
    detail = r.json()
    assert detail["context_length"] == 200 and detail["max_output_tokens"] == 100
    assert detail["engine"]["type"] == "mock"
    assert set(detail["architecture"]) == {"input_modalities", "output_modalities", "modality", "tokenizer", "instruct_type"}
    assert {"prompt", "completion"} <= set(detail["pricing"])
    listing = httpx.get(mock_server.base_url + "/openai/v1/models", headers={"x-api-key": mock_server.key}).json()
    assert listing["object"] == "list"
    assert listing["data"][0] == {"id": "LongCat-2.0-Preview", "object": "model", "created": listing["data"][0]["created"], "owned_by": "LongCat"}
