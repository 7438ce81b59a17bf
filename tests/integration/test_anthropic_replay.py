"""Replay what Claude Code really sent (../shared/fixtures/clients/claude-code.jsonl) against a
mock-engine server: the warm-up HEAD, then each request of a two-turn tool session, with its own
headers and query string. Every streamed event is validated strictly against the SDK's types."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.anthropic_stream import check_stream, parse_sse
from tests.support.server import shared_file

SKIP_HEADERS = {"authorization", "x-api-key", "host", "content-length", "connection", "accept-encoding"}


def captured() -> list[dict]:
    lines = shared_file("fixtures", "clients", "claude-code.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


REQUESTS = captured()


def replay(server, record):
    headers = {k: v for k, v in record["headers"].items() if k.lower() not in SKIP_HEADERS}
    headers["Authorization"] = f"Bearer {server.key}"
    return httpx.request(record["method"], server.base_url + record["path"], headers=headers,
                         json=record.get("body"), timeout=30)


def test_the_capture_is_what_we_think():
    assert [r["method"] for r in REQUESTS] == ["HEAD", "POST", "POST"]
    assert all(r["path"].endswith("?beta=true") for r in REQUESTS[1:])


@pytest.mark.parametrize("index", range(len(REQUESTS)))
def test_replay(mock_server, index):
    record = REQUESTS[index]
    response = replay(mock_server, record)
    assert response.status_code == 200, response.text
    if record["method"] == "HEAD":
        return
    assert response.headers["content-type"].startswith("text/event-stream")
    summary = check_stream(parse_sse(response.text))
    assert summary.error is None
    # Claude Code crashes without both usage numbers at both ends of the stream.
    for usage in (summary.usage_start, summary.usage_end):
        assert usage["input_tokens"] > 1000 and isinstance(usage["output_tokens"], int)
    messages = record["body"]["messages"]
    if any(m["role"] == "assistant" for m in messages):
        # The turn after the tool ran: the scripted answer, as text.
        assert summary.stop_reason == "end_turn" and summary.text == "The command ran and printed mock-tool-ran."
    else:
        # The agent's first turn: the scripted Bash call, as a tool_use block.
        assert summary.stop_reason == "tool_use"
        (call,) = summary.tool_uses
        assert call["name"] == "Bash" and call["input"] == {"command": "echo mock-tool-ran"}


def test_replayed_count_tokens_agrees_with_the_billed_prompt(mock_server):
    record = REQUESTS[1]
    body = {k: v for k, v in record["body"].items() if k not in ("max_tokens", "stream")}
    counted = httpx.post(mock_server.base_url + "/anthropic/v1/messages/count_tokens?beta=true", json=body,
                         headers={"Authorization": f"Bearer {mock_server.key}"}, timeout=30)
    assert counted.status_code == 200
    summary = check_stream(parse_sse(replay(mock_server, record).text))
    assert counted.json()["input_tokens"] == summary.usage_start["input_tokens"]
