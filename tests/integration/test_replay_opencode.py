"""Replay what OpenCode really sent (captured in ../shared/fixtures/clients/opencode.jsonl)
against a mock-engine server: every request gets 200 and a stream of valid chunks."""

from __future__ import annotations

import json

import httpx
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.support.server import shared_file
from tests.support.wire import chat_chunks, strict

SKIP_HEADERS = {"authorization", "host", "content-length", "connection", "accept-encoding"}


def captured(name: str) -> list[dict]:
    return [json.loads(line) for line in shared_file("fixtures", "clients", name).read_text().splitlines() if line.strip()]


REQUESTS = captured("opencode.jsonl")


@pytest.mark.parametrize("index", range(len(REQUESTS)))
def test_replay(mock_server, index):
    record = REQUESTS[index]
    headers = {k: v for k, v in record["headers"].items() if k.lower() not in SKIP_HEADERS}
    headers["Authorization"] = f"Bearer {mock_server.key}"
    r = httpx.request(record["method"], mock_server.base_url + record["path"], headers=headers, json=record["body"], timeout=30)
    assert r.status_code == 200, r.text
    chunks = chat_chunks(r.text)
    for chunk in chunks:
        strict(ChatCompletionChunk, chunk)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # OpenCode asks for include_usage: the last chunk has no choices and the usage.
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1

    body = record["body"]
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    if body.get("tools") and body["messages"][-1]["role"] != "tool":
        # The agent's turn: the scripted tool call, streamed the way the AI SDK parses it.
        assert finish == ["tool_calls"]
        assert calls[0]["id"] and calls[0]["type"] == "function" and calls[0]["function"]["name"] == "Bash"
        assert json.loads("".join(c["function"]["arguments"] for c in calls))
    else:
        # Title generation, or the turn after the tool result: plain text.
        assert finish == ["stop"] and not calls
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
