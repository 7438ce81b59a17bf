"""The Anthropic format on the embedded SmolLM2 engine: its tool calls as `tool_use` blocks, its
own tokenizer for counting, and a clear 400 for prompts beyond its 8,192-token context."""

from __future__ import annotations

import json
import re

import anthropic
import httpx
import pytest

from tests.support.anthropic_stream import check_stream, parse_sse, strict_message
from tests.support.server import shared_file

pytestmark = pytest.mark.embedded

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


@pytest.fixture(scope="module")
def client(embedded_server):
    return anthropic.Anthropic(api_key=embedded_server.key, base_url=embedded_server.base_url + "/anthropic", max_retries=0)


PLACEHOLDER = re.compile(r"<(\d+) characters of client text>")


def claude_code_body(*, full_size: bool = False) -> dict:
    """Claude Code's first request. Its texts are redacted to placeholders such as
    "<5572 characters of client text>"; `full_size` puts back that much ordinary prose."""
    line = shared_file("fixtures", "clients", "claude-code.jsonl").read_text().splitlines()[1]
    if full_size:
        prose = "The agent reads the files, runs the tests and reports what it changed. " * 200
        line = PLACEHOLDER.sub(lambda m: prose[: int(m.group(1))].replace('"', "'"), line)
    return json.loads(line)["body"]


def test_tool_calls_come_out_as_tool_use_blocks(client):
    message = client.messages.create(model="LongCat-2.0-Preview", max_tokens=60, tools=[WEATHER],
                                     tool_choice={"type": "tool", "name": "get_weather"}, messages=ASK,
                                     # Greedy: sampled warm, a 135M model can ramble inside an argument.
                                     extra_body={"temperature": 0})
    strict_message(message.to_dict())
    assert message.stop_reason == "tool_use"
    (call,) = [b for b in message.content if b.type == "tool_use"]
    assert call.name == "get_weather" and TOOL_ID.match(call.id)
    assert isinstance(call.input.get("city"), str)


def test_streamed_tool_call_round_trip(client, embedded_server):
    body = {"model": "LongCat-2.0-Preview", "max_tokens": 60, "tools": [WEATHER], "tool_choice": {"type": "any"},
            "messages": ASK, "stream": True, "temperature": 0}
    response = httpx.post(embedded_server.base_url + "/anthropic/v1/messages", json=body,
                          headers={"x-api-key": embedded_server.key}, timeout=120)
    summary = check_stream(parse_sse(response.text))
    assert summary.stop_reason == "tool_use"
    (call,) = summary.tool_uses
    assert call["name"] == "get_weather" and TOOL_ID.match(call["id"])

    # Send the result back; the model answers in text (whatever a 135M model makes of it).
    history = ASK + [
        {"role": "assistant", "content": [{k: v for k, v in call.items()}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "Sunny, 21 °C"}]},
    ]
    answer = client.messages.create(model="LongCat-2.0-Preview", max_tokens=40, messages=history, tools=[WEATHER],
                                    tool_choice={"type": "none"})
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.usage.output_tokens > 0


def test_count_tokens_uses_the_engines_tokenizer(client):
    message = client.messages.create(model="LongCat-2.0-Preview", max_tokens=1, system="Be brief.", messages=ASK)
    counted = client.messages.count_tokens(model="LongCat-2.0-Preview", system="Be brief.", messages=ASK)
    assert counted.input_tokens == message.usage.input_tokens + message.usage.cache_read_input_tokens
    # SmolLM2's BPE, not the mock's word count: Claude Code's (redacted) first turn, tools and all.
    body = claude_code_body()
    big = client.messages.count_tokens(model=body["model"], system=body["system"], messages=body["messages"],
                                       tools=body["tools"])
    assert 3_000 < big.input_tokens < 8_192


def test_claude_code_sized_prompt_is_a_clear_400(embedded_server):
    """Claude Code's real first turn (~20,000 tokens, max_tokens 32,000) against the 8,192-token
    model: the error names the prompt size and the window, not the max_tokens it also exceeds."""
    body = claude_code_body(full_size=True)
    assert body["max_tokens"] > 8_192
    response = httpx.post(embedded_server.base_url + "/anthropic/v1/messages?beta=true", json=body,
                          headers={"Authorization": f"Bearer {embedded_server.key}", "anthropic-version": "2023-06-01"},
                          timeout=60)
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
    needed = re.search(r"needs ([\d,]+) prompt tokens", error["message"])
    assert needed and int(needed.group(1).replace(",", "")) > 12_000
    assert "context window of 8,192 tokens" in error["message"] and "larger context window" in error["message"]
