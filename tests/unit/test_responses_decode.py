"""Responses API request bodies -> canonical requests (pure: no server)."""

from __future__ import annotations

import json

import pytest

from longcat.canonical import ApiError, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock
from longcat.gateway.signing import Signer
from longcat.protocols.openai_responses import decode, qualified_name
from tests.support.server import shared_file

SIGNER = Signer(b"test-secret")

FN = {
    "type": "function",
    "name": "exec_command",
    "description": "Run a command",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
    "strict": False,
}


def body(**fields):
    return {"model": "m", "input": "hi", **fields}


def test_string_input_is_one_user_message():
    req = decode(body(input="hello"))
    assert [(m.role, m.text()) for m in req.chat.messages] == [("user", "hello")]
    assert req.items == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}]
    assert req.store is True and req.chat.stream is False


def test_instructions_and_leading_system_developer_messages_are_system():
    req = decode(
        body(
            instructions="Be brief.",
            input=[
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [{"type": "input_text", "text": "q"}]},
                {"role": "developer", "content": "later"},
            ],
        )
    )
    assert [b.text for b in req.chat.system] == ["Be brief.", "dev", "sys"]
    assert [(m.role, m.text()) for m in req.chat.messages] == [("user", "q"), ("system", "later")]


def test_tool_round_trip_items_become_one_assistant_turn_and_its_results():
    req = decode(
        body(
            input=[
                {"role": "user", "content": "run two"},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "plan"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Running."}]},
                {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": '{"cmd": "ls"}'},
                {"type": "function_call", "call_id": "c2", "name": "exec_command", "arguments": {"cmd": "pwd"}},
                {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "/w"}]},
            ]
        )
    )
    user, assistant, results = req.chat.messages
    assert user.text() == "run two"
    assert isinstance(assistant.content[0], ThinkingBlock) and assistant.content[0].text == "plan"
    assert assistant.content[1] == TextBlock("Running.")
    assert assistant.content[2] == ToolUseBlock("c1", "exec_command", '{"cmd": "ls"}')
    assert json.loads(assistant.content[3].arguments) == {"cmd": "pwd"}
    assert results.role == "user" and all(isinstance(b, ToolResultBlock) for b in results.content)
    assert [(b.tool_use_id, b.text()) for b in results.content] == [("c1", "a.txt"), ("c2", "/w")]


def test_reasoning_replayed_from_our_encrypted_content():
    forged = SIGNER.seal("reasoning", "someone else's thought", 2)
    req = decode(
        body(
            input=[
                {"role": "user", "content": "q"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": SIGNER.seal("reasoning", "deep thought", 1)},
                {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA-someone-elses-blob"},
                {"type": "reasoning", "id": "rs_3", "summary": [], "encrypted_content": forged},
                {"type": "reasoning", "id": "rs_4", "content": [{"type": "reasoning_text", "text": "unsealed"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
            ]
        ),
        open_seal=lambda v: SIGNER.open("reasoning", v, 1),
    )
    assistant = req.chat.messages[1]
    # Only the seal made for this account verifies; plain text is carried, unverified.
    assert assistant.content == [ThinkingBlock("deep thought", verified=True), ThinkingBlock("unsealed"), TextBlock("a")]


def test_unknown_item_types_are_skipped_and_item_references_resolved():
    req = decode(
        body(
            input=[
                {"type": "message", "id": "msg_a", "role": "user", "content": "first"},
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                {"type": "compaction", "encrypted_content": "x"},
                {"type": "item_reference", "id": "msg_a"},
            ]
        )
    )
    assert [m.text() for m in req.chat.messages] == ["first", "first"]


def test_history_comes_first_and_is_kept_in_items():
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "run"}]},
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "Bash", "arguments": "{}", "status": "completed"},
    ]
    req = decode(
        body(input=[{"type": "function_call_output", "call_id": "c1", "output": "ok"}], previous_response_id="resp_1"),
        history,
    )
    assert [m.role for m in req.chat.messages] == ["user", "assistant", "user"]
    assert req.items[:2] == history and req.previous_response_id == "resp_1"


