"""Anthropic Messages request bodies -> canonical `ChatRequest`."""

from __future__ import annotations

import json

import pytest

from longcat.canonical import (
    ApiError,
    ImageBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from longcat.gateway.signing import Signer
from longcat.protocols.anthropic import decode
from tests.support.server import shared_file

SIGNER = Signer(b"unit-test-key")


def body(**fields):
    out = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    out.update(fields)
    return out


def dec(b, **kw):
    return decode(b, verify_thinking=SIGNER.verify_thinking, **kw)


def bad(b, *words, **kw):
    with pytest.raises(ApiError) as info:
        dec(b, **kw)
    err = info.value
    assert err.status == 400 and err.kind == "invalid_request"
    for word in words:
        assert word in err.message, err.message
    return err


def test_minimal():
    req = dec(body())
    assert req.model == "m" and req.max_tokens == 100 and not req.stream
    assert req.messages[0].role == "user" and req.messages[0].content == [TextBlock("Hi")]


def test_max_tokens_required_except_for_counting():
    b = body()
    del b["max_tokens"]
    bad(b, "max_tokens")
    assert dec(b, count_only=True).max_tokens is None
    bad(body(max_tokens=0), "max_tokens")
    bad(body(max_tokens="10"), "max_tokens", "integer")


def test_model_and_messages_required():
    bad({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model")
    bad(body(messages=[]), "messages")
    bad(body(messages="hi"), "messages")
    bad(body(messages=[{"role": "tool", "content": "x"}]), "messages[0].role")


def test_system_string_or_blocks_with_cache_control():
    assert dec(body(system="Be brief.")).system == [TextBlock("Be brief.")]
    blocks = [{"type": "text", "text": "A"}, {"type": "text", "text": "B", "cache_control": {"type": "ephemeral"}}]
    req = dec(body(system=blocks))
    assert req.system == [TextBlock("A"), TextBlock("B")]
    bad(body(system=[{"type": "image"}]), "system[0].type")
    bad(body(system=5), "system")


def test_system_role_inside_messages():
    msgs = [
        {"role": "system", "content": "leading"},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "mid", "cache_control": {"type": "ephemeral"}}]},
    ]
    req = dec(body(system="top", messages=msgs))
    assert [b.text for b in req.system] == ["top", "leading"]
    assert [m.role for m in req.messages] == ["user", "system"]
    assert req.messages[1].content == [TextBlock("mid")]


def test_images():
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
    url = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    req = dec(body(messages=[{"role": "user", "content": [img, url, {"type": "text", "text": "what?"}]}]))
    assert req.has_images()
    assert req.messages[0].content[:2] == [ImageBlock("image/png", "iVBOR"), ImageBlock(url="https://example.com/cat.png")]
    bad(body(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]), "source.type")
    wrong = {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": "x"}}
    bad(body(messages=[{"role": "user", "content": [wrong]}]), "media_type")


def test_tool_use_and_results():
    msgs = [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Running ls."},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
            {"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {"command": "pwd"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a\nb", "cache_control": {"type": "ephemeral"}},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "denied"}]},
            {"type": "tool_result", "tool_use_id": "toolu_3"},
        ]},
    ]
    req = dec(body(messages=msgs))
    call = req.messages[1].content[1]
    assert call == ToolUseBlock("toolu_1", "Bash", '{"command": "ls"}')
    results = req.messages[2].content
    assert results[0] == ToolResultBlock("toolu_1", [TextBlock("a\nb")])
    assert results[1].is_error and results[1].text() == "denied"
    assert results[2].content == []
    bad(body(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "f", "input": "{}"}]}]), "input")
    bad(body(messages=[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]), "tool_use_id")


def test_tool_result_with_image_reaches_has_images():
    result = {"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "x"}}]}
    assert dec(body(messages=[{"role": "user", "content": [result]}])).has_images()


def test_thinking_signed_by_the_platform_is_accepted():
    text = "Let me think."
    block = {"type": "thinking", "thinking": text, "signature": SIGNER.sign_thinking(text)}
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": [block, {"type": "text", "text": "A"}]}]
    req = dec(body(messages=msgs))
    assert req.messages[1].content[0] == ThinkingBlock(text, signature=block["signature"], verified=True)


@pytest.mark.parametrize(
    "block",
    [
        {"type": "thinking", "thinking": "Changed.", "signature": Signer(b"unit-test-key").sign_thinking("Original.")},
        {"type": "thinking", "thinking": "x", "signature": Signer(b"another-key").sign_thinking("x")},
        {"type": "thinking", "thinking": "x", "signature": "EqQBCkgIARABGAIiQL"},
        {"type": "thinking", "thinking": "x"},
    ],
)
def test_thinking_with_a_bad_or_missing_signature_is_a_clear_400(block):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": [block]}]
    err = bad(body(messages=msgs), "signature")
    assert err.param == "messages[1].content[0].signature"


def test_redacted_thinking_is_accepted_and_carries_no_text():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "opaque"}]}]
    block = dec(body(messages=msgs)).messages[1].content[0]
    assert isinstance(block, ThinkingBlock) and block.redacted and block.text == ""


