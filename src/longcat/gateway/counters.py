"""The shared state behind rate limits and quotas, in process or in Redis.

Every operation is atomic over all the counters it touches (one lock in process, one Lua script
in Redis), so concurrent requests, on one replica or many, can never both take the last unit of
a limit or the last tokens of a quota.

Rate limits are GCRA buckets: a limit of L units per minute drains at L/60 units a second and
holds at most L; a request of cost c passes if it fits (or if the bucket is empty, so a single
request larger than the whole limit is not locked out forever). Concurrency limits are sets of
leases that expire, so a crashed replica cannot hold them forever. Quotas keep `used` and
`granted` per account and day plus the reservations of requests in flight, also leased.

In Redis, every slot and reservation a replica takes is also filed under the replica's name
(`held:<replica>`), next to a heartbeat key that lapses when the replica dies: the other replicas
then give back what it held at once (gateway/replicas.py) rather than after the leases expire.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from longcat.canonical import retry_seconds  # noqa: F401 (where the limiter's users look for it)

WINDOW = 60.0  # seconds: limits are "per minute"


@dataclass(slots=True, frozen=True)
class Bucket:
    """A GCRA bucket `key` allowing `limit` units a minute; this request costs `cost` units."""

    key: str
    limit: int
    cost: float


@dataclass(slots=True, frozen=True)
class Slots:
    """At most `limit` concurrent leases under `key`."""

    key: str
    limit: int


@dataclass(slots=True, frozen=True)
class QuotaState:
    used: int
    granted: int
    reserved: int


@dataclass(slots=True, frozen=True)
class Reserved:
    """Outcome of a reservation: `ok`, the output tokens granted, and the state it saw."""

    ok: bool
    out_budget: int
    state: QuotaState


# Loads (used, granted) for a quota key from the database when the counters do not know it.
QuotaSeed = Callable[[], Awaitable[tuple[int, int]]]


def gcra(tat: float, now: float, limit: int, cost: float) -> tuple[float, float]:
    """(new theoretical arrival time, wait): wait 0 means the cost fits now."""
    interval = WINDOW / limit
    start = max(tat, now)
    new_tat = start + cost * interval
    if new_tat - now <= WINDOW or start <= now:
        return new_tat, 0.0
    if cost * interval > WINDOW:
        return new_tat, start - now  # larger than the bucket: wait until it is empty
    return new_tat, new_tat - WINDOW - now


class Counters(Protocol):
    async def acquire(self, buckets: list[Bucket], slots: list[Slots], lease: str, now: float, ttl: float) -> float:
        """Take every bucket's cost and a lease in every slot set, or nothing: returns 0, or the
        seconds to wait before the same request could pass."""

    async def release(self, buckets: list[Bucket], slot_keys: list[str], lease: str, now: float) -> None:
        """Charge deferred costs (e.g. output tokens) to buckets and give the leases back."""

    async def quota_reserve(
        self, key: str, seed: QuotaSeed, base: int, prompt: int, max_out: int, lease: str, now: float, ttl: float
    ) -> Reserved: ...

    async def quota_settle(self, key: str, lease: str, billed: int) -> None: ...

    async def quota_recorded(self, settled: list[tuple[str, str, int]]) -> None:
        """Those settlements (quota key, lease, billed) have their usage records on disk."""

    async def quota_refresh(self, key: str, seed: QuotaSeed, base: int, cap: int, now: float) -> tuple[int, QuotaState]:
        """Grant what brings the remaining quota back to `base`, never beyond `cap` in total."""

    async def quota_state(self, key: str, seed: QuotaSeed, now: float) -> QuotaState: ...

    async def renew(self, slot_keys: list[str], quota_key: str | None, lease: str, now: float, ttl: float) -> None:
        """Extend a live request's leases (slots and quota reservation) to `now + ttl`."""

    async def close(self) -> None: ...


def refresh_grant(base: int, cap: int, used: int, granted: int) -> int:
    remaining = base + granted - used
    return max(0, min(base - remaining, cap - (base + granted)))


# ------------------------------------------------------------------------------------ in process


@dataclass
class _Quota:
    used: int
    granted: int
    leases: dict[str, int] = field(default_factory=dict)  # lease -> tokens held

    def reserved(self, now: float) -> int:
        return sum(self.leases.values())


