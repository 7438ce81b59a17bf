"""The `openai_compat` engine's pure translations: canonical request -> upstream Chat Completions
body, upstream SSE bytes -> canonical events, upstream errors -> the platform's errors."""

from __future__ import annotations

import asyncio
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
from longcat.config import ConfigError, ModelConfig
from longcat.engines.base import CallContext
from longcat.engines.openai_compat import (
    ChunkTranslator,
    OpenAICompatEngine,
    Options,
    SSEDecoder,
    StreamReader,
    chat_body,
    estimate_prompt_tokens,
    parse_options,
    safe_url,
    upstream_error,
)
from longcat.engines.upstream import estimate_output_tokens
from tests.support.tiny_http import Reply, tiny_server

TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
OPTS = Options(base_urls=["http://up/v1"], upstream_model="org/model-7b")


def req(*messages: Message, **kw) -> ChatRequest:
    return ChatRequest(model="front", messages=list(messages) or [Message("user", [TextBlock("hi")])], **kw)


def user(*blocks) -> Message:
    return Message("user", list(blocks))


def model(**options) -> ModelConfig:
    return ModelConfig(id="front", engine="openai_compat", context_window=1000, max_output=100, options=options)


# ===================================================================================== request


def test_minimal_body_always_streams_with_usage():
    body = chat_body(req(system=[TextBlock("Be brief."), TextBlock("Be kind.")], max_tokens=50), OPTS)
    assert body == {
        "model": "org/model-7b",
        "messages": [{"role": "system", "content": "Be brief.\n\nBe kind."}, {"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
    }
    assert chat_body(req(max_tokens=50), OPTS, max_tokens=7)["max_tokens"] == 7


IMG_URL = ImageBlock(url="https://example.com/cat.png")
IMG_DATA = ImageBlock(media_type="image/jpeg", data="AAAA")


@pytest.mark.parametrize(
    "messages, expected",
    [
        pytest.param(
            [user(TextBlock("look"), IMG_URL, IMG_DATA)],
            [{"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
            ]}],
            id="images",
        ),
        pytest.param(
            [user(TextBlock("a"), TextBlock("b"))],
            [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            id="several text blocks",
        ),
        pytest.param(
            [
                user(TextBlock("run it")),
                Message("assistant", [ThinkingBlock("plan", signature="sig"), TextBlock("Running."),
                                      ToolUseBlock("call_1", "Bash", '{"command":"ls"}'), ToolUseBlock("call_2", "Time", "")]),
                user(ToolResultBlock("call_1", [TextBlock("a.txt")]), ToolResultBlock("call_2", [TextBlock("noon")]),
                     TextBlock("and now?")),
            ],
            [
                {"role": "user", "content": "run it"},
                {"role": "assistant", "content": "Running.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": '{"command":"ls"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "Time", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
                {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
                {"role": "user", "content": "and now?"},
            ],
            id="tool round trip, thinking dropped",
        ),
        pytest.param(
            [user(TextBlock("x")), Message("assistant", [ToolUseBlock("c", "Shot", "{}")]),
             user(ToolResultBlock("c", [TextBlock("see image"), IMG_DATA]))],
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "", "tool_calls": [  # llama-cpp-python's server refuses null
                    {"id": "c", "type": "function", "function": {"name": "Shot", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "see image"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}]},
            ],
            id="tool result image follows as a user message",
        ),
        pytest.param(
            [user(TextBlock("a")), Message("system", [TextBlock("mid-way rule")]), Message("assistant", []), user()],
            [{"role": "user", "content": "a"}, {"role": "system", "content": "mid-way rule"},
             {"role": "assistant", "content": ""}, {"role": "user", "content": ""}],
            id="system mid-conversation, empty turns",
        ),
    ],
)
def test_messages(messages, expected):
    assert chat_body(req(*messages), OPTS)["messages"] == expected


def test_thinking_blocks_are_sent_as_reasoning_content_when_configured():
    turn = Message("assistant", [ThinkingBlock("step 1"), ThinkingBlock("hidden", redacted=True), TextBlock("done")])
    opts = Options(base_urls=["http://up/v1"], upstream_model="m", send_reasoning_content=True)
    assert chat_body(req(user(TextBlock("q")), turn), opts)["messages"][1] == {
        "role": "assistant", "content": "done", "reasoning_content": "step 1"}


TOOLS = [ToolSpec("Bash", "Run a command", {"type": "object", "properties": {"command": {"type": "string"}}}), ToolSpec("Time")]


@pytest.mark.parametrize(
    "choice, expected",
    [
        (ToolChoice("auto"), None),
        (ToolChoice("none"), "none"),
        (ToolChoice("required"), "required"),
        (ToolChoice("tool", "Bash"), {"type": "function", "function": {"name": "Bash"}}),
    ],
)
def test_tools_and_tool_choice(choice, expected):
    body = chat_body(req(tools=TOOLS, tool_choice=choice), OPTS)
    assert body["tools"] == [
        {"type": "function", "function": {"name": "Bash", "description": "Run a command", "parameters": TOOLS[0].parameters}},
        {"type": "function", "function": {"name": "Time", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert body.get("tool_choice") == expected
    assert "parallel_tool_calls" not in body


def test_no_tools_means_no_tool_fields_and_parallel_off_is_sent():
    assert not {"tools", "tool_choice"} & chat_body(req(tool_choice=ToolChoice("required")), OPTS).keys()
    body = chat_body(req(tools=TOOLS, tool_choice=ToolChoice("auto", parallel=False)), OPTS)
    assert body["parallel_tool_calls"] is False


def test_sampling_and_formats():
    body = chat_body(req(temperature=0.2, top_p=0.9, top_k=20, seed=7, stop=["END", "##"], max_tokens=9), OPTS)
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "seed", "stop", "max_tokens")} == {
        "temperature": 0.2, "top_p": 0.9, "top_k": 20, "seed": 7, "stop": ["END", "##"], "max_tokens": 9}
    assert not {"temperature", "top_p", "top_k", "seed", "stop", "response_format"} & chat_body(req(), OPTS).keys()
    assert chat_body(req(response_format=ResponseFormat("json_object")), OPTS)["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert chat_body(req(response_format=ResponseFormat("json_schema", schema, "thing")), OPTS)["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    assert chat_body(req(response_format=ResponseFormat("json_schema", schema)), OPTS)["response_format"]["json_schema"]["name"] == "response"


@pytest.mark.parametrize(
    "param, thinking, expected",
    [
        (None, True, {}),
        ("chat_template_kwargs", None, {}),
        ("chat_template_kwargs", True, {"chat_template_kwargs": {"enable_thinking": True}}),
        ("chat_template_kwargs", False, {"chat_template_kwargs": {"enable_thinking": False}}),
        ("chat_template_kwargs.thinking", True, {"chat_template_kwargs": {"thinking": True}}),
        ("thinking", False, {"thinking": {"type": "disabled"}}),
        ("thinking", True, {"thinking": {"type": "enabled"}}),
    ],
)
def test_thinking_param(param, thinking, expected):
    opts = Options(base_urls=["http://up/v1"], upstream_model="m", thinking_param=param)
    body = chat_body(req(thinking=thinking), opts)
    assert {k: body[k] for k in ("chat_template_kwargs", "thinking") if k in body} == expected


def test_extra_body_adds_defaults_the_request_overrides():
    opts = Options(
        base_urls=["http://up/v1"], upstream_model="m", thinking_param="chat_template_kwargs",
        extra_body={"repetition_penalty": 1.05, "top_k": 40, "chat_template_kwargs": {"custom": 1, "enable_thinking": True}},
    )
    body = chat_body(req(top_k=5, thinking=False), opts)
    assert body["repetition_penalty"] == 1.05 and body["top_k"] == 5
    assert body["chat_template_kwargs"] == {"custom": 1, "enable_thinking": False}
    assert chat_body(req(), opts)["top_k"] == 40


# ===================================================================================== options


@pytest.mark.parametrize(
    "options, words",
    [
        ({}, "exactly one of 'base_url' or 'base_urls'"),
        ({"base_url": "http://a/v1", "base_urls": ["http://b/v1"]}, "exactly one"),
        ({"base_urls": []}, "non-empty array"),
        ({"base_url": "10.0.0.5:8000/v1"}, "http://"),
        ({"base_url": "http://a/v1", "tokenize": "tiktoken"}, "'tokenize'"),
        ({"base_url": "http://a/v1", "thinking_param": "enable"}, "'thinking_param'"),
        ({"base_url": "http://a/v1", "api_key_env": "LONGCAT_TEST_UNSET_KEY"}, "not set"),
        ({"base_url": "http://a/v1", "api_key": "x", "api_key_env": "Y"}, "not both"),
        ({"base_url": "http://a/v1", "timeout": "slow"}, "'timeout'"),
        ({"base_url": "http://a/v1", "max_connections": 0}, "'max_connections'"),
        ({"base_url": "http://a/v1", "base-url": "typo"}, "unknown option(s) base-url"),
    ],
)
def test_bad_options_are_config_errors(options, words):
    with pytest.raises(ConfigError) as info:
        parse_options(model(**options), env={})
    assert words in str(info.value) and "'front'" in str(info.value)


def test_options_and_describe_never_show_credentials():
    opts = parse_options(
        model(base_urls=["http://user:pw@10.0.0.5:8000/v1/", "https://b.internal/v1?key=s3cret"], api_key_env="UP_KEY",
              timeout={"connect": 2, "read": 30}, tokenize="vllm"),
        env={"UP_KEY": "sk-very-secret"},
    )
    assert opts.base_urls[0] == "http://user:pw@10.0.0.5:8000/v1" and opts.api_key == "sk-very-secret"
    assert (opts.connect_timeout, opts.read_timeout, opts.upstream_model) == (2.0, 30.0, "front")
    engine = OpenAICompatEngine(model(base_urls=["http://user:pw@10.0.0.5:8000/v1"], api_key="sk-very-secret", upstream_model="x/y"))
    detail = engine.describe()
    assert detail["type"] == "openai_compat" and detail["upstream"] == ["http://10.0.0.5:8000/v1"]
    assert detail["upstream_model"] == "x/y"
    assert "secret" not in json.dumps(detail) and "pw" not in json.dumps(detail)
    assert safe_url("https://b.internal/v1?key=s3cret") == "https://b.internal/v1"


def test_estimated_prompt_never_refuses_but_errs_high():
    engine = OpenAICompatEngine(model(base_url="http://127.0.0.1:9/v1"))
    english = "The quick brown fox jumps over the lazy dog. " * 20
    assert estimate_prompt_tokens(req(user(TextBlock(english)))) >= len(english) / 4
    assert estimate_prompt_tokens(req(user(TextBlock("你好世界")))) >= 4
    ctx = CallContext("r")
    assert asyncio.run(engine.measure(req(user(TextBlock("word " * 5000))), ctx)) == 999 == ctx.prompt_tokens
    assert asyncio.run(engine.count_tokens(req(user(TextBlock("word " * 5000))))) > 5000


# ===================================================================================== SSE


def test_sse_decoder_framing():
    raw = b": keep-alive\r\n\r\nevent: x\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\ndata:[DONE]\n\n"
    whole = SSEDecoder().feed(raw)
    assert whole == ['{"a":\n1}', "[DONE]"]
    for size in (1, 2, 3, 7):
        decoder = SSEDecoder()
        pieces = [raw[i : i + size] for i in range(0, len(raw), size)]
        assert [d for p in pieces for d in decoder.feed(p)] == whole
    decoder = SSEDecoder()
    text = 'data: {"t":"é猫"}\r\r'.encode()
    assert [d for b in text for d in decoder.feed(bytes([b]))] == ['{"t":"é猫"}']
    decoder = SSEDecoder()
    assert decoder.feed(b"data: last") == [] and decoder.close() == ["last"]


# ===================================================================================== chunks


def chunk(delta=None, finish=None, usage=None, **extra):
    out = {"id": "x", "object": "chat.completion.chunk", "choices": [] if delta is None else [
        {"index": 0, "delta": delta, "finish_reason": finish, **extra}]}
    if usage is not None:
        out["usage"] = usage
    return out


def run(chunks, *, stop=None, done=True):
    """Feed chunk objects (or raw data strings) through SSE framing; events, finish, translator."""
    translator = ChunkTranslator(model_id="front", stop=stop)
    reader = StreamReader(translator)
    raw = "".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks)
    if done:
        raw += "data: [DONE]\n\n"
    events = reader.feed(raw.encode())
    reader.raise_error()
    more, finish = reader.end()
    return events + more, finish, translator


USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 8}}


def test_text_stream_with_usage():
    events, finish, tr = run([
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}), chunk({"content": "lo"}), chunk({}, "stop"), chunk(usage=USAGE)])
    assert events == [TextDelta("Hel"), TextDelta("lo")]
    assert finish == Finish("stop")
    assert tr.usage == {"input": 12, "output": 3, "cached": 8}


