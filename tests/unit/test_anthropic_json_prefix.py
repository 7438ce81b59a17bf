"""Streamed tool arguments: every prefix sent is parseable, and the whole is one JSON object."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jiter import from_json

from longcat.protocols.json_prefix import JsonObjectPrefix

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
objects = st.dictionaries(st.text(max_size=5), values, max_size=4)


def cut(draw, text):
    points = sorted(draw(st.lists(st.integers(0, len(text)), max_size=5)))
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def stream(pieces):
    tracker = JsonObjectPrefix()
    sent = []
    for piece in pieces:
        text = tracker.feed(piece)
        if text:
            sent.append(text)
            # What an SDK does on every delta: parse the accumulated prefix.
            from_json("".join(sent).encode(), partial_mode=True)
    return tracker, "".join(sent)


@settings(max_examples=300, deadline=None)
@given(st.data(), objects, st.sampled_from([None, 2]), st.booleans())
def test_valid_objects_pass_through_unchanged(data, obj, indent, ascii_only):
    raw = json.dumps(obj, indent=indent, ensure_ascii=ascii_only)
    tracker, sent = stream(cut(data.draw, raw))
    assert sent == raw and tracker.done and not tracker.broken
    assert tracker.close() == ""


@settings(max_examples=300, deadline=None)
@given(st.data(), objects)
def test_any_prefix_of_an_object_is_closed_into_an_object(data, obj):
    raw = json.dumps(obj)
    prefix = raw[: data.draw(st.integers(0, len(raw)))]
    tracker, sent = stream(cut(data.draw, prefix))
    assert prefix.startswith(sent) and not tracker.broken
    whole = sent + tracker.close()
    assert whole == "" or isinstance(json.loads(whole), dict)


@settings(max_examples=500, deadline=None)
@given(st.data(), st.text(alphabet='{}[]",:. -+0123456789eEtrufalsn\\u\n ab', max_size=30))
def test_arbitrary_text_never_yields_invalid_json(data, text):
    tracker, sent = stream(cut(data.draw, text))
    assert text.lstrip().startswith(sent.lstrip()) or not sent
    whole = sent + tracker.close()
    assert whole == "" or isinstance(json.loads(whole), dict)


@pytest.mark.parametrize(
    ("pieces", "whole"),
    [
        (['{"a": tr'], '{"a": true}'),
        (['{"a": 1', "2."], '{"a": 12.0}'),
        (['{"a": -'], '{"a": -0}'),
        (['{"a": [1, {"b": "x\\'], '{"a": [1, {"b": "x\\\\"}]}'),
        (['{"a": "\\u00'], '{"a": "\\u0000"}'),
        (['{"ke'], '{"ke":null}'),
        (['{"k":'], '{"k":null}'),
        (['{"a": 1,', " "], '{"a": 1}'),
        (['{"a": 1} trailing'], '{"a": 1} '),
        (["[1, 2]"], ""),
        (["  ", '{"x": 01}'], '{"x": 0}'),
        (['{"a": "line\nbreak"}'], '{"a": "line"}'),
    ],
)
def test_closing_examples(pieces, whole):
    tracker, sent = stream(pieces)
    assert sent + tracker.close() == whole
    if whole:
        assert isinstance(json.loads(whole), dict)