class MemoryCounters:
    """Counters for one process. Safe because every operation runs without awaiting in between.
    Leases never expire here: they live exactly as long as the process that holds them."""

    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._slots: dict[str, set[str]] = {}
        self._quotas: dict[str, _Quota] = {}
        self._seeding: dict[str, asyncio.Lock] = {}

    async def acquire(self, buckets: list[Bucket], slots: list[Slots], lease: str, now: float, ttl: float) -> float:
        wait = 0.0
        new_tats = []
        for b in buckets:
            new_tat, w = gcra(self._tats.get(b.key, 0.0), now, b.limit, b.cost)
            new_tats.append(new_tat)
            wait = max(wait, w)
        for s in slots:
            if len(self._slots.setdefault(s.key, set())) >= s.limit:
                wait = max(wait, 1.0)
        if wait > 0:
            return wait
        for b, new_tat in zip(buckets, new_tats, strict=True):
            self._tats[b.key] = new_tat
        for s in slots:
            self._slots[s.key].add(lease)
        return 0.0

    async def release(self, buckets: list[Bucket], slot_keys: list[str], lease: str, now: float) -> None:
        for b in buckets:
            if b.cost > 0:
                self._tats[b.key] = max(self._tats.get(b.key, 0.0), now) + b.cost * WINDOW / b.limit
        for key in slot_keys:
            self._slots.get(key, set()).discard(lease)

    async def _quota(self, key: str, seed: QuotaSeed) -> _Quota:
        quota = self._quotas.get(key)
        if quota is not None:
            return quota
        lock = self._seeding.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._quotas:
                used, granted = await seed()
                self._quotas[key] = _Quota(used, granted)
        self._seeding.pop(key, None)
        return self._quotas[key]

    async def quota_reserve(
        self, key: str, seed: QuotaSeed, base: int, prompt: int, max_out: int, lease: str, now: float, ttl: float
    ) -> Reserved:
        q = await self._quota(key, seed)
        reserved = q.reserved(now)
        state = QuotaState(q.used, q.granted, reserved)
        free = base + q.granted - q.used - reserved
        if free < prompt + 1:
            return Reserved(False, 0, state)
        out = min(max_out, free - prompt)
        q.leases[lease] = prompt + out
        return Reserved(True, out, state)

    async def quota_settle(self, key: str, lease: str, billed: int) -> None:
        q = self._quotas.get(key)
        if q is not None:
            q.leases.pop(lease, None)
            q.used += billed

    async def quota_recorded(self, settled: list[tuple[str, str, int]]) -> None:
        return None  # nothing outlives this process, so nothing needs undoing after it

    async def quota_refresh(self, key: str, seed: QuotaSeed, base: int, cap: int, now: float) -> tuple[int, QuotaState]:
        q = await self._quota(key, seed)
        grant = refresh_grant(base, cap, q.used, q.granted)
        q.granted += grant
        return grant, QuotaState(q.used, q.granted, q.reserved(now))

    async def quota_state(self, key: str, seed: QuotaSeed, now: float) -> QuotaState:
        q = await self._quota(key, seed)
        return QuotaState(q.used, q.granted, q.reserved(now))

    async def renew(self, slot_keys: list[str], quota_key: str | None, lease: str, now: float, ttl: float) -> None:
        return None

    def prune(self, now: float, keep_quota: Callable[[str], bool]) -> None:
        """Forget what no longer matters (called now and then): buckets that have drained (an
        absent bucket is an empty one), concurrency sets with no lease, quotas of past days."""
        for key in [k for k, tat in self._tats.items() if tat <= now]:
            del self._tats[key]
        for key in [k for k, leases in self._slots.items() if not leases]:
            del self._slots[key]
        for key in [k for k in self._quotas if not keep_quota(k)]:
            del self._quotas[key]

    @property
    def size(self) -> int:
        """How many counters are kept (for tests of the above)."""
        return len(self._tats) + len(self._slots) + len(self._quotas)

    async def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------ Redis

_ACQUIRE = """
local now, lease, ttl, nb = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local wait, tats = 0, {}
for i = 1, nb do
  local limit, cost = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  local interval = 60 / limit
  local start = math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), now)
  local nt = start + cost * interval
  tats[i] = nt
  if nt - now > 60 and start > now then
    local w = nt - 60 - now
    if cost * interval > 60 then w = start - now end
    if w > wait then wait = w end
  end
end
local held, ns = KEYS[#KEYS], #KEYS - 1
for j = nb + 1, ns do
  redis.call('ZREMRANGEBYSCORE', KEYS[j], '-inf', now)
  if redis.call('ZCARD', KEYS[j]) >= tonumber(ARGV[4 + 2 * nb + (j - nb)]) and wait < 1 then wait = 1 end
end
if wait > 0 then return tostring(wait) end
for i = 1, nb do
  redis.call('SET', KEYS[i], tostring(tats[i]), 'EX', math.ceil(tats[i] - now) + 1)
end
for j = nb + 1, ns do
  redis.call('ZADD', KEYS[j], now + ttl, lease)
  redis.call('EXPIRE', KEYS[j], math.ceil(ttl) + 1)
  redis.call('SADD', held, 's\t' .. KEYS[j] .. '\t' .. lease)
end
if ns > nb then redis.call('EXPIRE', held, 259200) end
return '0'
"""