def test_reasoning_fields_become_thinking():
    events, finish, _ = run([
        chunk({"reasoning_content": "Let me "}), chunk({"reasoning": "think."}),
        chunk({"reasoning_content": "once", "reasoning": "once"}), chunk({"content": "Yes."}, "stop")])
    assert events == [ThinkingDelta("Let me "), ThinkingDelta("think."), ThinkingDelta("once"), TextDelta("Yes.")]


def test_tool_calls_one_after_another():
    events, finish, _ = run([
        chunk({"content": "Checking."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Oslo"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "chatcmpl-tool-9f.x:1", "function": {"name": "time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
    ])
    assert events == [
        TextDelta("Checking."),
        ToolCallStart(0, "call_a", "get"), ToolCallDelta(0, '{"ci'), ToolCallDelta(0, 'ty":"Oslo"}'), ToolCallEnd(0),
        ToolCallStart(1, "chatcmpl-tool-9f_x_1", "time"), ToolCallDelta(1, "{}"), ToolCallEnd(1),
    ]
    assert finish == Finish("tool_calls")


def test_tool_call_ids_are_made_when_missing_and_names_may_come_late():
    events, finish, _ = run([
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ":1}"}}]}),
        chunk({}, "stop"),  # some servers say "stop" even after a call
    ])
    start = events[0]
    assert isinstance(start, ToolCallStart) and TOOL_ID.match(start.id) and start.name == "f"
    assert events[1:] == [ToolCallDelta(0, '{"a"'), ToolCallDelta(0, ":1}"), ToolCallEnd(0)]
    assert finish == Finish("tool_calls")


