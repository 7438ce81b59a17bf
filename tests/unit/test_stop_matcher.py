from hypothesis import given
from hypothesis import strategies as st

from longcat.engines.base import StopMatcher


def run(matcher: StopMatcher, pieces: list[str]) -> tuple[str, str | None]:
    out = []
    for piece in pieces:
        text, stop = matcher.feed(piece)
        out.append(text)
        if stop is not None:
            return "".join(out), stop
    out.append(matcher.flush())
    return "".join(out), None


def test_stop_split_across_pieces_is_never_emitted():
    assert run(StopMatcher(["END"]), ["hello E", "N", "D more"]) == ("hello ", "END")


def test_false_start_is_released():
    assert run(StopMatcher(["END"]), ["EN", "x"]) == ("ENx", None)


def test_earliest_of_several_stops_wins():
    assert run(StopMatcher(["b", "abc"]), ["xabc"]) == ("x", "abc")
    assert run(StopMatcher(["b", "abc"]), ["xa", "bc"]) == ("x", "abc")


def test_no_stops_passes_through():
    m = StopMatcher([])
    assert m.feed("anything") == ("anything", None)


@given(st.lists(st.text(alphabet="abcX", max_size=5), max_size=12), st.sampled_from(["X", "abX", "cab"]))
def test_matches_reference(pieces, stop):
    text = "".join(pieces)
    expected = (text[: text.index(stop)], stop) if stop in text else (text, None)
    assert run(StopMatcher([stop]), pieces) == expected