def test_function_tools_flat_and_nested_others_skipped_namespaces_qualified():
    req = decode(
        body(
            tools=[
                FN,
                {"type": "function", "function": {"name": "chat_form", "parameters": {"type": "object"}}},
                {"type": "web_search", "external_web_access": False},
                {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
                {"type": "local_shell"},
                {"type": "mcp", "server_label": "x"},
                {
                    "type": "namespace",
                    "name": "agents",
                    "description": "sub-agents",
                    "tools": [
                        {"type": "function", "name": "spawn", "parameters": {"type": "object"}},
                        {"type": "custom", "name": "freeform"},
                    ],
                },
            ]
        )
    )
    assert [t.name for t in req.chat.tools] == ["exec_command", "chat_form", qualified_name("agents", "spawn")]
    assert req.chat.tools[0].parameters == FN["parameters"]
    assert req.namespaced == {"agents__spawn": ("agents", "spawn")}
    assert [t["type"] for t in req.tools] == ["function", "function", "namespace"]


def test_replayed_namespaced_call_uses_the_qualified_name():
    req = decode(
        body(
            input=[
                {"role": "user", "content": "go"},
                {"type": "function_call", "call_id": "c", "name": "spawn", "namespace": "agents", "arguments": "{}"},
            ]
        )
    )
    assert req.chat.messages[1].content[0].name == "agents__spawn"


@pytest.mark.parametrize(
    ("choice", "mode", "name", "echo"),
    [
        (None, "auto", None, "auto"),
        ("none", "none", None, "none"),
        ("required", "required", None, "required"),
        ({"type": "function", "name": "exec_command"}, "tool", "exec_command", {"type": "function", "name": "exec_command"}),
        ({"type": "allowed_tools", "mode": "required", "tools": []}, "required", None, "required"),
        ({"type": "web_search"}, "auto", None, "auto"),
    ],
)
def test_tool_choice(choice, mode, name, echo):
    req = decode(body(tools=[FN], tool_choice=choice, parallel_tool_calls=False))
    assert (req.chat.tool_choice.mode, req.chat.tool_choice.name, req.tool_choice) == (mode, name, echo)
    assert req.chat.tool_choice.parallel is False


@pytest.mark.parametrize(
    ("fields", "thinking"),
    [
        ({}, None),
        ({"reasoning": {"effort": "none"}}, False),
        ({"reasoning": {"effort": "minimal", "summary": "auto"}}, False),
        ({"reasoning": {"effort": "high"}}, True),
        ({"reasoning": {"summary": "auto"}}, True),
        ({"reasoning": {"summary": None}}, None),
        ({"thinking": {"type": "disabled"}, "reasoning": {"effort": "high"}}, False),
    ],
)
def test_reasoning_is_the_thinking_switch(fields, thinking):
    assert decode(body(**fields)).chat.thinking is thinking


def test_sampling_and_format_fields():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    req = decode(
        body(
            max_output_tokens=50,
            temperature=0.2,
            top_p=0.9,
            text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}},
            metadata={"k": "v"},
            prompt_cache_key="pk",
            include=["reasoning.encrypted_content"],
            store=False,
            stream=True,
            user="u1",
            client_metadata={"anything": 1},
        )
    )
    chat = req.chat
    assert (chat.max_tokens, chat.temperature, chat.top_p, chat.stream) == (50, 0.2, 0.9, True)
    assert chat.response_format.type == "json_schema" and chat.response_format.schema == schema
    assert req.text["format"] == {"type": "json_schema", "name": "thing", "description": None, "schema": schema, "strict": True}
    # The specification requires `description` and `strict` in the echo: null and false when not sent.
    bare = decode(body(text={"format": {"type": "json_schema", "schema": schema}})).text["format"]
    assert (bare["name"], bare["description"], bare["strict"]) == ("response", None, False)
    assert req.metadata == {"k": "v"} and req.store is False and req.include == ["reasoning.encrypted_content"]
    assert chat.extras["prompt_cache_key"] == "pk"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": None}, "model"),
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": ["not an object"]}, "input[0]"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "function_call", "name": "x"}]}, "input[0]"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"type": "item_reference", "id": "nope"}]}, "input[0]"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tools": ["x"]}, "tools[0]"),
        ({"tool_choice": {"type": "function", "name": "missing"}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_tool_calls": 0}, "max_tool_calls"),
        ({"max_tool_calls": "2"}, "max_tool_calls"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": -1}, "top_p"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format.schema"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"include": [1]}, "include"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"truncation": "sometimes"}, "truncation"),
        ({"reasoning": {"effort": 3}}, "reasoning.effort"),
        ({"thinking": {"type": "maybe"}}, "thinking.type"),
    ],
)
def test_bad_input_names_the_field(fields, param):
    with pytest.raises(ApiError) as info:
        decode(body(**fields))
    err = info.value
    assert err.status == 400 and err.param == param, (err.param, err.message)
    assert err.message


def test_codex_captures_decode():
    for line in shared_file("fixtures", "clients", "codex.jsonl").read_text().splitlines():
        record = json.loads(line)
        req = decode(record["body"])
        # The function tools, plus the namespace's; web_search is skipped.
        names = [t.name for t in req.chat.tools]
        assert "exec_command" in names and any(n.startswith("multi_agent_v1__") for n in names)
        assert req.store is False and req.chat.stream is True and req.chat.thinking is True
        assert len(req.chat.system) == 3  # the two developer messages (one holds two parts)
        if record["body"]["input"][-1]["type"] == "function_call_output":
            assert [m.role for m in req.chat.messages] == ["user", "user", "assistant", "user"]
            assert isinstance(req.chat.messages[-1].content[0], ToolResultBlock)