def test_whole_calls_without_index():
    events, _, _ = run([
        chunk({"tool_calls": [{"id": "c1", "function": {"name": "a", "arguments": {"x": 1}}},
                              {"id": "c2", "function": {"name": "b", "arguments": "{}"}}]}, "tool_calls")])
    assert events == [ToolCallStart(0, "c1", "a"), ToolCallDelta(0, '{"x": 1}'), ToolCallEnd(0),
                      ToolCallStart(1, "c2", "b"), ToolCallDelta(1, "{}"), ToolCallEnd(1)]


@pytest.mark.parametrize(
    "reason, extra, stop, expected",
    [
        ("length", {}, None, Finish("length")),
        ("content_filter", {}, None, Finish("content_filter")),
        ("function_call", {}, None, Finish("tool_calls")),
        ("stop", {}, ["END"], Finish("stop")),
        ("stop", {"stop_reason": "END"}, ["END"], Finish("stop_sequence", "END")),  # vLLM says which
        ("stop", {"stop_reason": 151645}, ["END"], Finish("stop")),  # an EOS token id
        ("something_new", {}, None, Finish("stop")),
    ],
)
def test_finish_reasons(reason, extra, stop, expected):
    _, finish, _ = run([chunk({"content": "x"}), chunk({}, reason, **extra)], stop=stop)
    assert finish == expected