_RELEASE = """
local now, lease, nb = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
for i = 1, nb do
  local limit, cost = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  if cost > 0 then
    local nt = math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), now) + cost * 60 / limit
    redis.call('SET', KEYS[i], tostring(nt), 'EX', math.ceil(nt - now) + 1)
  end
end
for j = nb + 1, #KEYS - 1 do
  redis.call('ZREM', KEYS[j], lease)
  redis.call('SREM', KEYS[#KEYS], 's\t' .. KEYS[j] .. '\t' .. lease)
end
return 1
"""

# KEYS: quota hash, lease amounts hash, lease expiry zset (and, to reserve or settle, the
# replica's held set). Returns {status, ...}; status -1 asks the caller to load the day from the
# database and call again with it as the seed.
_QUOTA_PRELUDE = """
local q, amounts, expiry = KEYS[1], KEYS[2], KEYS[3]
local function seeded(seed_used, seed_granted)
  if redis.call('HEXISTS', q, 'seeded') == 1 then return true end
  if tonumber(seed_used) < 0 then return false end
  redis.call('HSET', q, 'used', seed_used, 'granted', seed_granted, 'seeded', 1)
  redis.call('EXPIRE', q, 259200)
  return true
end
local function reserved(now)
  local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
  for _, lease in ipairs(gone) do
    redis.call('HDEL', amounts, lease)
    redis.call('ZREM', expiry, lease)
  end
  local total = 0
  for _, v in ipairs(redis.call('HVALS', amounts)) do total = total + tonumber(v) end
  return total
end
"""

_QUOTA_RESERVE = _QUOTA_PRELUDE + """
local now, lease, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local base, prompt, max_out = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if not seeded(ARGV[7], ARGV[8]) then return {-1} end
local used, granted = tonumber(redis.call('HGET', q, 'used')), tonumber(redis.call('HGET', q, 'granted'))
local res = reserved(now)
local free = base + granted - used - res
if free < prompt + 1 then return {0, 0, used, granted, res} end
local out = math.min(max_out, free - prompt)
redis.call('HSET', amounts, lease, prompt + out)
redis.call('ZADD', expiry, now + ttl, lease)
redis.call('EXPIRE', amounts, 259200)
redis.call('EXPIRE', expiry, 259200)
redis.call('SADD', KEYS[4], 'q\t' .. q .. '\t' .. lease)
redis.call('EXPIRE', KEYS[4], 259200)
return {1, out, used, granted, res}
"""

# Counted here before its usage record is on disk, so until then it is filed as 'b' (billed):
# should the replica die before the record is written, a sweep undoes it.
_QUOTA_SETTLE = """
local q, amounts, expiry = KEYS[1], KEYS[2], KEYS[3]
redis.call('HDEL', amounts, ARGV[1])
redis.call('ZREM', expiry, ARGV[1])
redis.call('SREM', KEYS[4], 'q\t' .. q .. '\t' .. ARGV[1])
if redis.call('HEXISTS', q, 'seeded') == 1 then
  redis.call('HINCRBY', q, 'used', ARGV[2])
  if tonumber(ARGV[2]) > 0 then
    redis.call('SADD', KEYS[4], 'b\t' .. q .. '\t' .. ARGV[1] .. '\t' .. ARGV[2])
    redis.call('EXPIRE', KEYS[4], 259200)
  end
end
return 1
"""

# A dead replica's settlement whose record never reached the database: not counted after all.
_QUOTA_UNDO = """
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'seeded') == 1 then redis.call('HINCRBY', KEYS[1], 'used', -tonumber(ARGV[2])) end
return 1
"""

# A dead replica's reservation: billed as recorded (ARGV[2], its request finished) or not at all,
# and only by whoever removes it first (two replicas may sweep the same dead one).
_QUOTA_GIVE_BACK = """
local q, amounts, expiry = KEYS[1], KEYS[2], KEYS[3]
redis.call('SREM', KEYS[4], ARGV[3])
if redis.call('HDEL', amounts, ARGV[1]) == 0 then return 0 end
redis.call('ZREM', expiry, ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('HEXISTS', q, 'seeded') == 1 then redis.call('HINCRBY', q, 'used', ARGV[2]) end
return 1
"""

