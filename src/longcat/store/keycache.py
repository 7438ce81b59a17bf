"""A short-lived cache of authenticated keys, so that a request does not read the database.

Authenticating a key was one SELECT (a join of the key and its account) per request: on SQLite a
round trip to its thread, on PostgreSQL one over the network, and in both the building of the
statement. Here a key's owner (its account, limits and quota) is remembered for `TTL` seconds.

What keeps revocation prompt:
- in the process that makes a change (the console, the admin API), every write to keys or
  accounts empties the cache at once (`AccountStore._changed`);
- with Redis, the same write publishes on `<prefix>auth-changed`, and every replica empties its
  cache when the message arrives (milliseconds);
- whatever else happens (a replica whose subscription is down, the CLI on SQLite with no Redis),
  no entry outlives `TTL`: a change is in force everywhere within `TTL` seconds, and the CLI
  waits that long before it returns.
Only keys that authenticated are cached: an unknown key is looked up every time, so a key just
created works at once on every replica.

An entry is stored only if nothing changed while it was being read (`generation`): a read that
raced a revocation cannot put the revoked key back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Generic, TypeVar

log = logging.getLogger("longcat.keycache")

TTL = 0.5  # seconds an authenticated key is trusted without looking at the database
MAX_ENTRIES = 50_000
CHANNEL = "auth-changed"

V = TypeVar("V")


class KeyCache(Generic[V]):
    def __init__(self, ttl: float = TTL, max_entries: int = MAX_ENTRIES, clock=time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self.generation = 0
        self._entries: dict[str, tuple[float, V]] = {}

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, value: V, generation: int) -> None:
        """Remember `value`, read when the cache was at `generation` (dropped if it moved on)."""
        if generation != self.generation or self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            now = self.clock()
            for k in [k for k, (until, _) in self._entries.items() if until <= now]:
                del self._entries[k]
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest
        self._entries[key] = (self.clock() + self.ttl, value)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


async def publish_change(redis: Any, prefix: str) -> None:
    """Tell every replica to forget the keys it trusts (best effort: the TTL bounds the rest)."""
    try:
        await redis.publish(prefix + CHANNEL, b"1")
    except Exception as exc:  # noqa: BLE001 - Redis down: the TTL still bounds the delay
        log.warning("could not announce a key or account change on Redis (%s); replicas see it within %.1f s", type(exc).__name__, TTL)


async def follow_changes(redis: Any, prefix: str, cache: KeyCache) -> None:
    """Empty `cache` whenever another process announces a change; runs until cancelled.

    Each (re)subscription empties it too: messages may have been missed while disconnected."""
    delay = 0.1
    while True:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(prefix + CHANNEL)
            cache.clear()
            delay = 0.1
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    cache.clear()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("the key-change subscription on Redis failed (%s); retrying", type(exc).__name__)
            cache.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        finally:
            try:
                await pubsub.aclose()
            except Exception:  # noqa: BLE001
                pass