def test_local_stop_when_the_upstream_ignores_stop():
    events, finish, tr = run([chunk({"content": "alpha E"}), chunk({"content": "ND beta"}), chunk({"content": "never"})],
                             stop=["END"], done=False)
    assert "".join(e.text for e in events) == "alpha " and finish == Finish("stop_sequence", "END")
    assert tr.output_estimate >= 2


def test_a_reply_without_a_finish_reason_is_cut_short_even_with_done():
    # llama-cpp-python's server (--interrupt_requests, on by default) ends a stream that another
    # request interrupts with [DONE] and no finish_reason: the reply is incomplete, not a "stop".
    with pytest.raises(ApiError) as info:
        run([chunk({"role": "assistant"}), chunk({"content": "Once upon a"})])
    assert (info.value.status, info.value.code) == (502, "upstream_error")
    assert "without finishing the reply (no finish_reason)" in info.value.message
    with pytest.raises(ApiError) as info:
        run([chunk({"content": "x"})], done=False)
    assert (info.value.status, info.value.code) == (502, "upstream_error") and "before the reply was complete" in info.value.message
    with pytest.raises(ApiError):
        run([chunk({"content": "x"}, "abort")])
    assert run([chunk({"content": "x"}), chunk({}, "stop")], done=False)[1] == Finish("stop")  # [DONE] is not required


def test_an_empty_stream_is_an_empty_reply():
    # llama-cpp-python's server fails after its 200 (a prompt over n_ctx, a streamed automatic
    # tool choice) by closing the stream without a single event.
    for done in (False, True):
        with pytest.raises(ApiError) as info:
            run([], done=done)
        assert info.value.code == "upstream_error" and "sent an empty reply" in info.value.message


