import json

from hypothesis import given
from hypothesis import strategies as st

from longcat.engines.tool_text import ToolCallTextParser, parse_call_body


def feed_all(pieces):
    parser = ToolCallTextParser()
    items = []
    for piece in pieces:
        items += parser.feed(piece)
    items += parser.finish()
    return items


def collapse(items):
    """Merge adjacent text items so chunking differences don't matter."""
    out = []
    for kind, value in items:
        if kind == "text" and out and out[-1][0] == "text":
            out[-1] = ("text", out[-1][1] + value)
        else:
            out.append((kind, value))
    return out


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_call_is_parsed():
    items = collapse(feed_all(["Sure. ", CALL]))
    assert items[0] == ("text", "Sure. ")
    assert items[1][0] == "call"
    assert items[1][1].name == "get_weather"
    assert json.loads(items[1][1].arguments) == {"city": "Paris"}


def test_list_form_and_string_arguments():
    calls = parse_call_body('[{"name": "a", "arguments": "{\\"x\\": 1}"}, {"name": "b", "parameters": {}}]')
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"x": 1}), ("b", {})]


def test_malformed_call_stays_text():
    items = collapse(feed_all(["<tool_call>not json</tool_call>"]))
    assert items == [("text", "<tool_call>not json</tool_call>")]


def test_unterminated_but_complete_call_is_used():
    items = feed_all(['<tool_call>{"name": "f", "arguments": {}}'])
    assert items[0][0] == "call"


def test_text_that_looks_like_a_tag_start_is_released():
    assert collapse(feed_all(["a <tool", " b"])) == [("text", "a <tool b")]


@given(st.integers(min_value=1, max_value=len(CALL)))
def test_any_chunking_gives_the_same_result(size):
    text = "before " + CALL + " after"
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    items = collapse(feed_all(pieces))
    assert [k for k, _ in items] == ["text", "call", "text"]
    assert items[0][1] == "before " and items[2][1] == " after"


def test_replayed_arguments_of_any_shape_render_without_failing():
    from longcat.engines.tool_text import parse_call_body, render_call

    for arguments in ("[" * 1000 + "]" * 1000, "1" * 5000, "{not json", ""):
        rendered = render_call("f", arguments)
        assert rendered.startswith("<tool_call>") and '"name": "f"' in rendered
    assert parse_call_body('{"name": "f", "arguments": "' + "[" * 2000 + '"}') is None
    assert parse_call_body("[" * 5000) is None
