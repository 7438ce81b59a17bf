"""Canonical events -> Responses stream events, validated against the `openai` SDK's types
(pure: no server)."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longcat.canonical import (
    ApiError,
    Error,
    Finish,
    Sampling,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from longcat.gateway.signing import Signer
from longcat.protocols.openai_responses import ResponseEncoder, decode, in_responses_terms
from tests.support import open_responses
from tests.support.responses_check import check_response, check_stream, output_text

SIGNER = Signer(b"test-secret")

TOOLS = [
    {"type": "function", "name": "Bash", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}},
    {"type": "namespace", "name": "agents", "description": "d", "tools": [{"type": "function", "name": "spawn"}]},
]


def encoder(**fields) -> ResponseEncoder:
    return ResponseEncoder(decode({"model": "m", "input": "hi", "tools": TOOLS, **fields}))


def run(enc: ResponseEncoder, events) -> list[dict]:
    out = enc.start()
    for event in events:
        out += enc.encode(event)
    out += enc.close()
    return out


def test_text_then_completed():
    events = run(encoder(), [TextDelta("Hello"), TextDelta(" world"), Usage(5, 2, 1), Finish("stop")])
    final = check_stream(events)
    assert final["status"] == "completed" and output_text(final) == "Hello world"
    assert final["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 1, "cache_write_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_thinking_text_and_tool_calls_are_separate_items():
    enc = ResponseEncoder(decode({"model": "m", "input": "hi", "tools": TOOLS}), seal=lambda t: SIGNER.seal("reasoning", t, 7))
    events = run(
        enc,
        [
            ThinkingDelta("Let me"),
            ThinkingDelta(" see."),
            TextDelta("Running it."),
            ToolCallStart(0, "call_a", "Bash"),
            ToolCallDelta(0, '{"command":'),
            ToolCallDelta(0, ' "ls"}'),
            ToolCallEnd(0),
            ToolCallStart(1, "call_b", "agents__spawn"),
            ToolCallEnd(1),
            Usage(10, 9),
            Finish("tool_calls"),
        ],
    )
    final = check_stream(events)
    reasoning, message, call, spawned = final["output"]
    assert reasoning["type"] == "reasoning" and reasoning["content"] == [{"type": "reasoning_text", "text": "Let me see."}]
    # Sealed for account 7 only: opaque, unforgeable, and no other account can open it.
    assert "Let me see" not in reasoning["encrypted_content"]
    assert SIGNER.open("reasoning", reasoning["encrypted_content"], 7) == "Let me see."
    assert SIGNER.open("reasoning", reasoning["encrypted_content"], 8) is None
    assert message["content"][0]["text"] == "Running it."
    assert (call["call_id"], call["name"], json.loads(call["arguments"])) == ("call_a", "Bash", {"command": "ls"})
    assert "namespace" not in call
    assert (spawned["name"], spawned["namespace"], spawned["arguments"]) == ("spawn", "agents", "{}")
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 2
    kinds = [e["type"] for e in events]
    assert "response.reasoning_text.delta" in kinds and "response.function_call_arguments.done" in kinds


def test_length_is_incomplete_with_the_reason():
    events = run(encoder(max_output_tokens=2), [TextDelta("a"), TextDelta(" b"), Usage(3, 2), Finish("length")])
    final = check_stream(events)
    assert events[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"} and final["max_output_tokens"] == 2
    assert final["output"][0]["status"] == "incomplete"


def test_engine_error_mid_stream_is_response_failed_with_the_platform_code():
    live = Usage(7, 3)
    enc = ResponseEncoder(decode({"model": "m", "input": "hi"}), live_usage=live)
    events = run(enc, [TextDelta("par"), Error(ApiError("upstream", "upstream_error", "engine fell over"))])
    final = check_stream(events)
    assert events[-1]["type"] == "response.failed"
    assert final["error"]["code"] == "upstream_error" and final["error"]["message"] == "engine fell over"
    assert final["usage"]["input_tokens"] == 7 and final["usage"]["output_tokens"] == 3
    assert final["output"][0]["status"] == "incomplete"


def test_a_stream_that_never_finishes_fails():
    events = run(encoder(), [TextDelta("x")])
    assert check_stream(events)["error"]["code"] == "internal_error"


def test_refusal_carries_the_message_as_text_and_the_code():
    err = ApiError("invalid_request", "context_length_exceeded", "needs 9,300 tokens; the window is 8,192")
    events = encoder().refuse(err)
    final = check_stream(events)
    assert final["status"] == "failed" and final["error"]["code"] == "context_length_exceeded"
    assert output_text(final) == err.message
    assert final["usage"]["total_tokens"] == 0


def test_response_object_echoes_the_request():
    enc = encoder(
        instructions="be brief",
        metadata={"a": "b"},
        temperature=0.5,
        text={"format": {"type": "json_object"}},
        reasoning={"effort": "low", "summary": "auto"},
        tool_choice="required",
        previous_response_id="resp_x",
    )
    run(enc, [TextDelta("{}"), Finish("stop")])
    body = enc.response
    check_response(body)
    assert body["instructions"] == "be brief" and body["metadata"] == {"a": "b"} and body["temperature"] == 0.5
    assert body["text"] == {"format": {"type": "json_object"}} and body["reasoning"] == {"effort": "low", "summary": "auto"}
    assert body["tool_choice"] == "required" and body["previous_response_id"] == "resp_x"
    assert [t["type"] for t in body["tools"]] == ["function", "namespace"]


def test_every_snapshot_carries_the_fields_the_specification_requires():
    enc = ResponseEncoder(decode({"model": "m", "input": "hi", "store": False, "max_tool_calls": 3}))
    events = run(enc, [TextDelta("x"), Finish("stop")])
    created, in_progress, final = events[0]["response"], events[1]["response"], events[-1]["response"]
    for snapshot in (created, in_progress, final):
        open_responses.check_response(snapshot)
        assert snapshot["store"] is False and snapshot["max_tool_calls"] == 3
        assert (snapshot["presence_penalty"], snapshot["frequency_penalty"], snapshot["top_logprobs"]) == (0, 0, 0)
    # Present from the start, null until the response completes.
    assert created["completed_at"] is None and in_progress["completed_at"] is None
    assert isinstance(final["completed_at"], int) and final["completed_at"] >= final["created_at"]


@pytest.mark.parametrize("ending", [[Finish("length")], [Error(ApiError("upstream", "upstream_error", "x"))]])
def test_a_response_that_did_not_complete_has_no_completed_at(ending):
    final = check_stream(run(encoder(), [TextDelta("x"), *ending]))
    assert final["status"] in ("incomplete", "failed") and final["completed_at"] is None


def test_sampling_values_are_the_engines_then_the_requests_then_the_defaults():
    def reported(sampling=None, **fields):
        body = ResponseEncoder(decode({"model": "m", "input": "hi", **fields}), sampling=sampling).response
        return tuple(body[k] for k in ("temperature", "top_p", "presence_penalty", "frequency_penalty"))

    # What the engine says it samples with wins: it has applied its defaults (or capped a value).
    assert reported(Sampling(0.7, 0.95, 0.0, 0.0)) == (0.7, 0.95, 0.0, 0.0)
    assert reported(Sampling(1.0, 0.5, 0.2, 0.1), temperature=1.7) == (1.0, 0.5, 0.2, 0.1)
    # No engine (a request refused before one ran): the request's own values.
    assert reported(temperature=0.3, top_p=0.8) == (0.3, 0.8, 0.0, 0.0)
    # What nobody names (an upstream's own default) is reported as OpenAI's defaults.
    assert reported(Sampling()) == (1.0, 1.0, 0.0, 0.0)
    assert reported(Sampling(), temperature=0.3) == (1.0, 1.0, 0.0, 0.0)


def test_calls_beyond_max_tool_calls_are_dropped():
    calls = []
    for i in range(3):
        calls += [ToolCallStart(i, f"call_{i}", "Bash"), ToolCallDelta(i, '{"command": "ls"}'), ToolCallEnd(i)]
    final = check_stream(run(encoder(max_tool_calls=2), [*calls, Usage(3, 9), Finish("tool_calls")]))
    assert [item["call_id"] for item in final["output"]] == ["call_0", "call_1"]
    assert final["max_tool_calls"] == 2 and final["status"] == "completed"
    assert len(check_stream(run(encoder(), [*calls, Finish("tool_calls")]))["output"]) == 3


@pytest.mark.parametrize(
    ("param", "message", "expected_param", "expected_message"),
    [
        ("messages", "The model 'm' does not accept images; send text only.", "input", None),
        ("response_format", "the JSON schema cannot be enforced", "text.format", None),
        ("max_tokens", "max_tokens is 9 but at most 5", "max_output_tokens", "max_output_tokens is 9 but at most 5"),
        ("tools", "too deep", "tools", None),
    ],
)
def test_errors_name_the_responses_field(param, message, expected_param, expected_message):
    err = in_responses_terms(ApiError("invalid_request", "invalid_parameter", message, param=param))
    assert err.param == expected_param and err.message == (expected_message or message)
    # A stream that fails on it says the same in its `error`.
    events = encoder().refuse(ApiError("invalid_request", "context_length_exceeded", "too long", param=param))
    assert check_stream(events)["error"]["param"] == expected_param


_piece = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=5)
_event = st.one_of(
    st.builds(TextDelta, _piece),
    st.builds(ThinkingDelta, _piece),
    st.tuples(st.just("call"), st.lists(_piece, max_size=3)),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_event, max_size=12),
    st.sampled_from(["stop", "length", "tool_calls", "content_filter", "error", "engine-error", "none"]),
)
def test_any_event_sequence_makes_a_valid_stream(parts, ending):
    events = []
    calls = 0
    for part in parts:
        if isinstance(part, tuple):
            events.append(ToolCallStart(calls, f"call_{calls}", "Bash"))
            events += [ToolCallDelta(calls, a) for a in part[1]]
            events.append(ToolCallEnd(calls))
            calls += 1
        else:
            events.append(part)
    events.append(Usage(4, len(events)))
    if ending == "engine-error":
        events.append(Error(ApiError("server", "internal_error", "boom")))
    elif ending != "none":
        events.append(Finish(ending))
    final = check_stream(run(encoder(), events))
    expected = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert output_text(final) == expected


def test_the_checker_itself_rejects_what_the_sdk_does_not_define():
    good = run(encoder(), [TextDelta("x"), Finish("stop")])
    check_stream(good)
    for tamper in (
        lambda ev: ev[4].update(surprise=1),  # a field the SDK type does not define
        lambda ev: ev[4].update(sequence_number=99),  # a gap in the sequence
        lambda ev: ev[4].update(item_id="msg_other"),  # a delta for another item
        lambda ev: ev[-1]["response"].update(status="done"),  # not a status the SDK knows
        lambda ev: ev.pop(),  # no terminal event
        # What the specification requires though the SDK's types let it pass:
        lambda ev: ev[0]["response"].pop("completed_at"),
        lambda ev: ev[-1]["response"].update(temperature=None),
        lambda ev: ev[-1]["response"].pop("store"),
        lambda ev: ev[-1]["response"].update(top_logprobs=0.5),
        lambda ev: ev[-1]["response"]["text"]["format"].update(type="yaml"),
    ):
        events = copy.deepcopy(good)
        tamper(events)
        with pytest.raises((AssertionError, ValueError)):
            check_stream(events)


def test_the_specification_checks_name_every_problem():
    events = run(ResponseEncoder(decode({"model": "m", "input": "hi", "tools": TOOLS[:1]})), [TextDelta("x"), Finish("stop")])
    body = copy.deepcopy(events[-1]["response"])
    assert open_responses.response_problems(body) == []
    del body["store"], body["tools"]
    body.update(temperature=None, completed_at="soon", usage=dict(body["usage"], total_tokens=True))
    body["output"][0]["content"][0]["logprobs"] = [{"token": "x"}]
    problems = open_responses.response_problems(body)
    for expected in (
        "the required field 'store' is missing",
        "the required field 'tools' is missing",
        "response.temperature: must be a number, got null",
        'response.completed_at: must be an integer, got "soon"',
        "response.usage.total_tokens: must be an integer, got true",
        "response.output[0].content[0].logprobs[0]: the required field 'logprob' is missing",
    ):
        assert any(expected in p for p in problems), (expected, problems)
    assert open_responses.event_problems({"type": "response.reasoning_text.delta", "sequence_number": 1})
    assert open_responses.event_problems(dict(events[4], delta=None))  # an output_text.delta
    assert open_responses.event_problems(events[4]) == []