def test_documents_plain_text_only():
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "The text."}}
    assert dec(body(messages=[{"role": "user", "content": [doc]}])).messages[0].content == [TextBlock("The text.")]
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "x"}}
    bad(body(messages=[{"role": "user", "content": [pdf]}]), "plain-text documents")


def test_unknown_block_type_names_the_supported_ones():
    bad(body(messages=[{"role": "user", "content": [{"type": "video"}]}]), "'video'", "tool_result")


def test_tools_and_tool_choice():
    tools = [
        {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
         "cache_control": {"type": "ephemeral"}},
        {"type": "web_search_20250305", "name": "web_search"},
        {"type": "custom", "name": "other", "input_schema": {"type": "object"}},
    ]
    req = dec(body(tools=tools))
    assert [t.name for t in req.tools] == ["get_weather", "other"]
    assert req.tools[0].parameters["properties"]["city"] == {"type": "string"}
    assert req.tool_choice.mode == "auto"
    assert dec(body(tools=tools, tool_choice={"type": "any"})).tool_choice.mode == "required"
    assert dec(body(tools=tools, tool_choice={"type": "none"})).tool_choice.mode == "none"
    choice = dec(body(tools=tools, tool_choice={"type": "tool", "name": "other", "disable_parallel_tool_use": True})).tool_choice
    assert (choice.mode, choice.name, choice.parallel) == ("tool", "other", False)
    bad(body(tools=tools, tool_choice={"type": "tool", "name": "nope"}), "tool_choice.name")
    bad(body(tools=tools, tool_choice={"type": "sometimes"}), "tool_choice.type")
    bad(body(tools=tools, tool_choice="auto"), "tool_choice")
    bad(body(tools=[{"description": "no name"}]), "tools[0].name")


def test_sampling_stop_and_metadata():
    req = dec(body(temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["END", ""], metadata={"user_id": "u1"}, stream=True))
    assert (req.temperature, req.top_p, req.top_k, req.stop, req.stream) == (0.5, 0.9, 40, ["END"], True)
    assert req.extras["user_id"] == "u1"
    bad(body(temperature=3), "temperature")
    bad(body(top_p=1.5), "top_p")
    bad(body(stop_sequences=5), "stop_sequences")


@pytest.mark.parametrize(
    ("thinking", "expected"),
    [({"type": "enabled", "budget_tokens": 2048}, True), ({"type": "disabled"}, False), ({"type": "adaptive"}, None), (None, None)],
)
def test_thinking_modes(thinking, expected):
    assert dec(body(thinking=thinking)).thinking is expected


def test_thinking_bad_values():
    bad(body(thinking={"type": "sometimes"}), "thinking.type")
    bad(body(thinking="on"), "thinking")
    bad(body(thinking={"type": "enabled", "budget_tokens": "lots"}), "budget_tokens")


def test_structured_output():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = dec(body(output_config={"effort": "high", "format": {"type": "json_schema", "schema": schema}}))
    assert req.response_format.type == "json_schema" and req.response_format.schema == schema
    assert dec(body(output_config={"effort": "high"})).response_format.type == "text"
    bad(body(output_format={"type": "xml"}), "output_config.format")


def test_unknown_fields_are_ignored():
    req = dec(body(context_management={"edits": []}, service_tier="auto", container=None, anything={"x": 1}))
    assert req.model == "m"


def test_wrong_types_name_the_field():
    bad(body(messages=[{"role": "user", "content": 5}]), "messages[0].content")
    bad(body(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages[0].content[0].text")
    bad(body(messages=["hi"]), "messages[0]")


def test_claude_code_capture_decodes():
    """Every request Claude Code sent in the recorded session decodes, system entries and all."""
    lines = shared_file("fixtures", "clients", "claude-code.jsonl").read_text().splitlines()
    bodies = [json.loads(line)["body"] for line in lines if json.loads(line).get("body")]
    assert len(bodies) == 2
    for b in bodies:
        req = dec(b)
        assert req.stream and req.thinking is None and len(req.tools) == 24
        assert any(m.role == "system" for m in req.messages)
        assert len(req.system) == 3
    second = dec(bodies[1])
    assert isinstance(second.messages[-2].content[0], ToolUseBlock)
    result = second.messages[-1].content[0]
    assert isinstance(result, ToolResultBlock) and result.text() == "recorder-tool-ran"
