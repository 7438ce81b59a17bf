"""`with_keepalive`: pings while an engine is silent, without ever cancelling the engine's step."""

from __future__ import annotations

import asyncio

import pytest

from longcat.api.asgi import with_keepalive


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
