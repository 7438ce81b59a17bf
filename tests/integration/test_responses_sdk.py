"""The Responses API through the official `openai` SDK against a real server (mock engines).

Every response object and stream event is validated against the SDK's own types, strictly
(tests/support/responses_check.py)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.support.responses_check import check_response, check_stream, output_text, stream_events

BASH = {
    "type": "function",
    "name": "Bash",
    "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
}


@pytest.fixture()
def client(mock_server):
    return openai.OpenAI(api_key=mock_server.key, base_url=mock_server.base_url + "/openai/v1", max_retries=0)


@pytest.fixture(scope="module")
def other_client(mock_server):
    key = mock_server.new_key("someone-else@example.com", name="other")
    return openai.OpenAI(api_key=key, base_url=mock_server.base_url + "/openai/v1", max_retries=0)


def raw(response) -> dict:
    return response.model_dump(mode="json", exclude_unset=True, by_alias=True)


def post(server, body: dict, key: str | None = None, path: str = "/openai/v1/responses") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or server.key}"}
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=30)


def test_create_text(client):
    r = client.responses.create(model="mock-echo", input="ping pong", instructions="Echo it.", metadata={"t": "1"})
    check_response(raw(r))
    assert r.status == "completed" and r.output_text == "ping pong"
    assert r.usage.output_tokens == 2 and r.usage.input_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "Echo it." and r.metadata == {"t": "1"} and r.model == "mock-echo"


def test_without_v1_as_every_openai_route(mock_server):
    c = openai.OpenAI(api_key=mock_server.key, base_url=mock_server.base_url + "/openai", max_retries=0)
    assert c.responses.create(model="mock-echo", input="hi").output_text == "hi"


def test_stream_with_the_sdk_helper(client):
    with client.responses.stream(model="mock-echo", input="one two three") as stream:
        events = list(stream)
        final = stream.get_final_response()
    # The helper rebuilt the response from the events without complaint (it checks ids and
    # indexes); the raw events themselves are validated in the tests below.
    assert final.output_text == "one two three" and final.status == "completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert "".join(e.delta for e in deltas) == "one two three" and deltas[-1].snapshot == "one two three"


def test_stream_raw_events_are_strictly_valid(mock_server):
    r = post(mock_server, {"model": "mock-thinking", "input": "a b", "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    final = check_stream(stream_events(r.text))
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    assert output_text(final) == "a b"


def test_reasoning_effort_none_turns_thinking_off(client):
    r = client.responses.create(model="mock-thinking", input="a b", reasoning={"effort": "none"})
    assert [i.type for i in r.output] == ["message"] and r.usage.output_tokens_details.reasoning_tokens == 0


def test_create_stream_true_iterates_events(client):
    events = list(client.responses.create(model="mock-echo", input="x y", stream=True))
    final = check_stream([raw(e) for e in events])
    assert events[-1].type == "response.completed" and output_text(final) == "x y"


def test_tool_call_round_trip_with_function_call_output(client):
    first = client.responses.create(
        model="LongCat-2.0-Preview", input="run something", tools=[BASH, {"type": "web_search"}], store=False
    )
    check_response(raw(first))
    call = first.output[0]
    assert call.type == "function_call" and call.name == "Bash" and call.call_id
    assert json.loads(call.arguments) == {"command": "echo mock-tool-ran"}

    # The client sends the whole conversation back (no stored state), as Codex does.
    second = client.responses.create(
        model="LongCat-2.0-Preview",
        input=[
            {"role": "user", "content": "run something"},
            *[raw(item) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "mock-tool-ran\n"},
        ],
        tools=[BASH],
        store=False,
    )
    assert second.output_text == "The command ran and printed mock-tool-ran."


def test_streamed_tool_call(mock_server):
    r = post(mock_server, {"model": "LongCat-2.0-Preview", "input": "go", "tools": [BASH], "stream": True})
    final = check_stream(stream_events(r.text))
    (call,) = final["output"]
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == {"command": "echo mock-tool-ran"}


def test_previous_response_id_continues_the_stored_conversation(client):
    first = client.responses.create(model="LongCat-2.0-Preview", input="run something", tools=[BASH])
    call = first.output[0]
    # Only the tool result is sent: the stored input and output come first, so the scripted
    # model sees its own call answered and moves on to its second step.
    second = client.responses.create(
        model="LongCat-2.0-Preview",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "mock-tool-ran"}],
        tools=[BASH],
    )
    assert second.previous_response_id == first.id
    assert second.output_text == "The command ran and printed mock-tool-ran."
    assert second.usage.input_tokens > first.usage.input_tokens

    # And a third turn can continue from the second (history accumulates).
    third = client.responses.create(model="mock-echo", previous_response_id=second.id, input="thanks", tools=[BASH])
    assert third.output_text == "thanks" and third.usage.input_tokens > second.usage.input_tokens


def test_previous_response_id_of_a_streamed_response(mock_server, client):
    r = post(mock_server, {"model": "mock-echo", "input": "remember me", "stream": True})
    first_id = check_stream(stream_events(r.text))["id"]
    second = client.responses.create(model="mock-echo", previous_response_id=first_id, input="and now")
    assert second.output_text == "and now"
    assert client.responses.retrieve(first_id).output_text == "remember me"


def test_retrieve_by_id_only_for_the_owning_account(client, other_client):
    created = client.responses.create(model="mock-echo", input="keep this")
    got = client.responses.retrieve(created.id)
    check_response(raw(got))
    assert raw(got) == raw(created)

    with pytest.raises(openai.NotFoundError) as info:
        other_client.responses.retrieve(created.id)
    assert info.value.body["code"] == "not_found"
    with pytest.raises(openai.BadRequestError) as info:
        other_client.responses.create(model="mock-echo", input="x", previous_response_id=created.id)
    assert info.value.body["code"] == "previous_response_not_found"


def test_store_false_keeps_nothing(client):
    created = client.responses.create(model="mock-echo", input="forget this", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="mock-echo", input="x", previous_response_id=created.id)
    assert info.value.body["param"] == "previous_response_id"


def test_delete(client):
    created = client.responses.create(model="mock-echo", input="temporary")
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_json_schema_format_is_echoed_and_passed_on(client):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
    r = client.responses.create(
        model="mock-echo",
        input='{"a": 1}',
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}},
    )
    check_response(raw(r))
    assert json.loads(r.output_text) == {"a": 1}
    assert r.text.format.type == "json_schema" and r.text.format.name == "thing"


def test_max_output_tokens_ends_incomplete(mock_server, client):
    r = client.responses.create(model="mock-echo", input="one two three four five", max_output_tokens=2)
    check_response(raw(r))
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "one two" and r.usage.output_tokens == 2

    s = post(mock_server, {"model": "mock-echo", "input": "one two three", "max_output_tokens": 1, "stream": True})
    events = stream_events(s.text)
    final = check_stream(events)
    assert events[-1]["type"] == "response.incomplete" and final["incomplete_details"]["reason"] == "max_output_tokens"


def test_engine_failure_mid_stream_is_response_failed(mock_server):
    r = post(mock_server, {"model": "mock-fail", "input": "one two three four five six", "stream": True})
    assert r.status_code == 200
    events = stream_events(r.text)
    final = check_stream(events)
    assert events[-1]["type"] == "response.failed"
    assert final["error"]["code"] == "upstream_error" and final["usage"]["output_tokens"] == 3


def test_engine_failure_without_stream_is_an_http_error(client):
    with pytest.raises(openai.InternalServerError) as info:
        client.responses.create(model="mock-fail", input="one two three four five six")
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_error"


def test_context_window_exceeded(mock_server):
    long_input = "word " * 400
    r = post(mock_server, {"model": "mock-small", "input": long_input})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
    assert "200" in error["message"] and "mock-small" in error["message"]

    # Streaming: the same code inside the stream (as Codex reads it), and the message in words.
    s = post(mock_server, {"model": "mock-small", "input": long_input, "stream": True})
    assert s.status_code == 200
    events = stream_events(s.text)
    final = check_stream(events)
    assert events[-1]["type"] == "response.failed" and final["error"]["code"] == "context_length_exceeded"
    assert output_text(final) == final["error"]["message"] == error["message"]
    assert final["usage"]["total_tokens"] == 0


def test_max_output_tokens_above_the_model_limit_names_the_field(mock_server):
    r = post(mock_server, {"model": "mock-small", "input": "hi", "max_output_tokens": 1000})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_output_tokens" and "max_output_tokens" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "no-such-model", "input": "hi"}, 400, "invalid_parameter"),
        ({"input": "hi"}, 400, "invalid_parameter"),
        ({"model": "mock-echo", "input": 3}, 400, "invalid_parameter"),
        ({"model": "mock-echo", "input": "hi", "tools": [{"type": "function"}]}, 400, "invalid_parameter"),
        ({"model": "mock-echo", "input": "hi", "stream": True, "temperature": 9}, 400, "invalid_parameter"),
    ],
)
def test_bad_requests_get_openai_error_bodies(mock_server, body, status, code):
    r = post(mock_server, body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


def test_bad_json_and_bad_key(mock_server):
    r = httpx.post(
        mock_server.base_url + "/openai/v1/responses",
        content=b"{not json",
        headers={"Authorization": f"Bearer {mock_server.key}", "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = post(mock_server, {"model": "mock-echo", "input": "hi", "stream": True}, key="ak_wrong")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(mock_server.base_url + "/openai/v1/responses/resp_x")
    assert r.status_code == 401
