"""Fair admission to a limited resource: an engine's generation slots, or its tokenizer.

Waiting requests are grouped by tenant (account) and served round-robin across tenants, first
come first served within one, so an account that fires fifty requests cannot starve another
that sends one. `per_tenant` caps how many slots one tenant may hold at once, even when others
are free. A bounded queue turns overload into a quick 503 instead of an unbounded wait, and
`per_tenant_waiting` caps one tenant's share of it (a 429 for that tenant), so a single account
cannot fill the queue and turn everyone else away.

State is kept only for tenants that hold or wait for a slot, so it never outgrows the load.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque

from longcat.canonical import ApiError, rate_limited


class FairScheduler:
    def __init__(
        self, slots: int = 1, max_waiting: int = 64, per_tenant: int = 0, per_tenant_waiting: int = 0, what: str = "the engine"
    ) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.per_tenant = per_tenant  # 0: no cap per tenant
        self.per_tenant_waiting = per_tenant_waiting  # 0: no cap per tenant
        self.what = what  # what is busy, for the 503's message
        self._busy = 0
        self._running: dict[str, int] = {}
        self._queues: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def tenants(self) -> int:
        """Tenants holding or waiting for a slot (what the scheduler keeps state for)."""
        return len(self._running.keys() | self._queues.keys())

    def _room(self, tenant: str) -> bool:
        return self._busy < self.slots and (not self.per_tenant or self._running.get(tenant, 0) < self.per_tenant)

    def _grant(self, tenant: str) -> None:
        self._busy += 1
        self._running[tenant] = self._running.get(tenant, 0) + 1

    async def acquire(self, tenant: str) -> None:
        # After every change no waiter that could run is left waiting (see `_dispatch`), so a
        # free slot here jumps nobody's turn.
        if self._room(tenant):
            self._grant(tenant)
            return
        if self.per_tenant_waiting and len(self._queues.get(tenant, ())) >= self.per_tenant_waiting:
            raise rate_limited(1)
        if self.waiting >= self.max_waiting:
            raise ApiError(
                "overloaded",
                "overloaded",
                f"{self.what} is busy: {self.waiting} requests are already waiting; retry shortly",
                headers={"Retry-After": "2"},
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(tenant, deque()).append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slot was handed to us just as we were cancelled: pass it on.
                self.release(tenant)
            else:
                queue = self._queues.get(tenant)
                if queue is not None and fut in queue:
                    queue.remove(fut)
                    if not queue:
                        del self._queues[tenant]
            raise

    def release(self, tenant: str) -> None:
        """Free `tenant`'s slot and hand it to the next tenant in rotation that may take one."""
        self._busy -= 1
        held = self._running.get(tenant, 0) - 1
        if held > 0:
            self._running[tenant] = held
        else:
            self._running.pop(tenant, None)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._busy < self.slots:
            chosen = next((t for t in self._queues if self._room(t)), None)
            if chosen is None:
                return
            queue = self._queues.pop(chosen)
            fut = queue.popleft()
            if queue:
                self._queues[chosen] = queue  # rotate: this tenant goes to the back of the line
            if not fut.done():
                self._grant(chosen)
                fut.set_result(None)