# What llama-cpp-python 0.3.36's server (`python -m llama_cpp.server --chat_format
# chatml-function-calling`) streams for a named tool choice: every piece repeats the call's id and
# name, also as the legacy `function_call`; nulls where a field is unused; no usage at all.
LLAMA_CPP_PYTHON_TOOL_STREAM = [
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{
        "index": 0, "finish_reason": None, "logprobs": None,
        "delta": {"role": "assistant", "content": None, "function_call": None, "tool_calls": None}}]},
    *({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{
        "index": 0, "finish_reason": None, "logprobs": None,
        "delta": {"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": part},
                  "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-1", "type": "function",
                                  "function": {"name": "get_weather", "arguments": part}}]}}]}
      for part in ['{"', "city", '":', ' "', "Paris", '"}', ""]),
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "logprobs": None,
        "delta": {"role": None, "content": None, "function_call": None, "tool_calls": None}}]},
]


def test_llama_cpp_python_tool_call_stream():
    events, finish, tr = run(LLAMA_CPP_PYTHON_TOOL_STREAM)
    collector = Collector()
    for event in [*events, finish]:
        collector.add(event)
    done = collector.result()
    assert [(c.id, c.name, json.loads(c.arguments)) for c in done.tool_calls] == [
        ("call__0_get_weather_cmpl-1", "get_weather", {"city": "Paris"})]
    assert done.text == "" and finish == Finish("tool_calls") and tr.usage == {}
    assert [type(e).__name__ for e in events].count("ToolCallStart") == 1


# What llama.cpp's server (`llama-server --jinja`, through xllamacpp 2026.10) streams with
# `stream_options.include_usage`: a first piece with the role and a null content, one token a
# piece, the finish in an empty delta, then the usage in a chunk with no choices, beside the
# server's own `timings`.
LLAMACPP_STREAM = [
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}],
     "created": 1, "id": "chatcmpl-1", "model": "smollm2", "system_fingerprint": "b0-unknown",
     "object": "chat.completion.chunk"},
    *({"choices": [{"finish_reason": None, "index": 0, "delta": {"content": piece}}], "created": 1, "id": "chatcmpl-1",
       "model": "smollm2", "system_fingerprint": "b0-unknown", "object": "chat.completion.chunk"}
      for piece in ["Hello", " there", "!", " I", "'m", " here", " to", " help"]),
    {"choices": [{"finish_reason": "length", "index": 0, "delta": {}}], "created": 1, "id": "chatcmpl-1",
     "model": "smollm2", "system_fingerprint": "b0-unknown", "object": "chat.completion.chunk"},
    {"choices": [], "created": 1, "id": "chatcmpl-1", "model": "smollm2", "system_fingerprint": "b0-unknown",
     "object": "chat.completion.chunk",
     "usage": {"completion_tokens": 8, "prompt_tokens": 33, "total_tokens": 41, "prompt_tokens_details": {"cached_tokens": 32}},
     "timings": {"cache_n": 32, "prompt_n": 1, "prompt_ms": 48.6, "predicted_n": 8, "predicted_ms": 798.0}},
]


def test_llamacpp_server_stream():
    events, finish, tr = run(LLAMACPP_STREAM)
    assert "".join(e.text for e in events) == "Hello there! I'm here to help" and finish == Finish("length")
    assert tr.usage == {"input": 33, "output": 8, "cached": 32}
    # Killed mid-reply: the stream just stops.
    with pytest.raises(ApiError) as info:
        run(LLAMACPP_STREAM[:4], done=False)
    assert info.value.code == "upstream_error" and "before the reply was complete" in info.value.message


def test_llamacpp_server_errors():
    over = {"error": {"code": 400, "message": "request (9031 tokens) exceeds the available context size (8192 tokens), try "
                      "increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": 9031, "n_ctx": 8192}}
    err = upstream_error(400, json.dumps(over), model_id="smol")
    assert (err.status, err.code) == (400, "context_length_exceeded") and "9031 tokens" in err.message
    # Tools sent to a server started without --jinja: its 500, the operator's to fix.
    no_jinja = {"error": {"code": 500, "message": "tools param requires --jinja flag", "type": "server_error"}}
    err = upstream_error(500, json.dumps(no_jinja), model_id="smol")
    assert (err.status, err.code) == (502, "upstream_error")


def test_malformed_streams():
    for bad, words in [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"choices": {"0": 1}}), "'choices'"),
        (json.dumps(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})), "without a name"),
    ]:
        with pytest.raises(ApiError) as info:
            run([bad])
        assert info.value.status == 502 and "malformed" in info.value.message and words in info.value.message


