"""The request limits and the hostile-input fixes, at the level of the pure functions (the same
cases run against a real server in tests/hostile/)."""

from __future__ import annotations

import json

import pytest

from longcat.canonical import ApiError, Limits, shown
from longcat.config import ModelConfig, load_settings
from longcat.engines.catalog import Catalog
from longcat.gateway.actions import row_id
from longcat.protocols import anthropic, openai_chat, openai_responses
from longcat.protocols.envelope import error_body
from longcat.protocols.fields import count_blocks, parse_json_object


def nested(depth: int) -> bytes:
    """An object whose deepest value sits `depth` levels down (the object itself is level 1)."""
    return b'{"x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_depth_is_exact_and_settable():
    for limit in (4, 16, 128):
        assert parse_json_object(nested(limit), limit)
        with pytest.raises(ApiError, match=f"nests deeper than {limit} levels"):
            parse_json_object(nested(limit + 1), limit)
    # Objects count like arrays, and a bomb past orjson's own limit gets the same answer.
    with pytest.raises(ApiError, match="nests deeper than 128"):
        parse_json_object(b'{"a":' * 129 + b"1" + b"}" * 129)
    with pytest.raises(ApiError, match="nests deeper than 128"):
        parse_json_object(b"[" * 200_000 + b"]" * 200_000)


def test_a_huge_integer_gets_a_message_for_people():
    """Regression: the message was Python's own, naming sys.set_int_max_str_digits()."""
    with pytest.raises(ApiError) as caught:
        parse_json_object(b'{"seed": ' + b"9" * 5000 + b"}")
    assert caught.value.message == "The request body holds a number with too many digits."


def test_lone_surrogates_are_still_replaced():
    body = parse_json_object(b'{"a\\ud800": ["x\\udc00y", {"k": "\\ud83d\\ude00"}]}')
    assert body == {"a\ufffd": ["x\ufffdy", {"k": "\U0001f600"}]}


def test_blocks_are_counted_in_messages_items_and_tool_results():
    items = [
        {"role": "user", "content": [{"type": "text", "text": "a"}] * 3},
        {"role": "user", "content": [{"type": "tool_result", "content": [{"type": "text"}] * 4}]},
        {"type": "function_call_output", "output": [{"type": "input_text"}] * 2},
        {"role": "user", "content": "text is no block list"},
        "junk",
    ]
    assert count_blocks(items, 100) == 3 + 1 + 4 + 2
    # It stops as soon as the limit is passed: a million blocks cost one len().
    assert count_blocks([{"content": [{}] * 1_000_000}], 10) == 1_000_000


def test_decoders_refuse_past_each_limit():
    limits = Limits(messages=3, tools=2, blocks=5)
    msg = {"role": "user", "content": [{"type": "text", "text": "x"}] * 3}
    verify = lambda *a, **k: False  # noqa: E731
    cases = [
        (lambda b: openai_chat.decode(b, limits=limits), {"model": "m", "messages": [msg, msg]}),
        (lambda b: anthropic.decode(b, verify_thinking=verify, limits=limits), {"model": "m", "max_tokens": 5, "messages": [msg, msg]}),
        (lambda b: openai_responses.decode(b, limits=limits),
         {"model": "m", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}] * 3}] * 2}),
    ]
    for decode, body in cases:
        with pytest.raises(ApiError, match="at most 5 content blocks"):
            decode(body)
        with pytest.raises(ApiError, match="at most 3 messages"):
            decode({**body, "messages": [{"role": "user", "content": "x"}] * 4, "input": [{"role": "user", "content": "x"}] * 4})
    with pytest.raises(ApiError, match="content blocks"):
        anthropic.decode({"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "s"}] * 6,
                          "messages": [{"role": "user", "content": "x"}]}, verify_thinking=verify, limits=limits)


def test_messages_quote_what_the_client_sent_briefly():
    """Regression: a 2 MB model name came back as a 2 MB error message."""
    assert shown("abc") == "'abc'"
    assert len(shown("x" * 2_000_000)) == 60 and shown("x" * 2_000_000).endswith("...")
    settings = load_settings(env={})
    settings.models = [ModelConfig(id="m", engine="mock", context_window=100, max_output=10)]
    catalog = Catalog(settings)
    for lookup in (catalog.route, catalog.lookup):
        with pytest.raises(ApiError) as caught:
            lookup("x" * 2_000_000)
        assert len(caught.value.message) < 200
    with pytest.raises(ApiError) as caught:
        openai_chat.decode({"model": "m", "messages": [{"role": "y" * 100_000, "content": "x"}]})
    assert len(caught.value.message) < 200


def test_row_ids():
    """Regression: an id beyond 64 bits reached the database (SQLite: OverflowError, a 500)."""
    assert row_id("12") == 12 and row_id(7) == 7 and row_id(" 3 ") == 3
    for bad in ("99999999999999999999999", str(2**63), "0", "-1", "1e3", "²", "١٢", "", "abc", None, True, 1.5, [1]):
        assert row_id(bad) is None, bad
    assert row_id(str(2**63 - 1)) == 2**63 - 1
    assert row_id("0", minimum=0) == 0 and row_id("-1", minimum=0) is None


def test_the_envelope_follows_the_path():
    err = ApiError("invalid_request", "request_too_large", "too big", status=413)
    assert error_body("/anthropic/v1/messages", err) == {
        "type": "error", "error": {"type": "request_too_large", "message": "too big", "code": "request_too_large"}}
    assert error_body("/openai/v1/chat/completions", err)["error"]["type"] == "invalid_request_error"
    assert json.dumps(error_body("", err))  # a path that names nothing still gets a body


def test_absurd_counts_are_named_briefly():
    """Regression: max_tokens 1e308 was written out in full (a 400-character message)."""
    from longcat.gateway.pipeline import _count

    assert _count(32_000) == "32,000"
    assert _count(int(1e308)) == "a number of 309 digits"