# KEYS: the replica's heartbeat key and the set of replicas. Returns whether the heartbeat was
# still there (0: it had lapsed, and others may have given back what this replica held).
_HEARTBEAT = """
local alive = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return alive
"""

# KEYS: a dead replica's held set, the set of replicas. Forgets the replica once it holds nothing.
_FORGET = """
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

_QUOTA_REFRESH = _QUOTA_PRELUDE + """
local now, base, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if not seeded(ARGV[4], ARGV[5]) then return {-1} end
local used, granted = tonumber(redis.call('HGET', q, 'used')), tonumber(redis.call('HGET', q, 'granted'))
local remaining = base + granted - used
local grant = math.max(0, math.min(base - remaining, cap - (base + granted)))
if grant > 0 then granted = redis.call('HINCRBY', q, 'granted', grant) end
return {grant, used, granted, reserved(now)}
"""

_QUOTA_STATE = _QUOTA_PRELUDE + """
if not seeded(ARGV[2], ARGV[3]) then return {-1} end
return {1, tonumber(redis.call('HGET', q, 'used')), tonumber(redis.call('HGET', q, 'granted')), reserved(tonumber(ARGV[1]))}
"""


_RENEW = """
local lease, expires, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], lease) then
    redis.call('ZADD', KEYS[i], 'XX', expires, lease)
    -- The set itself must outlive its newest lease, or Redis drops it with every lease inside.
    if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], math.ceil(ttl) + 1) end
  end