def test_a_failure_keeps_the_events_before_it():
    translator = ChunkTranslator(model_id="front")
    reader = StreamReader(translator)
    events = reader.feed(b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\ndata: garbage\n\n')
    assert events == [TextDelta("ok")]
    with pytest.raises(ApiError):
        reader.raise_error()


def test_interleaved_tool_calls_are_reported_not_garbled():
    with pytest.raises(ApiError) as info:
        run([
            chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}),
            chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}),
        ])
    assert "interleaved" in info.value.message


def test_error_object_inside_the_stream():
    body = {"error": {"object": "error", "message": "This model's maximum context length is 4096 tokens.", "type": "BadRequestError",
                      "code": 400}}
    with pytest.raises(ApiError) as info:
        run([body])
    assert (info.value.status, info.value.code) == (400, "context_length_exceeded")
    with pytest.raises(ApiError) as info:
        run([chunk({"content": "x"}), {"error": {"message": "CUDA out of memory", "type": "server_error"}}])
    assert (info.value.status, info.value.code) == (502, "upstream_error") and "CUDA out of memory" in info.value.message


def test_output_estimate_grows_and_usage_in_every_chunk_wins():
    _, _, tr = run([chunk({"content": " hello"}), chunk({"content": " world"}), chunk({}, "stop")])
    assert tr.output_estimate == 2 and tr.usage == {}


@pytest.mark.parametrize(
    "piece, tokens",
    [
        (" photosynthesis", 1), (" lighthouse", 1), ("Hello", 1), ("\n\n", 1), ("        ", 1), (",", 1), ("'m", 1),
        (" ème", 1),
        # pieces of servers that batch several tokens: about 4 ASCII characters a token
        (" The keeper climbed the stairs", 7), ("你好世界", 4), ("x" * 40, 10),
    ],
)
def test_output_estimate_counts_a_word_as_one_token(piece, tokens):
    """llama-cpp-python's server streams one token a piece and never reports usage: a word is one
    piece, one token, however long (300 of 300 tokens counted exactly on SmolLM2's English)."""
    assert estimate_output_tokens(piece) == tokens
    _, _, tr = run([chunk({"content": "a"}, usage={"prompt_tokens": 5, "completion_tokens": 1}),
                    chunk({}, "stop", usage={"prompt_tokens": 5, "completion_tokens": 1})])
    assert tr.usage == {"input": 5, "output": 1}


def test_non_streamed_completion_from_an_upstream_that_ignored_stream():
    translator = ChunkTranslator(model_id="front")
    reader = StreamReader(translator)
    body = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "reasoning_content": "hmm",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}], "usage": USAGE}
    events = reader.feed_completion(json.dumps(body).encode())
    more, finish = reader.end()
    assert events + more == [ThinkingDelta("hmm"), ToolCallStart(0, "c", "f"), ToolCallDelta(0, "{}"), ToolCallEnd(0)]
    assert finish == Finish("tool_calls") and translator.usage["input"] == 12


# ===================================================================================== errors


