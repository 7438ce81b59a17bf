"""`with_keepalive`: pings while an engine is silent, without ever cancelling the engine's step;
and the Anthropic route's frame producer built on it."""

from __future__ import annotations

import asyncio

import pytest

from longcat.api.anthropic import message_frames
from longcat.api.asgi import with_keepalive
from longcat.canonical import ApiError, TextDelta
from longcat.gateway.signing import Signer
from longcat.protocols.anthropic import MessageStreamEncoder
from tests.support.anthropic_stream import check_stream, parse_sse


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_silence_becomes_pings_and_items_are_not_lost():
    log = []

    async def slow():
        try:
            await asyncio.sleep(0.35)
            yield "a"
            yield "b"
            await asyncio.sleep(0.25)
            yield "c"
        except asyncio.CancelledError:  # pragma: no cover - would mean a timeout cancelled the step
            log.append("cancelled")
            raise

    async def main():
        return [item async for item in with_keepalive(slow(), 0.1)]

    items = run(main())
    assert [i for i in items if i is not None] == ["a", "b", "c"]
    assert items.index("a") >= 2 and items.count(None) >= 3
    assert log == []


def test_zero_interval_means_no_pings():
    async def quick():
        await asyncio.sleep(0.05)
        yield 1

    async def main():
        return [item async for item in with_keepalive(quick(), 0)]

    assert run(main()) == [1]


def test_errors_propagate():
    async def failing():
        yield 1
        raise ValueError("engine broke")

    async def main():
        return [item async for item in with_keepalive(failing(), 1)]

    with pytest.raises(ValueError, match="engine broke"):
        run(main())


def test_stopping_early_cancels_the_pending_step_and_closes_the_source():
    state = {}

    async def endless():
        try:
            yield 1
            await asyncio.sleep(60)
            yield 2  # pragma: no cover
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise
        finally:
            state["closed"] = True

    async def main():
        ticks = with_keepalive(endless(), 0.05)
        got = [await anext(ticks), await anext(ticks)]
        await ticks.aclose()
        return got

    assert run(main()) == [1, None]
    assert state == {"cancelled": True, "closed": True}


# ------------------------------------------------------------------ the route's frame producer


def frames_of(events, interval):
    encoder = MessageStreamEncoder(model="m", input_tokens=3, sign_thinking=Signer(b"k").sign_thinking)

    async def main():
        return b"".join([frame async for frame in message_frames(events, encoder, interval)])

    return check_stream(parse_sse(run(main()).decode()))


def test_an_engine_error_before_anything_was_sent_propagates_as_an_http_error():
    async def refused():
        raise ApiError("overloaded", "overloaded", "busy")
        yield  # pragma: no cover

    with pytest.raises(ApiError, match="busy"):
        frames_of(refused(), 0.5)


def test_an_engine_error_after_the_stream_started_is_an_error_event():
    async def late_refusal():
        await asyncio.sleep(0.3)
        raise ApiError("overloaded", "overloaded", "busy")
        yield  # pragma: no cover

    summary = frames_of(late_refusal(), 0.1)
    assert summary.names[0] == "message_start" and summary.pings >= 1
    assert summary.error == {"type": "overloaded_error", "message": "busy", "code": "overloaded"}


def test_an_engine_that_ends_silently_still_gets_a_complete_message():
    async def no_finish():
        yield TextDelta("hi")

    async def nothing():
        return
        yield  # pragma: no cover

    assert frames_of(no_finish(), 1).text == "hi"
    assert frames_of(nothing(), 1).stop_reason == "end_turn"