end
return 1
"""


@dataclass(slots=True, frozen=True)
class Held:
    """What a replica holds in Redis: quota reservations (quota key, lease), settlements whose
    records may not be on disk yet (quota key, lease, tokens), concurrency slots (slot key, lease)."""

    reservations: list[tuple[str, str]]
    billed: list[tuple[str, str, int]]
    slots: list[tuple[str, str]]

    @property
    def leases(self) -> list[str]:
        """The requests whose usage records decide how the quota is put right."""
        return [lease for _, lease in self.reservations] + [lease for _, lease, _ in self.billed]


class RedisCounters:
    """Counters shared by every replica through one Redis."""

    def __init__(self, url: str, prefix: str = "lc:", replica: str | None = None) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(url, decode_responses=True)
        self.prefix = prefix
        # This process's name among the replicas: what its requests hold is filed under it.
        self.replica = replica or secrets.token_hex(8)
        self._held = self._k(f"held:{self.replica}")
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._release = self.redis.register_script(_RELEASE)
        self._reserve = self.redis.register_script(_QUOTA_RESERVE)
        self._settle = self.redis.register_script(_QUOTA_SETTLE)
        self._refresh = self.redis.register_script(_QUOTA_REFRESH)
        self._state = self.redis.register_script(_QUOTA_STATE)
        self._renew = self.redis.register_script(_RENEW)
        self._give_back_quota = self.redis.register_script(_QUOTA_GIVE_BACK)
        self._undo = self.redis.register_script(_QUOTA_UNDO)
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        self._forget = self.redis.register_script(_FORGET)

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _qkeys(self, key: str) -> list[str]:
        return [self._k(f"q:{key}"), self._k(f"qa:{key}"), self._k(f"qe:{key}")]

    async def acquire(self, buckets: list[Bucket], slots: list[Slots], lease: str, now: float, ttl: float) -> float:
        keys = [self._k(b.key) for b in buckets] + [self._k(s.key) for s in slots] + [self._held]
        args: list = [repr(now), lease, repr(ttl), len(buckets)]
        for b in buckets:
            args += [b.limit, repr(float(b.cost))]
        args += [s.limit for s in slots]
        return float(await self._acquire(keys=keys, args=args))

    async def release(self, buckets: list[Bucket], slot_keys: list[str], lease: str, now: float) -> None:
        keys = [self._k(b.key) for b in buckets] + [self._k(k) for k in slot_keys] + [self._held]
        args: list = [repr(now), lease, len(buckets)]
        for b in buckets:
            args += [b.limit, repr(float(b.cost))]
        await self._release(keys=keys, args=args)

    async def _seeded_call(self, script, key: str, args: list, seed: QuotaSeed, extra_keys: tuple[str, ...] = ()) -> list:
        keys = [*self._qkeys(key), *extra_keys]
        result = await script(keys=keys, args=[*args, -1, -1])
        if int(result[0]) == -1:
            used, granted = await seed()
            result = await script(keys=keys, args=[*args, used, granted])
        return [int(x) for x in result]

    async def quota_reserve(
        self, key: str, seed: QuotaSeed, base: int, prompt: int, max_out: int, lease: str, now: float, ttl: float
    ) -> Reserved:
        status, out, used, granted, reserved = await self._seeded_call(
            self._reserve, key, [repr(now), lease, repr(ttl), base, prompt, max_out], seed, (self._held,)
        )
        return Reserved(status == 1, out, QuotaState(used, granted, reserved))

    async def quota_settle(self, key: str, lease: str, billed: int) -> None:
        await self._settle(keys=[*self._qkeys(key), self._held], args=[lease, billed])

    async def quota_recorded(self, settled: list[tuple[str, str, int]]) -> None:
        if settled:
            await self.redis.srem(self._held, *(f"b\t{self._k('q:' + key)}\t{lease}\t{billed}" for key, lease, billed in settled))

    async def quota_refresh(self, key: str, seed: QuotaSeed, base: int, cap: int, now: float) -> tuple[int, QuotaState]:
        grant, used, granted, reserved = await self._seeded_call(self._refresh, key, [repr(now), base, cap], seed)
        return grant, QuotaState(used, granted, reserved)

    async def quota_state(self, key: str, seed: QuotaSeed, now: float) -> QuotaState:
        _, used, granted, reserved = await self._seeded_call(self._state, key, [repr(now)], seed)
        return QuotaState(used, granted, reserved)

    async def renew(self, slot_keys: list[str], quota_key: str | None, lease: str, now: float, ttl: float) -> None:
        keys = [self._k(k) for k in slot_keys]
        if quota_key is not None:
            keys.append(self._qkeys(quota_key)[2])
        if keys:
            await self._renew(keys=keys, args=[lease, repr(now + ttl), repr(ttl)])

    # ---- replicas: a heartbeat each, and giving back what a dead one held (gateway/replicas.py)

    def _alive_key(self, replica: str) -> str:
        return self._k(f"alive:{replica}")

    async def heartbeat(self, timeout: float) -> bool:
        """Say this replica is alive for `timeout` seconds more; False if it had been silent
        for longer than that (other replicas may have given back what it held)."""
        return bool(await self._heartbeat(keys=[self._alive_key(self.replica), self._k("replicas")],
                                          args=[self.replica, max(1, int(timeout * 1000))]))

    async def dead_replicas(self) -> list[str]:
        """Replicas whose heartbeat has lapsed and that may still hold something."""
        names = sorted(await self.redis.smembers(self._k("replicas")))
        if not names:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self._alive_key(name))
            alive = await pipe.execute()
        return [n for n, a in zip(names, alive, strict=True) if not a and n != self.replica]

    async def held_by(self, replica: str) -> Held:
        held = Held([], [], [])
        quota_prefix = self._k("q:")
        for member in await self.redis.smembers(self._k(f"held:{replica}")):
            kind, key, rest = member.split("\t", 2)
            if kind == "s":
                held.slots.append((key, rest))
            elif key.startswith(quota_prefix) and kind == "q":
                held.reservations.append((key[len(quota_prefix):], rest))
            elif key.startswith(quota_prefix) and kind == "b":
                lease, _, tokens = rest.rpartition("\t")
                held.billed.append((key[len(quota_prefix):], lease, int(tokens)))
        return held

    async def give_back(self, replica: str, held: Held, recorded: dict[str, int]) -> int:
        """Put right what a dead replica held: its slots are freed; a reservation is billed as its
        request's record says (`recorded`: lease -> billed tokens), or not at all without one; a
        settlement whose record never reached the database is undone. Returns how many
        reservations and settlements this call put right (another replica sweeping the same dead
        one at the same time does the rest, never the same twice)."""
        held_key = self._k(f"held:{replica}")
        given = 0
        for key, lease in held.reservations:
            member = f"q\t{self._k('q:' + key)}\t{lease}"
            given += int(await self._give_back_quota(keys=[*self._qkeys(key), held_key], args=[lease, recorded.get(lease, 0), member]))
        for key, lease, tokens in held.billed:
            member = f"b\t{self._k('q:' + key)}\t{lease}\t{tokens}"
            if lease in recorded:
                given += int(await self.redis.srem(held_key, member))
            else:
                given += int(await self._undo(keys=[self._k("q:" + key), held_key], args=[member, tokens]))
        for key, lease in held.slots:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(key, lease)
                pipe.srem(held_key, f"s\t{key}\t{lease}")
                await pipe.execute()
        await self._forget(keys=[held_key, self._k("replicas")], args=[replica])
        return given

    async def close(self) -> None:
        # Stopped on purpose: the others need not wait for the heartbeat to lapse to give back
        # anything left (nothing, normally: every request was settled before this).
        try:
            await self.redis.delete(self._alive_key(self.replica))
        except Exception:
            pass
        await self.redis.aclose()
