"""Noticing a client that left, even when the first cancellation gets lost on the way."""

import asyncio

import pytest

from longcat.api.asgi import Disconnected, cancel_on_disconnect


def test_a_swallowed_cancellation_is_repeated():
    async def main() -> list[str]:
        seen: list[str] = []
        disconnect = asyncio.Event()

        async def receive():
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def swallowing_work():
            # What `asyncio.wait_for` in Python 3.11 can do when its own wait ends as the
            # cancellation arrives: the CancelledError never reaches the caller.
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                seen.append("swallowed")
            await asyncio.sleep(5)  # would run to the end without a second cancellation
            seen.append("finished")

        async def handler():
            async with cancel_on_disconnect(receive):
                await swallowing_work()

        task = asyncio.create_task(handler())
        await asyncio.sleep(0.05)
        disconnect.set()
        with pytest.raises(Disconnected):
            await asyncio.wait_for(task, 2)
        assert task.cancelling() == 0
        return seen

    assert asyncio.run(main()) == ["swallowed"]


def test_work_that_ends_normally_is_not_disturbed():
    async def main():
        async def receive():
            await asyncio.sleep(10)
            return {"type": "http.disconnect"}

        async with cancel_on_disconnect(receive) as watch:
            await asyncio.sleep(0.01)
            watch.check()
        return "done"

    assert asyncio.run(main()) == "done"
