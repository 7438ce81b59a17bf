"""/openai/v1/responses as a strict Open Responses client sees it (a real server, mock engines).

The cases are those of the specification's compliance suite (plain text, streaming, a system
prompt, a tool call streamed and not, image input, multi-turn) plus the endings it does not
reach (failed, incomplete). Every response object and every stream event must carry each field
the specification requires, with its type (tests/support/open_responses.py, no leniency), and
still pass the SDK's strict types (tests/support/responses_check.py)."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import httpx
import pytest

from tests.support import open_responses
from tests.support.responses_check import check_response, check_stream, output_text, stream_events

BASH = {
    "type": "function",
    "name": "Bash",
    "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
}


def png_data_uri() -> str:
    """A 1x1 red PNG, built here."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def message(role: str, content) -> dict:
    return {"type": "message", "role": role, "content": content}


CASES = {
    "basic": {"model": "mock-echo", "input": [message("user", "Say hello in exactly 3 words.")]},
    "system-prompt": {
        "model": "mock-echo",
        "input": [message("system", "You are a pirate. Always respond in pirate speak."), message("user", "Say hello.")],
    },
    "multi-turn": {
        "model": "mock-echo",
        "input": [
            message("user", "My name is Alice."),
            message("assistant", "Hello Alice! Nice to meet you. How can I help you today?"),
            message("user", "What is my name?"),
        ],
    },
    "tool-call": {"model": "LongCat-2.0-Preview", "input": [message("user", "List the files here.")], "tools": [BASH]},
    "tool-result": {
        "model": "LongCat-2.0-Preview",
        "input": [
            message("user", "List the files here."),
            {"type": "function_call", "call_id": "call_1", "name": "Bash", "arguments": '{"command": "ls"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt\n"},
        ],
        "tools": [BASH],
    },
    "image": {
        "model": "mock-vision",
        "input": [
            message(
                "user",
                [{"type": "input_text", "text": "What do you see?"}, {"type": "input_image", "image_url": png_data_uri()}],
            )
        ],
    },
    "incomplete": {"model": "mock-echo", "input": "one two three four five", "max_output_tokens": 2},
}
STATUS = {name: "completed" for name in CASES} | {"incomplete": "incomplete"}
OUTPUT = {"tool-call": ["function_call"]}  # the rest answer with one message


def post(server, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.key}"}
    return httpx.post(server.base_url + "/openai/v1/responses", json=body, headers=headers, timeout=30)


def spec_stream(r: httpx.Response) -> tuple[list[dict], dict]:
    """Every event valid against the specification, and the stream as a whole consistent."""
    assert r.status_code == 200, r.text
    events = stream_events(r.text)
    for event in events:
        open_responses.check_event(event)
    return events, check_stream(events)


@pytest.mark.parametrize("case", list(CASES))
def test_json_answer(mock_server, case):
    r = post(mock_server, CASES[case])
    assert r.status_code == 200, r.text
    body = r.json()
    open_responses.check_response(body)
    check_response(body)
    assert body["status"] == STATUS[case]
    assert [item["type"] for item in body["output"]] == OUTPUT.get(case, ["message"])
    assert isinstance(body["completed_at"], int) if case != "incomplete" else body["completed_at"] is None


@pytest.mark.parametrize("case", list(CASES))
def test_stream(mock_server, case):
    events, final = spec_stream(post(mock_server, dict(CASES[case], stream=True)))
    assert final["status"] == STATUS[case]
    assert [item["type"] for item in final["output"]] == OUTPUT.get(case, ["message"])
    # The snapshots before the end already carry `completed_at`, as null.
    assert [e["response"]["completed_at"] for e in events[:2]] == [None, None]
    if case == "tool-call":
        kinds = [e["type"] for e in events]
        assert {"response.function_call_arguments.delta", "response.function_call_arguments.done"} <= set(kinds)
        added = [e["item"]["type"] for e in events if e["type"] in ("response.output_item.added", "response.output_item.done")]
        assert added == ["function_call", "function_call"]


def test_the_echoed_values_are_the_ones_used(mock_server):
    # The mock engine is deterministic: given none, it reports greedy decoding.
    body = post(mock_server, dict(CASES["basic"], store=False)).json()
    assert (body["temperature"], body["top_p"], body["presence_penalty"], body["frequency_penalty"]) == (0, 1, 0, 0)
    assert body["store"] is False and body["top_logprobs"] == 0 and body["max_tool_calls"] is None
    body = post(mock_server, dict(CASES["basic"], temperature=0.4, top_p=0.9, max_tool_calls=1)).json()
    assert (body["temperature"], body["top_p"], body["store"], body["max_tool_calls"]) == (0.4, 0.9, True, 1)


def test_failed_stream(mock_server):
    events, final = spec_stream(post(mock_server, {"model": "mock-fail", "input": "one two three four five", "stream": True}))
    assert events[-1]["type"] == "response.failed" and final["status"] == "failed"
    assert final["completed_at"] is None and final["error"]["code"] == "upstream_error"


def test_refused_stream_names_the_input(mock_server):
    # A prompt beyond the context window, streamed: a failed response naming `input`.
    events, final = spec_stream(post(mock_server, {"model": "mock-small", "input": "word " * 400, "stream": True}))
    assert final["status"] == "failed" and final["error"]["code"] == "context_length_exceeded"
    assert final["error"]["param"] == "input"


@pytest.mark.parametrize("stream", [False, True])
def test_an_image_for_a_text_only_model_names_the_input(mock_server, stream):
    r = post(mock_server, dict(CASES["image"], model="mock-echo", stream=stream))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "input" and error["code"] == "invalid_parameter" and "images" in error["message"]
    r = post(mock_server, {"model": "mock-small", "input": "word " * 400})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


def test_tool_call_arguments_are_the_scripted_ones(mock_server):
    body = post(mock_server, CASES["tool-call"]).json()
    (call,) = body["output"]
    assert call["name"] == "Bash" and json.loads(call["arguments"]) == {"command": "echo mock-tool-ran"}
    assert output_text(post(mock_server, CASES["tool-result"]).json()) == "The command ran and printed mock-tool-ran."
