"""The `anthropic_compat` engine's pure translations: canonical request -> upstream Messages body,
upstream SSE bytes -> canonical events, upstream errors -> the platform's errors, and the memory
of the upstream's thinking signatures."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longcat.canonical import (
    ApiError,
    ChatRequest,
    Collector,
    Finish,
    ImageBlock,
    Message,
    ResponseFormat,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
)
from longcat.config import ConfigError, ModelConfig, Settings
from longcat.engines.anthropic_compat import (
    AnthropicCompatEngine,
    EventTranslator,
    Options,
    StreamReader,
    ThinkingSignatures,
    anthropic_error,
    count_body,
    messages_body,
    parse_options,
)
from longcat.engines.catalog import build_engine

OPTS = Options(base_urls=["http://up"], upstream_model="claude-up")
TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def req(*messages: Message, **kw) -> ChatRequest:
    return ChatRequest(model="front", messages=list(messages) or [Message("user", [TextBlock("hi")])], **kw)


def user(*blocks) -> Message:
    return Message("user", list(blocks))


def assistant(*blocks) -> Message:
    return Message("assistant", list(blocks))


def body(*messages: Message, options: Options = OPTS, max_tokens: int = 4096, signatures=None, **kw):
    return messages_body(req(*messages, **kw), options, max_tokens=max_tokens, signatures=signatures)


def model(**options) -> ModelConfig:
    return ModelConfig(id="front", engine="anthropic_compat", context_window=200000, max_output=64000, options=options)


# ===================================================================================== request


def test_minimal_body_always_streams_with_max_tokens_and_system_blocks():
    assert body(system=[TextBlock("Be brief."), TextBlock(""), TextBlock("Be kind.")], max_tokens=50) == {
        "model": "claude-up",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        "stream": True,
    }


IMG_URL = ImageBlock(url="https://example.com/cat.png")
IMG_DATA = ImageBlock(media_type="image/jpeg", data="AAAA")


def text(t: str) -> dict:
    return {"type": "text", "text": t}


@pytest.mark.parametrize(
    "messages, expected",
    [
        pytest.param(
            [user(TextBlock("look"), IMG_URL, IMG_DATA, ImageBlock(data="BBBB"))],
            [{"role": "user", "content": [
                text("look"),
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "BBBB"}},
            ]}],
            id="images",
        ),
        pytest.param(
            [
                user(TextBlock("run it")),
                assistant(TextBlock("Running."), ToolUseBlock("call_1", "Bash", '{"command":"ls"}'), ToolUseBlock("call.2:x", "Time", ""),
                          ToolUseBlock("c3", "Odd", "[1, 2]"), ToolUseBlock("c4", "Bad", "{not json")),
                user(TextBlock("and now?"), ToolResultBlock("call_1", [TextBlock("a.txt"), IMG_DATA]),
                     ToolResultBlock("call.2:x", [TextBlock("boom")], is_error=True), ToolResultBlock("c3", []),
                     ToolResultBlock("c4", [TextBlock("")])),
            ],
            [
                {"role": "user", "content": [text("run it")]},
                {"role": "assistant", "content": [
                    text("Running."),
                    {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {"command": "ls"}},
                    {"type": "tool_use", "id": "call_2_x", "name": "Time", "input": {}},
                    {"type": "tool_use", "id": "c3", "name": "Odd", "input": {"arguments": [1, 2]}},
                    {"type": "tool_use", "id": "c4", "name": "Bad", "input": {"arguments": "{not json"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": [
                        text("a.txt"), {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}}]},
                    {"type": "tool_result", "tool_use_id": "call_2_x", "content": [text("boom")], "is_error": True},
                    {"type": "tool_result", "tool_use_id": "c3"},
                    {"type": "tool_result", "tool_use_id": "c4"},
                    text("and now?"),
                ]},
            ],
            id="tool round trip: results first, ids rewritten alike, inputs parsed",
        ),
        pytest.param(
            [user(TextBlock("a")), Message("system", [TextBlock("mid-way rule")]), assistant(), user(TextBlock("")),
             assistant(TextBlock("x")), assistant(TextBlock("y"))],
            [{"role": "user", "content": [text("a"), text("mid-way rule")]},
             {"role": "assistant", "content": [text("x"), text("y")]}],
            id="system mid-conversation is user text, empty turns dropped, same roles merged",
        ),
        pytest.param(
            [user(TextBlock("q")), assistant(TextBlock("The answer is  \n"))],
            [{"role": "user", "content": [text("q")]}, {"role": "assistant", "content": [text("The answer is")]}],
            id="prefill loses trailing whitespace",
        ),
        pytest.param(
            [user(TextBlock("q")), assistant(TextBlock("  "))],
            [{"role": "user", "content": [text("q")]}],
            id="a blank prefill is left out",
        ),
        pytest.param(
            [user(TextBlock("q")), assistant(ThinkingBlock("never seen", signature="lc1.x"), ThinkingBlock("", "opaque", redacted=True),
                                             TextBlock("A."))],
            [{"role": "user", "content": [text("q")]}, {"role": "assistant", "content": [text("A.")]}],
            id="thinking the upstream did not write is dropped",
        ),
    ],
)
def test_messages(messages, expected):
    assert body(*messages)["messages"] == expected


def test_a_tool_id_of_nothing_but_symbols_gets_a_stable_one():
    sent = body(user(TextBlock("x")), assistant(ToolUseBlock("...", "f", "{}")), user(ToolResultBlock("...", [TextBlock("r")])))
    use, result = sent["messages"][1]["content"][0], sent["messages"][2]["content"][0]
    assert TOOL_ID.match(use["id"]) and use["id"] == result["tool_use_id"] and use["id"].startswith("toolu_")


TOOLS = [ToolSpec("Bash", "Run a command", {"type": "object", "properties": {"command": {"type": "string"}}}), ToolSpec("Time")]


@pytest.mark.parametrize(
    "choice, expected",
    [
        (ToolChoice("auto"), None),
        (ToolChoice("auto", parallel=False), {"type": "auto", "disable_parallel_tool_use": True}),
        (ToolChoice("none"), {"type": "none"}),
        (ToolChoice("required"), {"type": "any"}),
        (ToolChoice("required", parallel=False), {"type": "any", "disable_parallel_tool_use": True}),
        (ToolChoice("tool", "Bash"), {"type": "tool", "name": "Bash"}),
    ],
)
def test_tools_and_tool_choice(choice, expected):
    sent = body(tools=TOOLS, tool_choice=choice)
    assert sent["tools"] == [
        {"name": "Bash", "description": "Run a command", "input_schema": TOOLS[0].parameters},
        {"name": "Time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert sent.get("tool_choice") == expected
    assert not {"tools", "tool_choice"} & body(tool_choice=choice).keys()


def test_sampling_stop_and_formats():
    sent = body(temperature=1.7, top_p=0.9, top_k=20, seed=7, stop=["END", "  ", "##"], max_tokens=9)
    assert {k: sent.get(k) for k in ("temperature", "top_p", "top_k", "seed", "stop_sequences", "max_tokens")} == {
        "temperature": 1.0, "top_p": 0.9, "top_k": 20, "seed": None, "stop_sequences": ["END", "##"], "max_tokens": 9}
    assert "top_k" not in body(top_k=0)
    assert not {"temperature", "top_p", "top_k", "stop_sequences", "output_config", "thinking"} & body().keys()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert body(response_format=ResponseFormat("json_schema", schema))["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in body(response_format=ResponseFormat("json_object"))


@pytest.mark.parametrize(
    "thinking, extras, options, max_tokens, expected",
    [
        (None, {}, {}, 4096, None),
        (False, {}, {}, 4096, {"type": "disabled"}),
        (True, {}, {}, 4096, {"type": "enabled", "budget_tokens": 2048}),
        (True, {"thinking_budget": 3000}, {}, 4096, {"type": "enabled", "budget_tokens": 3000}),
        (True, {"thinking_budget": 9000}, {}, 4096, {"type": "enabled", "budget_tokens": 4095}),
        (True, {"thinking_budget": 10}, {}, 4096, {"type": "enabled", "budget_tokens": 1024}),
        (True, {}, {"thinking_budget": 1500}, 4096, {"type": "enabled", "budget_tokens": 1500}),
        (True, {}, {}, 1500, {"type": "enabled", "budget_tokens": 1024}),
        (True, {}, {}, 1024, None),  # no room for Anthropic's smallest budget
        (True, {}, {"thinking_type": "adaptive"}, 500, {"type": "adaptive"}),
    ],
)
def test_thinking(thinking, extras, options, max_tokens, expected):
    opts = Options(base_urls=["http://up"], upstream_model="m", **options)
    assert body(thinking=thinking, extras=extras, options=opts, max_tokens=max_tokens).get("thinking") == expected


def test_thinking_turns_sampling_and_forced_tools_the_way_anthropic_accepts():
    sent = body(thinking=True, temperature=0.2, top_p=0.5, top_k=5)
    assert sent["thinking"]["type"] == "enabled" and not {"temperature", "top_p", "top_k"} & sent.keys()
    assert body(thinking=True, top_p=0.97)["top_p"] == 0.97
    forced = body(thinking=True, tools=TOOLS, tool_choice=ToolChoice("required"), temperature=0.2)
    assert "thinking" not in forced and forced["tool_choice"] == {"type": "any"} and forced["temperature"] == 0.2
    assert body(thinking=False, temperature=0.2)["temperature"] == 0.2


def test_extra_body_adds_defaults_the_request_overrides():
    opts = Options(base_urls=["http://up"], upstream_model="m",
                   extra_body={"metadata": {"user_id": "longcat"}, "top_k": 40, "output_config": {"effort": "high"}})
    schema = {"type": "object"}
    sent = body(top_k=5, options=opts, response_format=ResponseFormat("json_schema", schema))
    assert sent["metadata"] == {"user_id": "longcat"} and sent["top_k"] == 5
    assert sent["output_config"] == {"effort": "high", "format": {"type": "json_schema", "schema": schema}}
    assert body(options=opts)["top_k"] == 40


def test_prompt_caching_marks_tools_system_and_the_end_of_the_conversation():
    opts = Options(base_urls=["http://up"], upstream_model="m", prompt_caching=True)
    store = ThinkingSignatures(1 << 20)
    store.keep([{"type": "thinking", "thinking": "hmm", "signature": SIG}])
    sent = body(user(TextBlock("q")), assistant(ToolUseBlock("t1", "Bash", "{}")),
                user(ToolResultBlock("t1", [TextBlock("ok")]), TextBlock("go on")), assistant(ThinkingBlock("hmm")),
                options=opts, system=[TextBlock("A"), TextBlock("B")], tools=TOOLS, signatures=store)
    mark = {"type": "ephemeral"}
    assert [t.get("cache_control") for t in sent["tools"]] == [None, mark]
    assert [b.get("cache_control") for b in sent["system"]] == [None, mark]
    assert sent["messages"][-1]["content"] == [{"type": "thinking", "thinking": "hmm", "signature": SIG}]  # cannot be marked
    assert [b.get("cache_control") for b in sent["messages"][-2]["content"]] == [None, mark]  # the last block that can be
    assert [b.get("cache_control") for b in sent["messages"][-3]["content"]] == [None]
    sent = body(user(TextBlock("q")), user(ToolResultBlock("t1", [TextBlock("ok")])), options=opts)
    assert [b.get("cache_control") for b in sent["messages"][-1]["content"]] == [None, mark]
    assert "cache_control" not in json.dumps(body(system=[TextBlock("A")], tools=TOOLS))


def test_count_body_is_the_prompt_only():
    request = req(system=[TextBlock("S")], tools=TOOLS, tool_choice=ToolChoice("tool", "Bash"), temperature=0.5, stop=["x"])
    assert set(count_body(request, OPTS, max_tokens=100)) == {"model", "system", "messages", "tools", "tool_choice"}


# ===================================================================================== thinking replay

SIG = "EqQBCkYIBxgCKkD" + "x" * 40


def test_replayed_thinking_goes_back_with_the_upstreams_signature():
    store = ThinkingSignatures(1 << 20)
    store.keep([{"type": "thinking", "thinking": "Let me ", "signature": SIG},
                {"type": "redacted_thinking", "data": "ENCRYPTED"},
                {"type": "thinking", "thinking": "think.", "signature": SIG + "2"}])
    turn = assistant(ThinkingBlock("Let me think.", signature="lc1.ours"), ToolUseBlock("toolu_1", "Bash", "{}"))
    sent = body(user(TextBlock("q")), turn, user(ToolResultBlock("toolu_1", [TextBlock("ok")])), thinking=True, signatures=store)
    assert sent["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Let me ", "signature": SIG},
        {"type": "redacted_thinking", "data": "ENCRYPTED"},
        {"type": "thinking", "thinking": "think.", "signature": SIG + "2"},
        {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}},
    ]
    assert sent["thinking"]["type"] == "enabled"


def test_a_tool_loop_whose_thinking_is_unknown_continues_without_thinking():
    turn = assistant(ThinkingBlock("forgotten", signature="lc1.ours"), ToolUseBlock("toolu_1", "Bash", "{}"))
    for store in (None, ThinkingSignatures(1 << 20), ThinkingSignatures(0)):
        sent = body(user(TextBlock("q")), turn, user(ToolResultBlock("toolu_1", [TextBlock("ok")])), thinking=True,
                    signatures=store)
        assert sent["messages"][1]["content"] == [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]
        assert "thinking" not in sent
    # A new question after an answered loop needs no thinking from before.
    sent = body(user(TextBlock("q")), turn, user(ToolResultBlock("toolu_1", [TextBlock("ok")])), assistant(TextBlock("Done.")),
                user(TextBlock("next")), thinking=True)
    assert sent["thinking"]["type"] == "enabled"
    # Thinking off needs nothing either.
    sent = body(user(TextBlock("q")), turn, user(ToolResultBlock("toolu_1", [TextBlock("ok")])), thinking=False)
    assert sent["thinking"] == {"type": "disabled"}


def test_signature_memory_is_bounded_and_least_recently_used_goes_first():
    store = ThinkingSignatures(3 * (ThinkingSignatures.ENTRY_OVERHEAD + 100))
    for i in range(3):
        store.keep([{"type": "thinking", "thinking": f"t{i}", "signature": str(i) * 100}])
    assert store.recall("t0") is not None  # now the most recent
    store.keep([{"type": "thinking", "thinking": "t3", "signature": "3" * 100}])
    assert [store.recall(f"t{i}") is not None for i in range(4)] == [True, False, True, True]
    assert store.bytes <= store.max_bytes and len(store) == 3
    store.keep([{"type": "thinking", "thinking": "t4", "signature": ""}])  # unsigned: not replayable
    store.keep([{"type": "redacted_thinking", "data": "x"}])  # nothing a client could replay
    store.keep([{"type": "thinking", "thinking": "huge", "signature": "s" * 10_000}])  # larger than all of it
    assert len(store) == 3 and store.recall("t4") is None and store.recall("") is None
    off = ThinkingSignatures(0)
    off.keep([{"type": "thinking", "thinking": "t", "signature": "s"}])
    assert len(off) == 0


# ===================================================================================== options


@pytest.mark.parametrize(
    "options, words",
    [
        ({}, "exactly one of 'base_url' or 'base_urls'"),
        ({"base_url": "api.anthropic.com"}, "http://"),
        ({"base_url": "http://a", "tokenize": "vllm"}, "'tokenize' must be one of anthropic, none"),
        ({"base_url": "http://a", "thinking_type": "auto"}, "'thinking_type'"),
        ({"base_url": "http://a", "thinking_budget": 100}, "at least 1024"),
        ({"base_url": "http://a", "thinking_cache_mb": -1}, "'thinking_cache_mb'"),
        ({"base_url": "http://a", "anthropic_beta": "a\r\nX-Evil: 1"}, "'anthropic_beta'"),
        ({"base_url": "http://a", "anthropic_beta": [1]}, "'anthropic_beta'"),
        ({"base_url": "http://a", "prompt_caching": "yes"}, "'prompt_caching'"),
        ({"base_url": "http://a", "api_key_env": "LONGCAT_TEST_UNSET_KEY"}, "not set"),
        ({"base_url": "http://a", "thinking_param": "thinking"}, "unknown option(s) thinking_param for engine 'anthropic_compat'"),
    ],
)
def test_bad_options_are_config_errors(options, words):
    with pytest.raises(ConfigError) as info:
        parse_options(model(**options), env={})
    assert words in str(info.value) and "'front'" in str(info.value)


def test_options_headers_and_describe_never_show_credentials():
    opts = parse_options(model(base_urls=["https://user:pw@api.example.com/v1/", "http://10.0.0.7:8000/anthropic"],
                               api_key_env="UP_KEY", anthropic_beta=["b1", "b2"], timeout=30), env={"UP_KEY": "sk-ant-very-secret"})
    assert opts.base_urls == ["https://user:pw@api.example.com", "http://10.0.0.7:8000/anthropic"]
    assert (opts.api_key, opts.anthropic_beta, opts.read_timeout, opts.tokenize) == ("sk-ant-very-secret", "b1,b2", 30.0, "none")
    engine = AnthropicCompatEngine(model(base_urls=["https://user:pw@api.example.com"], api_key="sk-ant-very-secret",
                                         upstream_model="claude-x", tokenize="anthropic", anthropic_beta="b1"))
    assert engine.request_headers() == {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-very-secret", "anthropic-beta": "b1"}
    detail = engine.describe()
    assert detail["type"] == "anthropic_compat" and detail["upstream"] == ["https://api.example.com"]
    assert detail["upstream_model"] == "claude-x" and "count_tokens" in detail["tokenizer"]
    assert "secret" not in json.dumps(detail) and "pw" not in json.dumps(detail)
    assert "anthropic-version" not in AnthropicCompatEngine(model(base_url="http://a")).request_headers().keys() - {"anthropic-version"}
    assert "x-api-key" not in AnthropicCompatEngine(model(base_url="http://a")).request_headers()
    assert isinstance(build_engine(model(base_url="http://a"), Settings()), AnthropicCompatEngine)


# ===================================================================================== stream


def frame(data: dict, *, name: bool = True, newline: str = "\n") -> str:
    head = f"event: {data['type']}{newline}" if name else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}{newline}{newline}"


def message_start(input_tokens=10, cache_read=0, cache_write=0) -> dict:
    return {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1, "cache_read_input_tokens": cache_read,
                                         "cache_creation_input_tokens": cache_write}}}


def start(index, block) -> dict:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index, **d) -> dict:
    return {"type": "content_block_delta", "index": index, "delta": d}


def stop(index) -> dict:
    return {"type": "content_block_stop", "index": index}


def message_delta(reason, sequence=None, output=7, **usage) -> dict:
    return {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": {"output_tokens": output, **usage}}


MESSAGE_STOP = {"type": "message_stop"}


def text_reply(*pieces: str, reason="end_turn", sequence=None) -> list[dict]:
    return [message_start(), start(0, {"type": "text", "text": ""}), *(delta(0, type="text_delta", text=p) for p in pieces),
            stop(0), message_delta(reason, sequence), MESSAGE_STOP]


def run(events, *, stop_seqs=None, keep=None, raw_tail=""):
    translator = EventTranslator(model_id="front", stop=stop_seqs, on_thinking=keep)
    reader = StreamReader(translator)
    raw = "".join(e if isinstance(e, str) else frame(e) for e in events) + raw_tail
    out = reader.feed(raw.encode())
    reader.raise_error()
    more, finish = reader.end()
    return out + more, finish, translator


def test_text_stream_usage_counts_cache_reads_and_writes_as_input():
    events = [message_start(input_tokens=5, cache_read=40, cache_write=3), {"type": "ping"}, start(0, {"type": "text", "text": ""}),
              delta(0, type="text_delta", text="Hel"), delta(0, type="text_delta", text="lo"), stop(0),
              message_delta("end_turn", output=2), MESSAGE_STOP]
    out, finish, tr = run(events)
    assert out == [TextDelta("Hel"), TextDelta("lo")] and finish == Finish("stop")
    assert tr.usage == {"input": 48, "cached": 40, "output": 2}


def test_usage_while_streaming_is_the_prompt_then_an_estimate_until_message_delta():
    translator = EventTranslator(model_id="front")
    reader = StreamReader(translator)
    reader.feed((frame(message_start(input_tokens=12)) + frame(start(0, {"type": "text", "text": ""}))).encode())
    assert reader.usage == {"input": 12, "cached": 0} and reader.output_estimate == 0
    reader.feed(frame(delta(0, type="text_delta", text=" hello world, again")).encode())
    assert "output" not in reader.usage and reader.output_estimate >= 2
    reader.feed(frame(message_delta("end_turn", output=4, input_tokens=12, cache_read_input_tokens=None)).encode())
    assert reader.usage == {"input": 12, "cached": 0, "output": 4}


def test_thinking_and_its_signature_are_kept_by_run():
    runs = []
    events = [message_start(), start(0, {"type": "thinking", "thinking": "", "signature": ""}),
              delta(0, type="thinking_delta", thinking="Let me "), delta(0, type="thinking_delta", thinking="see."),
              delta(0, type="signature_delta", signature=SIG), stop(0),
              start(1, {"type": "redacted_thinking", "data": "ENC"}), stop(1),
              start(2, {"type": "tool_use", "id": "toolu_01A", "name": "Bash", "input": {}}),
              delta(2, type="input_json_delta", partial_json=""), delta(2, type="input_json_delta", partial_json='{"command":'),
              delta(2, type="input_json_delta", partial_json=' "ls"}'), stop(2),
              start(3, {"type": "thinking", "thinking": "", "signature": ""}), delta(3, type="thinking_delta", thinking="Again."),
              delta(3, type="signature_delta", signature="SIG2"), stop(3),
              start(4, {"type": "text", "text": ""}), delta(4, type="text_delta", text="Done."), stop(4),
              message_delta("tool_use"), MESSAGE_STOP]
    out, finish, _ = run(events, keep=runs.append)
    assert out == [ThinkingDelta("Let me "), ThinkingDelta("see."), ToolCallStart(0, "toolu_01A", "Bash"),
                   ToolCallDelta(0, '{"command":'), ToolCallDelta(0, ' "ls"}'), ToolCallEnd(0), ThinkingDelta("Again."),
                   TextDelta("Done.")]
    assert finish == Finish("tool_calls")
    first = [{"type": "thinking", "thinking": "Let me see.", "signature": SIG}, {"type": "redacted_thinking", "data": "ENC"}]
    second = [{"type": "thinking", "thinking": "Again.", "signature": "SIG2"}]
    assert runs == [first, second, first + second]  # the last: all of it, as a non-streamed reply shows it
    store = ThinkingSignatures(1 << 20)
    for r in runs:
        store.keep(r)
    assert store.recall("Let me see.Again.") == [{"type": "thinking", "thinking": "Let me see.", "signature": SIG},
                                                 {"type": "redacted_thinking", "data": "ENC"},
                                                 {"type": "thinking", "thinking": "Again.", "signature": "SIG2"}]


def test_tool_input_given_whole_in_the_start_block():
    out, finish, _ = run([message_start(), start(0, {"type": "tool_use", "id": "bad id!", "name": "f", "input": {"x": 1}}), stop(0),
                          start(1, {"type": "tool_use", "id": "t2", "name": "g", "input": {}}), stop(1),
                          message_delta("tool_use"), MESSAGE_STOP])
    assert out == [ToolCallStart(0, "bad_id_", "f"), ToolCallDelta(0, '{"x": 1}'), ToolCallEnd(0),
                   ToolCallStart(1, "t2", "g"), ToolCallEnd(1)]


@pytest.mark.parametrize(
    "reason, sequence, expected",
    [
        ("end_turn", None, Finish("stop")),
        ("max_tokens", None, Finish("length")),
        ("model_context_window_exceeded", None, Finish("length")),
        ("stop_sequence", "END", Finish("stop_sequence", "END")),
        ("tool_use", None, Finish("tool_calls")),
        ("refusal", None, Finish("content_filter")),
        ("pause_turn", None, Finish("stop")),
        ("something_new", None, Finish("stop")),
    ],
)
def test_stop_reasons(reason, sequence, expected):
    assert run(text_reply("x", reason=reason, sequence=sequence))[1] == expected


def test_local_stop_when_the_upstream_ignores_stop_sequences():
    out, finish, tr = run(text_reply("alpha E", "ND beta", "never")[:-2], stop_seqs=["END"])
    assert "".join(e.text for e in out) == "alpha " and finish == Finish("stop_sequence", "END")
    assert tr.output_estimate >= 2
    held, finish, _ = run(text_reply("ab", "E"), stop_seqs=["END"])
    assert "".join(e.text for e in held) == "abE" and finish == Finish("stop")


def test_a_cut_stream_is_an_error_but_a_missing_message_stop_is_not():
    assert run(text_reply("x")[:-1])[1] == Finish("stop")
    assert run(text_reply("x")[:-2] + [MESSAGE_STOP])[1] == Finish("stop")
    with pytest.raises(ApiError) as info:
        run(text_reply("x")[:-2])
    assert (info.value.status, info.value.code) == (502, "upstream_error") and "before the reply was complete" in info.value.message


@pytest.mark.parametrize(
    "bad, words",
    [
        ("data: {not json\n\n", "not JSON"),
        ("data: [1, 2]\n\n", "not a JSON object"),
        (frame(delta(5, type="text_delta", text="x")), "never started"),
        (frame(delta(0, type="input_json_delta", partial_json="{")), "input_json_delta in a text block"),
        (frame(start(0, {"type": "text", "text": ""})), "started twice"),
        (frame(start(1, {"type": "tool_use", "id": "t"})), "without a name"),
        (frame(stop(0)) + frame(delta(0, type="text_delta", text="x")), "had stopped"),
        (frame({"type": "content_block_start", "index": 1}), "without its index or block"),
    ],
)
def test_malformed_streams(bad, words):
    head = [message_start(), start(0, {"type": "text", "text": ""}), delta(0, type="text_delta", text="ok")]
    translator = EventTranslator(model_id="front")
    reader = StreamReader(translator)
    out = reader.feed(("".join(frame(e) for e in head) + bad).encode())
    assert out == [TextDelta("ok")]  # the events before the failure are kept
    with pytest.raises(ApiError) as info:
        reader.raise_error()
    assert info.value.status == 502 and "malformed" in info.value.message and words in info.value.message


@pytest.mark.parametrize(
    "error, kind, code, status, words",
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, "overloaded", "overloaded", 503, "busy"),
        ({"type": "rate_limit_error", "message": "slow"}, "overloaded", "overloaded", 503, "busy"),
        ({"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}, "invalid_request",
         "context_length_exceeded", 400, "prompt is too long"),
        ({"type": "api_error", "message": "Internal server error"}, "upstream", "upstream_error", 502, "mid-reply: Internal server error"),
        ({"type": "whatever", "message": "odd"}, "upstream", "upstream_error", 502, "odd"),
        ({"type": "authentication_error", "message": "invalid x-api-key sk-ant-very-secret"}, "upstream", "upstream_error", 502,
         "credentials"),
    ],
)
def test_error_events_in_the_stream(error, kind, code, status, words):
    translator = EventTranslator(model_id="front", secrets=("sk-ant-very-secret",))
    with pytest.raises(ApiError) as info:
        translator.feed("error", {"type": "error", "error": error})
    err = info.value
    assert (err.kind, err.code, err.status) == (kind, code, status) and words in err.message
    assert "sk-ant-very-secret" not in err.message
    if kind == "overloaded":
        assert err.headers["Retry-After"] == "2"


def test_events_of_unknown_types_and_server_tool_blocks_are_skipped():
    out, finish, _ = run([message_start(), {"type": "future_event", "x": 1},
                          start(0, {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}),
                          delta(0, type="input_json_delta", partial_json="{}"), stop(0),
                          start(1, {"type": "text", "text": "Hi", "citations": None}), delta(1, type="citations_delta", citation={}),
                          stop(1), message_delta("end_turn"), MESSAGE_STOP])
    assert out == [TextDelta("Hi")] and finish == Finish("stop")


def test_a_whole_message_from_an_upstream_that_ignored_stream():
    translator = EventTranslator(model_id="front")
    reader = StreamReader(translator)
    message = {"id": "msg", "type": "message", "role": "assistant", "model": "m", "stop_reason": "tool_use", "stop_sequence": None,
               "content": [{"type": "thinking", "thinking": "hmm", "signature": "S"}, {"type": "text", "text": "Calling."},
                           {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": 1}}],
               "usage": {"input_tokens": 9, "output_tokens": 4, "cache_read_input_tokens": 2}}
    out = reader.feed_whole(json.dumps(message).encode())
    more, finish = reader.end()
    assert out + more == [ThinkingDelta("hmm"), TextDelta("Calling."), ToolCallStart(0, "toolu_9", "f"), ToolCallDelta(0, '{"a": 1}'),
                          ToolCallEnd(0)]
    assert finish == Finish("tool_calls") and translator.usage == {"input": 11, "cached": 2, "output": 4}
    bad = StreamReader(EventTranslator(model_id="front"))
    bad.feed_whole(b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}')
    with pytest.raises(ApiError) as info:
        bad.raise_error()
    assert info.value.code == "overloaded"


# ===================================================================================== errors


@pytest.mark.parametrize(
    "status, error_type, message, headers, kind, code, words",
    [
        (400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", {}, "invalid_request",
         "context_length_exceeded", "prompt is too long"),
        (400, "invalid_request_error", "max_tokens: 100000 > 64000, which is the maximum allowed", {}, "invalid_request",
         "invalid_parameter", "max_tokens: 100000 > 64000"),
        (413, "request_too_large", "Request exceeds the maximum allowed number of bytes.", {}, "invalid_request",
         "context_length_exceeded", "does not fit"),
        (401, "authentication_error", "invalid x-api-key sk-ant-very-secret", {}, "upstream", "upstream_error", "credentials"),
        (403, "permission_error", "Your API key does not have permission", {}, "upstream", "upstream_error", "api_key"),
        (402, "billing_error", "Your credit balance is too low", {}, "upstream", "upstream_error", "billing"),
        (404, "not_found_error", "model: claude-nope", {}, "upstream", "upstream_error", "upstream_model"),
        (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit", {"retry-after": "17"},
         "overloaded", "overloaded", "busy"),
        (529, "overloaded_error", "Overloaded", {}, "overloaded", "overloaded", "busy"),
        (500, "api_error", "Internal server error", {}, "upstream", "upstream_error", "failed (HTTP 500)"),
        (504, "timeout_error", "Request timeout", {}, "upstream", "upstream_error", "failed (HTTP 504)"),
    ],
)
def test_upstream_errors(status, error_type, message, headers, kind, code, words):
    raw = json.dumps({"type": "error", "error": {"type": error_type, "message": message}})
    err = anthropic_error(status, raw.encode(), headers, model_id="front", secrets=("sk-ant-very-secret",))
    assert (err.kind, err.code) == (kind, code)
    assert words in err.message and "sk-ant-very-secret" not in err.message
    if kind == "overloaded":
        assert err.status == 503 and err.headers["Retry-After"] == headers.get("retry-after", "2")
    if kind == "upstream":
        assert err.status == 502 and message not in err.message  # the operator's business, not the client's


def test_a_platform_upstream_says_context_length_exceeded_in_its_code():
    raw = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "code": "context_length_exceeded",
                                                 "message": "This request needs 300 prompt tokens, but the model has 200."}})
    assert anthropic_error(400, raw, model_id="front").code == "context_length_exceeded"


# ===================================================================================== property

NAMES = st.sampled_from(["Bash", "get_weather", "read_file"])
ARGS = st.dictionaries(st.sampled_from(["command", "city", "path", "n"]), st.text(max_size=12) | st.integers(), max_size=3)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=16)


def _pieces(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@st.composite
def replies(draw):
    """One upstream reply (thinking, text, tool calls, pings anywhere) and a random chunking of its bytes."""
    thinking = draw(TEXT)
    lead = draw(TEXT)
    calls = draw(st.lists(st.tuples(NAMES, ARGS), max_size=3))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    named = draw(st.booleans())
    pings = draw(st.lists(st.integers(0, 40), max_size=4))
    events = [message_start(input_tokens=20, cache_read=5)]
    index = 0
    if thinking:
        events.append(start(index, {"type": "thinking", "thinking": "", "signature": ""}))
        events += [delta(index, type="thinking_delta", thinking=p) for p in _pieces(thinking, draw(st.lists(st.integers(0, 40), max_size=3)))]
        events += [delta(index, type="signature_delta", signature=SIG), stop(index)]
        index += 1
    if lead:
        events.append(start(index, {"type": "text", "text": ""}))
        events += [delta(index, type="text_delta", text=p) for p in _pieces(lead, draw(st.lists(st.integers(0, 40), max_size=3)))]
        events.append(stop(index))
        index += 1
    expected = []
    for i, (name, args) in enumerate(calls):
        args_text = json.dumps(args, ensure_ascii=False)
        call_id = f"toolu_{i}x{draw(st.integers(0, 999))}"
        expected.append((call_id, name, args_text))
        events.append(start(index, {"type": "tool_use", "id": call_id, "name": name, "input": {}}))
        events += [delta(index, type="input_json_delta", partial_json=p)
                   for p in _pieces(args_text, draw(st.lists(st.integers(0, 200), max_size=6)))]
        events.append(stop(index))
        index += 1
    events += [message_delta("tool_use" if calls else "end_turn", output=9, input_tokens=20, cache_read_input_tokens=5),
               MESSAGE_STOP]
    for at in sorted(pings, reverse=True):
        events.insert(1 + at % len(events), {"type": "ping"})
    data = "".join(frame(e, name=named, newline=newline) for e in events).encode()
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=12))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)], data, thinking, lead, expected


def _read(pieces: list[bytes]):
    runs: list = []
    translator = EventTranslator(model_id="front", on_thinking=runs.append)
    reader = StreamReader(translator)
    events = []
    for piece in pieces:
        events += reader.feed(piece)
        reader.raise_error()
    more, finish = reader.end()
    return events + more, finish, translator.usage, runs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies())
def test_any_chunking_of_an_upstream_stream_gives_the_same_events(case):
    pieces, whole, thinking, lead, expected = case
    events, finish, usage, runs = _read(pieces)
    assert (events, finish, usage, runs) == _read([whole])
    collector = Collector()
    for event in events:
        collector.add(event)
    collector.add(finish)
    done = collector.result()
    assert (done.thinking, done.text) == (thinking, lead)
    assert [(c.id, c.name, c.arguments) for c in done.tool_calls] == expected
    assert done.finish == Finish("tool_calls" if expected else "stop")
    assert usage == {"input": 25, "cached": 5, "output": 9}
    assert runs == ([[{"type": "thinking", "thinking": thinking, "signature": SIG}]] if thinking else [])


def test_send_user_names_the_account_in_metadata():
    body = {"model": "m", "metadata": {"user_id": "from-extra-body"}}
    AnthropicCompatEngine(model(base_url="http://a", send_user=True)).tag_account(body, "lc-0123")
    assert body["metadata"] == {"user_id": "lc-0123"}
    plain = {"model": "m"}
    AnthropicCompatEngine(model(base_url="http://a")).tag_account(plain, "lc-0123")
    assert "metadata" not in plain
    with pytest.raises(ConfigError, match="send_user"):
        parse_options(model(base_url="http://a", send_user="yes"), env={})


def test_tool_input_of_any_shape():
    from longcat.engines.anthropic_compat import tool_input

    assert tool_input("[" * 1000 + "]" * 1000) == {"arguments": "[" * 1000 + "]" * 1000}
    assert tool_input("1" * 5000) == {"arguments": "1" * 5000}
    assert tool_input('{"a": 1}') == {"a": 1}
