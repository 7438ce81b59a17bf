"""Canonical events -> Anthropic Messages bodies and streams, checked against the SDK's types."""

from __future__ import annotations

import pytest

from longcat.canonical import (
    ApiError,
    Completion,
    Error,
    Finish,
    TextDelta,
    ThinkingDelta,
    ThinkingSignature,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from longcat.gateway.signing import Signer
from longcat.protocols.anthropic import MessageStreamEncoder, encode_message, tool_input
from tests.support.anthropic_stream import check_stream, strict_message

SIGNER = Signer(b"unit-test-key")


def run(events, input_tokens=10):
    enc = MessageStreamEncoder(model="m", input_tokens=input_tokens, sign_thinking=SIGNER.sign_thinking)
    frames = enc.start()
    for ev in events:
        frames += enc.encode(ev)
    frames += enc.finish()
    return frames


def test_text_stream():
    frames = run([TextDelta("Hel"), TextDelta("lo"), Usage(10, 2), Finish("stop")])
    names = [n for n, _ in frames]
    assert names == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]
    summary = check_stream(frames)
    assert summary.text == "Hello" and summary.stop_reason == "end_turn"
    assert summary.usage_start["input_tokens"] == 10 and summary.usage_end == {
        "input_tokens": 10, "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
    }


def test_thinking_text_and_tool_blocks_in_order_with_a_verifiable_signature():
    events = [
        ThinkingDelta("Need "), ThinkingDelta("a tool."), ThinkingSignature("upstream-sig"),
        TextDelta("Calling it."),
        ToolCallStart(0, "call_a", "Bash"), ToolCallDelta(0, '{"command":'), ToolCallDelta(0, ' "ls"}'), ToolCallEnd(0),
        ToolCallStart(1, "call_b", "Read"), ToolCallDelta(1, '{"path": "x"}'), ToolCallEnd(1),
        Usage(10, 9, cached_tokens=4), Finish("tool_calls"),
    ]
    summary = check_stream(run(events))
    assert [b["type"] for b in summary.blocks] == ["thinking", "text", "tool_use", "tool_use"]
    thinking = summary.blocks[0]
    assert thinking["thinking"] == "Need a tool." and SIGNER.verify_thinking("Need a tool.", thinking["signature"])
    assert [t["input"] for t in summary.tool_uses] == [{"command": "ls"}, {"path": "x"}]
    assert [t["id"] for t in summary.tool_uses] == ["call_a", "call_b"]
    assert summary.stop_reason == "tool_use"
    # Anthropic counts cache reads apart from input_tokens.
    assert summary.usage_end["input_tokens"] == 6 and summary.usage_end["cache_read_input_tokens"] == 4


@pytest.mark.parametrize(
    ("finish", "reason"),
    [(Finish("stop"), "end_turn"), (Finish("length"), "max_tokens"), (Finish("tool_calls"), "tool_use"),
     (Finish("stop_sequence", "END"), "stop_sequence"), (Finish("content_filter"), "refusal")],
)
def test_stop_reasons(finish, reason):
    summary = check_stream(run([TextDelta("x"), finish]))
    assert summary.stop_reason == reason
    assert summary.stop_sequence == finish.stop_sequence


def test_engine_error_mid_stream_becomes_an_error_event_and_ends_it():
    err = ApiError("upstream", "upstream_error", "the engine failed")
    frames = run([TextDelta("partial"), Error(err), TextDelta("ignored"), Finish("stop")])
    summary = check_stream(frames)
    assert frames[-1][0] == "error"
    assert summary.error == {"type": "api_error", "message": "the engine failed", "code": "upstream_error"}


def test_stream_without_finish_is_closed_and_empty_reply_is_valid():
    summary = check_stream(run([TextDelta("cut")]))
    assert summary.text == "cut" and summary.stop_reason == "end_turn"
    empty = check_stream(run([]))
    assert empty.blocks == [] and empty.stop_reason == "end_turn"


def test_ping_frame():
    assert MessageStreamEncoder.ping() == ("ping", {"type": "ping"})
    frames = run([])
    check_stream(frames[:1] + [MessageStreamEncoder.ping()] + frames[1:])


def test_late_delta_for_a_closed_tool_call_is_dropped_not_misplaced():
    events = [
        ToolCallStart(0, "call_a", "A"), ToolCallDelta(0, "{}"),
        ToolCallStart(1, "call_b", "B"), ToolCallDelta(0, '{"late": 1}'), ToolCallDelta(1, '{"b": 2}'), ToolCallEnd(1),
        Finish("tool_calls"),
    ]
    summary = check_stream(run(events))
    assert [t["input"] for t in summary.tool_uses] == [{}, {"b": 2}]


def test_non_streaming_body():
    done = Completion(
        text="Let me run it.",
        thinking="Plan.",
        tool_calls=[ToolCall("call_1", "Bash", '{"command": "ls"}'), ToolCall("call_2", "Bad", "not json")],
        usage=Usage(20, 7, cached_tokens=5),
        finish=Finish("tool_calls"),
        order=["thinking", "text", "tool_use"],
    )
    body = encode_message(done, model="m", message_id="msg_1", sign_thinking=SIGNER.sign_thinking)
    message = strict_message(body)
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert SIGNER.verify_thinking("Plan.", message.content[0].signature)
    assert message.content[2].input == {"command": "ls"}
    assert message.content[3].input == {"arguments": "not json"}
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (15, 5, 7)


def test_non_streaming_empty_and_stop_sequence():
    body = encode_message(Completion(finish=Finish("stop_sequence", "##")), model="m", message_id="msg_2",
                          sign_thinking=SIGNER.sign_thinking)
    message = strict_message(body)
    assert message.content == [] and message.stop_reason == "stop_sequence" and message.stop_sequence == "##"


def test_tool_input_wraps_what_is_not_an_object():
    assert tool_input("") == {}
    assert tool_input('{"a": 1}') == {"a": 1}
    assert tool_input("[1]") == {"arguments": [1]}
    assert tool_input("{oops") == {"arguments": "{oops"}
