"""The key cache (store/keycache.py): entries live at most TTL, a change empties it, and a read
that raced a change cannot put a stale owner back."""

from __future__ import annotations

import asyncio

from longcat.store.keycache import KeyCache, follow_changes


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_an_entry_lives_at_most_the_ttl():
    clock = Clock()
    cache = KeyCache(ttl=0.5, clock=clock)
    cache.put("h", "owner", cache.generation)
    assert cache.get("h") == "owner"
    clock.t += 0.49
    assert cache.get("h") == "owner"
    clock.t += 0.02
    assert cache.get("h") is None and len(cache) == 0


def test_a_change_empties_it_and_a_racing_read_is_not_stored():
    cache = KeyCache(ttl=10)
    cache.put("a", 1, cache.generation)
    seen = cache.generation  # a lookup starts reading the database…
    cache.clear()  # …a key is revoked meanwhile…
    cache.put("b", 2, seen)  # …and what it read is not trusted
    assert cache.get("a") is None and cache.get("b") is None
    cache.put("b", 3, cache.generation)
    assert cache.get("b") == 3


def test_it_is_bounded():
    cache = KeyCache(ttl=10, max_entries=3)
    for i in range(10):
        cache.put(str(i), i, cache.generation)
    assert len(cache) == 3 and cache.get("9") == 9 and cache.get("0") is None


def test_a_zero_ttl_caches_nothing():
    cache = KeyCache(ttl=0)
    cache.put("a", 1, cache.generation)
    assert cache.get("a") is None


class FakePubSub:
    def __init__(self, messages: asyncio.Queue) -> None:
        self.messages = messages

    async def subscribe(self, channel: str) -> None:
        self.channel = channel

    async def listen(self):
        while True:
            yield await self.messages.get()

    async def aclose(self) -> None:
        pass


class FakeRedis:
    def __init__(self) -> None:
        self.messages: asyncio.Queue = asyncio.Queue()

    def pubsub(self) -> FakePubSub:
        return FakePubSub(self.messages)


def test_an_announced_change_empties_the_cache_of_every_follower():
    async def main() -> None:
        redis, cache = FakeRedis(), KeyCache(ttl=10)
        follower = asyncio.create_task(follow_changes(redis, "lc:", cache))
        await asyncio.sleep(0.01)
        cache.put("k", 1, cache.generation)
        await redis.messages.put({"type": "message", "data": "1"})
        await asyncio.sleep(0.01)
        assert cache.get("k") is None
        follower.cancel()

    asyncio.run(asyncio.wait_for(main(), 5))