@pytest.mark.parametrize(
    "status, body, headers, kind, code, words",
    [
        (400, {"object": "error", "message": "This model's maximum context length is 32768 tokens. However, you requested 40000 tokens.",
               "type": "BadRequestError", "code": 400}, {}, "invalid_request", "context_length_exceeded", "maximum context length is 32768"),
        (400, {"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                         "type": "exceed_context_size_error"}}, {}, "invalid_request", "context_length_exceeded", "context size"),
        (413, "Payload Too Large", {}, "invalid_request", "context_length_exceeded", "does not fit"),
        (400, {"error": {"message": "temperature must be <= 2", "type": "invalid_request_error"}}, {}, "invalid_request",
         "invalid_parameter", "temperature must be <= 2"),
        (422, {"detail": [{"loc": ["body", "top_p"], "msg": "bad"}]}, {}, "invalid_request", "invalid_parameter", "top_p"),
        (401, {"error": {"message": "Invalid key sk-very-secret"}}, {}, "upstream", "upstream_error", "credentials"),
        (403, "forbidden", {}, "upstream", "upstream_error", "api_key"),
        (404, {"error": {"message": "The model `x` does not exist."}}, {}, "upstream", "upstream_error", "upstream_model"),
        (429, {"error": {"message": "slow down"}}, {"retry-after": "7"}, "overloaded", "overloaded", "busy"),
        (503, "", {}, "overloaded", "overloaded", "busy"),
        (500, "Traceback (most recent call last): secret internals", {}, "upstream", "upstream_error", "failed (HTTP 500)"),
        (500, {"error": "prompt is too long for n_ctx"}, {}, "invalid_request", "context_length_exceeded", "n_ctx"),
        (408, "", {}, "upstream", "upstream_error", "HTTP 408"),
    ],
)
def test_upstream_errors(status, body, headers, kind, code, words):
    raw = body if isinstance(body, str) else json.dumps(body)
    err = upstream_error(status, raw.encode(), headers, model_id="front", secrets=("sk-very-secret",))
    assert (err.kind, err.code) == (kind, code)
    assert words in err.message and "sk-very-secret" not in err.message and "Traceback" not in err.message
    if kind == "overloaded":
        assert err.status == 503 and err.headers["Retry-After"] == headers.get("retry-after", "2")
    if kind == "upstream":
        assert err.status == 502


# ===================================================================================== property

NAMES = st.sampled_from(["Bash", "get_weather", "read_file"])
ARGS = st.dictionaries(st.sampled_from(["command", "city", "path", "n"]), st.text(max_size=12) | st.integers(), max_size=3)


def _pieces(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@st.composite
def tool_call_streams(draw):
    """One upstream reply (text, then tool calls) and a random way a server could chunk it."""
    calls = draw(st.lists(st.tuples(NAMES, ARGS), min_size=1, max_size=3))
    lead = draw(st.text(max_size=10))
    with_index = draw(st.booleans())
    name_alone = draw(st.booleans())  # the first chunk has the name and empty arguments (vLLM), or a first piece
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": p}) for p in _pieces(lead, draw(st.lists(st.integers(0, 50), max_size=3)))]
    expected = []
    for i, (name, args) in enumerate(calls):
        text = json.dumps(args, ensure_ascii=False)
        parts = _pieces(text, draw(st.lists(st.integers(0, 200), max_size=6))) or [""]
        call_id = f"call_{i}x{draw(st.integers(0, 999))}"
        expected.append((call_id, name, text))
        first = [""] + parts if name_alone else parts
        for k, part in enumerate(first):
            entry = {"function": {"arguments": part}}
            if with_index:
                entry["index"] = i
            if k == 0:
                entry.update(id=call_id, type="function")
                entry["function"]["name"] = name
            chunks.append(chunk({"tool_calls": [entry]}))
    chunks.append(chunk({}, "tool_calls"))
    chunks.append(chunk(usage=USAGE))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    raw = "".join(f"data: {json.dumps(c, ensure_ascii=False)}{newline}{newline}" for c in chunks) + "data: [DONE]\n\n"
    data = raw.encode()
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=12))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)], lead, expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tool_call_streams())
def test_any_chunking_of_a_tool_call_stream_gives_the_same_result(case):
    pieces, lead, expected = case
    translator = ChunkTranslator(model_id="front")
    reader = StreamReader(translator)
    collector = Collector()
    kinds = []
    for piece in pieces:
        for event in reader.feed(piece):
            collector.add(event)
            kinds.append(type(event).__name__)
        reader.raise_error()
    more, finish = reader.end()
    for event in more:
        collector.add(event)
        kinds.append(type(event).__name__)
    collector.add(finish)
    done = collector.result()
    assert done.text == lead
    assert [(c.id, c.name, c.arguments) for c in done.tool_calls] == expected
    assert done.finish == Finish("tool_calls")
    assert translator.usage == {"input": 12, "output": 3, "cached": 8}
    # Calls strictly one after another: Start, its deltas, End, then the next.
    shape = re.sub(r"(ToolCallDelta,)+", "D,", re.sub(r"(TextDelta,)+", "T,", ",".join(kinds) + ","))
    assert shape == ("T," if lead else "") + "ToolCallStart,D,ToolCallEnd," * len(expected)


# ===================================================================================== the engine, usage without a report


