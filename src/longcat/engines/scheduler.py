"""Fair admission to an engine that runs one generation at a time.

Waiting requests are grouped by tenant (account) and served round-robin across tenants, first
come first served within one, so an account that fires fifty requests cannot starve another
that sends one. A bounded queue turns overload into a quick 503 instead of an unbounded wait.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque

from longcat.canonical import ApiError


class FairScheduler:
    def __init__(self, slots: int = 1, max_waiting: int = 64) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self._busy = 0
        self._queues: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def busy(self) -> int:
        return self._busy

    async def acquire(self, tenant: str) -> None:
        if self._busy < self.slots and not self.waiting:
            self._busy += 1
            return
        if self.waiting >= self.max_waiting:
            raise ApiError(
                "overloaded",
                "overloaded",
                f"the engine is busy: {self.waiting} requests are already waiting; retry shortly",
                headers={"Retry-After": "2"},
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(tenant, deque()).append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slot was handed to us just as we were cancelled: pass it on.
                self.release()
            else:
                queue = self._queues.get(tenant)
                if queue is not None and fut in queue:
                    queue.remove(fut)
                    if not queue:
                        del self._queues[tenant]
            raise

    def release(self) -> None:
        """Free a slot and hand it to the next tenant in rotation that has a live waiter."""
        self._busy -= 1
        while self._queues:
            tenant, queue = next(iter(self._queues.items()))
            fut = queue.popleft()
            # Rotate: this tenant goes to the back of the line.
            del self._queues[tenant]
            if queue:
                self._queues[tenant] = queue
            if not fut.done():
                self._busy += 1
                fut.set_result(None)
                return
