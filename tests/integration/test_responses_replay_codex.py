"""Replay what Codex really sent (captured in ../shared/fixtures/clients/codex.jsonl) against a
mock-engine server: every request gets a stream of strictly valid Responses events."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.responses_check import check_stream, output_text, stream_events
from tests.support.server import shared_file

SKIP_HEADERS = {"authorization", "host", "content-length", "connection", "accept-encoding"}

REQUESTS = [
    json.loads(line) for line in shared_file("fixtures", "clients", "codex.jsonl").read_text().splitlines() if line.strip()
]


@pytest.mark.parametrize("index", range(len(REQUESTS)))
def test_replay(mock_server, index):
    record = REQUESTS[index]
    headers = {k: v for k, v in record["headers"].items() if k.lower() not in SKIP_HEADERS}
    headers["Authorization"] = f"Bearer {mock_server.key}"
    r = httpx.request(record["method"], mock_server.base_url + record["path"], headers=headers, json=record["body"], timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = stream_events(r.text)
    final = check_stream(events)
    assert events[-1]["type"] == "response.completed"
    usage = final["usage"]
    assert usage["input_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]

    if record["body"]["input"][-1]["type"] != "function_call_output":
        # The agent's turn: the scripted call, as Codex reads it back from output_item.done.
        (call,) = final["output"]
        assert call["type"] == "function_call" and call["status"] == "completed"
        assert json.loads(call["arguments"]) and call["call_id"].replace("_", "").isalnum()
    else:
        # After the tool result: plain text, and nothing was stored (the client said store=false).
        assert output_text(final) == "The command ran and printed mock-tool-ran."
        got = httpx.get(mock_server.base_url + f"/openai/v1/responses/{final['id']}", headers=headers)
        assert got.status_code == 404