def test_an_upstream_that_reports_no_usage_is_billed_its_pieces_never_beyond_max_tokens():
    """llama-cpp-python's server ignores `stream_options` and streams no usage: the output is
    counted from the pieces (one token each), and never beyond the `max_tokens` sent."""
    from longcat.canonical import Usage

    def frames(words: list[str], finish: str) -> bytes:
        chunks = [chunk({"role": "assistant"}), *(chunk({"content": w}) for w in words), chunk({}, finish)]
        return b"".join(f"data: {json.dumps(c)}\r\n\r\n".encode() for c in chunks) + b"data: [DONE]\r\n\r\n"

    sent = []

    def handler(path: str, body: dict) -> Reply:
        sent.append(body)
        words = [" photosynthesis", " converts", " light", "."] * 3
        if body["model"] == "batching":  # several tokens a piece: estimated at ~4 characters a token
            return Reply.sse(frames([" ".join(words)] * 2, "length"))
        return Reply.sse(frames(words[: body["max_tokens"]], "length" if body["max_tokens"] < 12 else "stop"))

    async def go(max_tokens: int, upstream_model: str = "llama") -> tuple[CallContext, list]:
        async with tiny_server(handler) as root:
            engine = OpenAICompatEngine(model(base_url=root + "/v1", upstream_model=upstream_model))
            await engine.start()
            ctx = CallContext("r")
            request = req(user(TextBlock("Explain photosynthesis.")), max_tokens=max_tokens)
            await engine.measure(request, ctx)
            events = [e async for e in engine.stream(request, ctx)]
            await engine.close()
        return ctx, events

    ctx, events = asyncio.run(go(12))
    assert sent[-1]["stream_options"] == {"include_usage": True}  # asked for, not honoured
    assert ctx.usage.output_tokens == 12 and events[-2] == Usage(ctx.usage.input_tokens, 12, 0)
    assert events[-1] == Finish("stop")
    ctx, events = asyncio.run(go(5))
    assert ctx.usage.output_tokens == 5 and events[-1] == Finish("length")
    assert ctx.usage.input_tokens == estimate_prompt_tokens(req(user(TextBlock("Explain photosynthesis."))))
    ctx, events = asyncio.run(go(7, "batching"))  # an estimate of ~30 tokens, but 7 were asked for
    assert ctx.usage.output_tokens == 7 and events[-1] == Finish("length")


def test_tokenize_llama_cpp_python_counts_with_a_one_token_completion():
    """llama-cpp-python's server cannot count a chat (its /extras/tokenize counts raw text, without
    the chat template): the count is `usage.prompt_tokens` of the same request, cut to one token."""
    asked = []

    def handler(path: str, body: dict) -> Reply:
        asked.append((path, body))
        if "HUGE" in json.dumps(body["messages"]):  # what the server says when the prompt is over n_ctx
            return Reply.json(status=400, value={"error": {
                "message": "This model's maximum context length is 8192 tokens, however you requested 9001 tokens "
                           "(9000 in the messages, 1 in the completion). Please reduce the length of the messages or completion.",
                "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})
        if "BROKEN" in json.dumps(body["messages"]):
            return Reply.json({"error": {"message": "", "type": "internal_server_error"}}, 500)
        return Reply.json({"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "length",
                              "message": {"role": "assistant", "content": "A"}}],
                              "usage": {"prompt_tokens": 23, "completion_tokens": 1, "total_tokens": 24}})

    engine = OpenAICompatEngine(model(base_url="http://llama/v1", tokenize="llama_cpp_python"))
    assert engine.options.tokenize == "llama_cpp_python" and "one-token completion" in engine.describe()["tokenizer"]

    async def measure(text: str, **kw) -> CallContext:
        async with tiny_server(handler) as root:
            engine = OpenAICompatEngine(model(base_url=root + "/v1", tokenize="llama_cpp_python"))
            await engine.start()
            ctx = CallContext("r")
            try:
                await engine.measure(req(user(TextBlock(text)), max_tokens=50, temperature=0.3, **kw), ctx)
            finally:
                await engine.close()
        return ctx

    tools = [ToolSpec("get_weather", "Weather", {"type": "object"})]
    ctx = asyncio.run(measure("What is the weather in Paris?", tools=tools, tool_choice=ToolChoice("tool", "get_weather")))
    assert (ctx.prompt_tokens, ctx.prompt_cache) == (23, True)
    path, body = asked[-1]
    assert path == "/v1/chat/completions" and body["stream"] is False and "stream_options" not in body
    assert body["max_tokens"] == 1 and body["messages"] == [{"role": "user", "content": "What is the weather in Paris?"}]
    # The same prompt as the real request: the tools and the choice shape it on this server.
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}

    with pytest.raises(ApiError) as info:  # the server counted, and it does not fit: its 400, passed on
        asyncio.run(measure("HUGE"))
    assert info.value.code == "context_length_exceeded" and "8192" in info.value.message

    ctx = asyncio.run(measure("BROKEN"))  # a server that cannot count: the estimate
    assert ctx.prompt_cache is False and ctx.prompt_tokens == estimate_prompt_tokens(req(user(TextBlock("BROKEN"))))
