import asyncio

import pytest

from longcat.canonical import ApiError
from longcat.engines.scheduler import FairScheduler


def test_round_robin_across_tenants():
    async def main():
        sched = FairScheduler(slots=1, max_waiting=100)
        order: list[str] = []
        await sched.acquire("holder")

        async def job(tenant: str, n: int):
            await sched.acquire(tenant)
            order.append(f"{tenant}{n}")
            await asyncio.sleep(0)
            sched.release(tenant)

        tasks = [asyncio.create_task(job("a", i)) for i in range(4)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(job("b", 0)))
        await asyncio.sleep(0)
        sched.release("holder")
        await asyncio.gather(*tasks)
        return order

    # b arrived after all of a's requests but is served second, not last.
    assert asyncio.run(main()) == ["a0", "b0", "a1", "a2", "a3"]


def test_cancelled_waiter_does_not_leak_the_slot():
    async def main():
        sched = FairScheduler(slots=1, max_waiting=10)
        await sched.acquire("x")
        waiter = asyncio.create_task(sched.acquire("y"))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        sched.release("x")
        assert sched.busy == 0 and sched.waiting == 0
        await asyncio.wait_for(sched.acquire("z"), 1)
        assert sched.busy == 1

    asyncio.run(main())


def test_full_queue_is_a_quick_503():
    async def main():
        sched = FairScheduler(slots=1, max_waiting=1)
        await sched.acquire("x")
        first = asyncio.create_task(sched.acquire("y"))
        await asyncio.sleep(0)
        with pytest.raises(ApiError) as info:
            await sched.acquire("z")
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        return info.value

    err = asyncio.run(main())
    assert err.status == 503 and err.code == "overloaded"


def test_per_tenant_cap_leaves_room_for_others():
    async def main():
        sched = FairScheduler(slots=3, max_waiting=10, per_tenant=1)
        await sched.acquire("a")
        second_a = asyncio.create_task(sched.acquire("a"))
        await asyncio.sleep(0)
        assert not second_a.done() and sched.busy == 1  # a holds its one slot; two are free
        await asyncio.wait_for(sched.acquire("b"), 1)  # another account is not kept waiting
        assert sched.busy == 2
        sched.release("a")
        await asyncio.wait_for(second_a, 1)  # a's turn comes when its own slot is free
        sched.release("a")
        sched.release("b")
        # Nothing is kept for tenants that hold and wait for nothing.
        assert sched.busy == 0 and sched.waiting == 0 and sched.tenants == 0

    asyncio.run(main())


def test_one_tenant_cannot_fill_the_queue():
    async def main():
        sched = FairScheduler(slots=1, max_waiting=8, per_tenant_waiting=2)
        await sched.acquire("busy")
        mine = [asyncio.create_task(sched.acquire("greedy")) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ApiError) as info:
            await sched.acquire("greedy")
        assert info.value.status == 429 and info.value.code == "rate_limit_exceeded"
        other = asyncio.create_task(sched.acquire("polite"))  # still room for everyone else
        await asyncio.sleep(0)
        assert not other.done() and sched.waiting == 3
        for t in [*mine, other]:
            t.cancel()
        await asyncio.gather(*mine, other, return_exceptions=True)

    asyncio.run(main())
