"""The official `anthropic` SDK against a real server on mock engines.

Every streamed event the SDK receives is also checked strictly against the SDK's own types
(`tests/support/anthropic_stream.py`).
"""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.support.anthropic_stream import check_stream, parse_sse, strict_message

BASH = {
    "name": "Bash",
    "description": "Run a shell command",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
}


@pytest.fixture(scope="module")
def client(mock_server):
    return anthropic.Anthropic(api_key=mock_server.key, base_url=mock_server.base_url + "/anthropic", max_retries=0)


def raw_stream(server, body):
    """The same request over plain HTTP, to check the bytes the SDK parsed."""
    with httpx.stream(
        "POST", server.base_url + "/anthropic/v1/messages", json={**body, "stream": True},
        headers={"x-api-key": server.key, "anthropic-version": "2023-06-01"}, timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return check_stream(parse_sse(response.read().decode()))


def test_create(client, mock_server):
    message = client.messages.create(
        model="mock-echo", max_tokens=100, messages=[{"role": "user", "content": "Hello, world!"}]
    )
    strict_message(message.to_dict())
    assert message.content[0].text == "Hello, world!"
    assert message.stop_reason == "end_turn" and message.role == "assistant" and message.model == "mock-echo"
    assert message.id.startswith("msg_")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 4


def test_stream_text(client, mock_server):
    body = {"model": "mock-echo", "max_tokens": 100, "messages": [{"role": "user", "content": "Stream this back, please."}]}
    with client.messages.stream(**body) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "Stream this back, please." and len(texts) > 1
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 6
    summary = raw_stream(mock_server, body)
    assert summary.text == "Stream this back, please."
    assert summary.usage_start["input_tokens"] == final.usage.input_tokens


def test_stream_tool_use_and_two_turn_round_trip(client, mock_server):
    """LongCat-2.0-Preview is scripted: call Bash once, then answer."""
    first_turn = [{"role": "user", "content": "Run the command."}]
    with client.messages.stream(model="LongCat-2.0-Preview", max_tokens=200, tools=[BASH], messages=first_turn) as stream:
        events = [e.type for e in stream]
        first = stream.get_final_message()
    assert "input_json" in events
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "Bash" and call.input == {"command": "echo mock-tool-ran"}
    assert anthropic_id(call.id)

    second_turn = first_turn + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "mock-tool-ran"}]},
    ]
    second = client.messages.create(model="LongCat-2.0-Preview", max_tokens=200, tools=[BASH], messages=second_turn)
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "The command ran and printed mock-tool-ran."
    summary = raw_stream(mock_server, {"model": "LongCat-2.0-Preview", "max_tokens": 200, "tools": [BASH],
                                       "messages": [{"role": "user", "content": "again"}]})
    assert summary.tool_uses[0]["input"] == {"command": "echo mock-tool-ran"} and summary.stop_reason == "tool_use"


def anthropic_id(value: str) -> bool:
    import re

    return re.fullmatch(r"[a-zA-Z0-9_-]+", value) is not None


