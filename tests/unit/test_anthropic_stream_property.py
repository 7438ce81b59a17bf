"""Property: whatever canonical events an engine yields, the encoder writes a valid Anthropic stream.

Valid means every event parses strictly as the SDK's types and the order holds: blocks opened
before their deltas and closed once, indexes increasing, one `message_delta` before `message_stop`
(or an `error` event ending it). For well-behaved engines (tool calls one after another), the
stream also says exactly what the events said.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longcat.canonical import (
    ApiError,
    Error,
    Finish,
    TextDelta,
    ThinkingDelta,
    ThinkingSignature,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    new_tool_call_id,
)
from longcat.gateway.signing import Signer
from longcat.protocols.anthropic import MessageStreamEncoder
from tests.support.anthropic_stream import check_stream

SIGNER = Signer(b"property-key")
text = st.text(max_size=12)
usage = st.builds(Usage, st.integers(0, 10**6), st.integers(0, 10**5), st.integers(0, 10**6))
finish = st.sampled_from(["stop", "length", "tool_calls", "stop_sequence", "content_filter", "error"]).map(
    lambda r: Finish(r, "STOP" if r == "stop_sequence" else None)
)
error = st.just(Error(ApiError("upstream", "upstream_error", "engine failed")))

# Anything at all, in any order: the encoder must still never write an invalid stream.
any_event = st.one_of(
    text.map(TextDelta),
    text.map(ThinkingDelta),
    text.map(ThinkingSignature),
    st.integers(0, 3).map(lambda i: ToolCallStart(i, new_tool_call_id(), f"tool{i}")),
    st.builds(ToolCallDelta, st.integers(0, 3), text),
    st.integers(0, 3).map(ToolCallEnd),
    usage,
    finish,
    error,
)


def encode(events):
    enc = MessageStreamEncoder(model="m", input_tokens=7, sign_thinking=SIGNER.sign_thinking)
    frames = enc.start()
    for ev in events:
        frames += enc.encode(ev)
    return frames + enc.finish()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_event, max_size=25))
def test_any_event_sequence_encodes_to_a_valid_stream(events):
    check_stream(encode(events))


@st.composite
def engine_reply(draw):
    """What a well-behaved engine yields: optional thinking, text, sequential tool calls, usage, finish."""
    parts = []
    thinking = draw(st.lists(st.text(min_size=1, max_size=8), max_size=4))
    parts += [ThinkingDelta(t) for t in thinking]
    texts = draw(st.lists(st.text(min_size=1, max_size=8), max_size=4))
    parts += [TextDelta(t) for t in texts]
    calls = []
    for i in range(draw(st.integers(0, 3))):
        args = draw(st.dictionaries(st.text(min_size=1, max_size=5), st.integers() | st.text(max_size=5), max_size=3))
        raw = json.dumps(args)
        cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=3)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        call_id = new_tool_call_id()
        calls.append((call_id, f"tool{i}", args))
        parts += [ToolCallStart(i, call_id, f"tool{i}"), *(ToolCallDelta(i, p) for p in pieces), ToolCallEnd(i)]
    parts.append(draw(usage))
    parts.append(Finish("tool_calls") if calls else draw(finish))
    return parts, "".join(thinking), "".join(texts), calls


@settings(max_examples=200, deadline=None)
@given(engine_reply())
def test_well_behaved_replies_round_trip(reply):
    events, thinking, texts, calls = reply
    summary = check_stream(encode(events))
    got_thinking = [b for b in summary.blocks if b["type"] == "thinking"]
    if thinking:
        assert len(got_thinking) == 1 and got_thinking[0]["thinking"] == thinking
        assert SIGNER.verify_thinking(thinking, got_thinking[0]["signature"])
    else:
        assert not got_thinking
    assert summary.text == texts
    assert [(t["id"], t["name"], t["input"]) for t in summary.tool_uses] == calls
    if calls:
        assert summary.stop_reason == "tool_use"
    assert summary.usage_end["input_tokens"] + summary.usage_end["cache_read_input_tokens"] == events[-2].input_tokens
