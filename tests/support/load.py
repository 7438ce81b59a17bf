"""Load for the crash and failover tests: a fixed number of requests in flight until told to stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def keep_in_flight(one: Callable[[Any, int], Awaitable[None]], client: Any, concurrency: int,
                         stop: threading.Event, seconds: float) -> None:
    """Run `one(client, i)` for i = 0, 1, … with `concurrency` of them in flight at any time,
    until `stop` is set or `seconds` have passed; then wait for those still running."""
    tasks: set[asyncio.Task] = set()
    i = 0
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline:
        while len(tasks) < concurrency:
            task = asyncio.create_task(one(client, i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks, return_exceptions=True)