def test_thinking_blocks_are_signed_and_accepted_back(client, mock_server):
    ask = [{"role": "user", "content": "Think first."}]
    with client.messages.stream(model="mock-thinking", max_tokens=100, messages=ask,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        message = stream.get_final_message()
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Let me think about this step by step."
    assert thinking.signature.startswith("lc2.")
    again = client.messages.create(
        model="mock-thinking", max_tokens=100,
        messages=ask + [{"role": "assistant", "content": message.content}, {"role": "user", "content": "Go on."}],
    )
    assert again.content[-1].text == "Go on."

    tampered = {"type": "thinking", "thinking": thinking.thinking + " (edited)", "signature": thinking.signature}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="mock-thinking", max_tokens=100,
                               messages=ask + [{"role": "assistant", "content": [tampered]}, {"role": "user", "content": "?"}])
    assert "signature" in info.value.message
    assert info.value.body["error"]["code"] == "invalid_parameter"

    # A signature holds for the account it was made for: another account cannot pass it off.
    other = anthropic.Anthropic(api_key=mock_server.new_key("thinking-other@example.com"), base_url=str(client.base_url), max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        other.messages.create(model="mock-thinking", max_tokens=100,
                              messages=ask + [{"role": "assistant", "content": message.content}, {"role": "user", "content": "Go on."}])

    off = client.messages.create(model="mock-thinking", max_tokens=100, messages=ask, thinking={"type": "disabled"})
    assert [b.type for b in off.content] == ["text"]
    summary = raw_stream(mock_server, {"model": "mock-thinking", "max_tokens": 100, "messages": ask})
    assert [b["type"] for b in summary.blocks] == ["thinking", "text"]


def test_count_tokens_matches_what_a_request_is_billed(client):
    body = {"model": "mock-echo", "system": "Be brief.", "tools": [BASH],
            "messages": [{"role": "user", "content": "How many tokens is this?"}]}
    counted = client.messages.count_tokens(**body)
    message = client.messages.create(max_tokens=50, **body)
    assert counted.input_tokens == message.usage.input_tokens > 0


def test_stop_reasons(client):
    stopped = client.messages.create(model="mock-echo", max_tokens=100, stop_sequences=["STOP"],
                                     messages=[{"role": "user", "content": "one two STOP three"}])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "STOP"
    assert stopped.content[0].text == "one two "
    cut = client.messages.create(model="mock-echo", max_tokens=2, messages=[{"role": "user", "content": "one two three four"}])
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2


def test_sampling_tool_choice_metadata_and_unknown_fields_are_accepted(client):
    message = client.messages.create(
        model="mock-echo", max_tokens=50, metadata={"user_id": "u-1"},
        tools=[BASH], tool_choice={"type": "auto"}, system=[{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}]}],
        # This SDK version no longer types temperature/top_p/top_k; older clients still send them.
        extra_body={"temperature": 0.3, "top_p": 0.9, "top_k": 20, "context_management": {"edits": []},
                    "output_config": {"effort": "high"}, "brand_new_field": 1},
        extra_headers={"anthropic-beta": "some-beta-2099-01-01", "x-unknown-header": "1"},
    )
    assert message.content[0].text == "cached"


def test_models_list_and_retrieve(client):
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert ids[0] == "LongCat-2.0-Preview" and "mock-echo" in ids
    assert page.has_more is False and page.first_id == ids[0] and page.last_id == ids[-1]
    first = client.models.list(limit=1)
    assert [m.id for m in first.data] == ["LongCat-2.0-Preview"] and first.has_more
    assert [m.id for m in client.models.list(limit=1, after_id="LongCat-2.0-Preview").data] == [ids[1]]
    model = client.models.retrieve("mock-small")
    assert model.type == "model" and model.display_name == "mock-small"
    assert model.created_at.year == 2026 and model.max_input_tokens == 200 and model.max_tokens == 100
    assert model.to_dict()["context_length"] == 200  # the platform's own detail rides along


# ------------------------------------------------------------------------------------------ errors


def test_bad_request_errors(client):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 400 and "no-such-model" in info.value.message
    assert info.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "code": "invalid_parameter", "message": info.value.body["error"]["message"]}}

    with pytest.raises(anthropic.BadRequestError, match="max_tokens is 150"):
        client.messages.create(model="mock-small", max_tokens=150, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.post("/v1/messages", body={"model": "mock-echo", "messages": [{"role": "user", "content": "x"}]},
                    cast_to=httpx.Response)


def test_image_to_a_text_only_model_is_a_clear_400(client):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="mock-echo", max_tokens=10,
                               messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}])
    assert "does not accept images" in info.value.message


def test_context_window_exceeded_names_both_numbers(client):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="mock-small", max_tokens=10, messages=[{"role": "user", "content": "word " * 400}])
    error = info.value.body["error"]
    assert error["code"] == "context_length_exceeded"
    assert "404 prompt tokens" in error["message"] and "context window of 200 tokens" in error["message"]


def test_authentication_error(mock_server):
    bad = anthropic.Anthropic(api_key="ak_wrong", base_url=mock_server.base_url + "/anthropic", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model="mock-echo", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "authentication_error"
    assert info.value.body["error"]["code"] == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError):
        bad.models.list()
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.count_tokens(model="mock-echo", messages=[{"role": "user", "content": "x"}])


def test_not_found_errors(client):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        client.get("/v1/nothing-here", cast_to=httpx.Response)


def test_engine_failure_is_a_server_error(client):
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model="mock-fail", max_tokens=50, messages=[{"role": "user", "content": "one two three four five"}])
    assert info.value.status_code == 502 and info.value.body["error"]["type"] == "api_error"


def test_engine_failure_mid_stream_raises_from_the_error_event(client, mock_server):
    body = {"model": "mock-fail", "max_tokens": 50, "messages": [{"role": "user", "content": "one two three four five"}]}
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(**body) as stream:
            for _ in stream:
                pass
    assert "failed on purpose" in str(info.value)
    summary = raw_stream(mock_server, body)
    assert summary.error["type"] == "api_error" and summary.error["code"] == "upstream_error"
    assert summary.text == "one two three"
