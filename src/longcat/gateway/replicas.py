"""Replicas that die: the others put right what their requests held, within seconds.

With Redis counters, every replica keeps a heartbeat key that lapses `replica_timeout` seconds
after its last beat, and files under its own name each concurrency slot and quota reservation its
requests take, and each settlement until its usage record is on disk. Every replica beats four
times per timeout and, each time, looks for replicas whose heartbeat has lapsed. Their slots are
freed. Their reservations are given back: billed as the request's usage record says if it has one
(it finished, and its replica died before settling it), else not at all, exactly as a request cut
short by the crash of a single process costs nothing. Their settlements whose records never
reached the database are undone. So the counters agree with the database again, and an account
whose requests were in flight on a dead replica is not locked out of its concurrency slots or its
quota until the leases expire (`lease_seconds`, which stays as the last resort).

A replica that was only silent (its event loop or its link to Redis stalled for longer than the
timeout) learns so from its next heartbeat, and says so in the log: its requests then finish with
their slots already freed.
"""

from __future__ import annotations

import asyncio
import logging

from longcat.gateway.counters import RedisCounters
from longcat.store.usage import UsageStore

log = logging.getLogger("longcat.replicas")


class ReplicaWatch:
    def __init__(self, counters: RedisCounters, usage: UsageStore, timeout: float) -> None:
        self.counters = counters
        self.usage = usage
        self.timeout = max(0.5, timeout)
        self._beating = False  # the first heartbeat has been sent

    async def beat(self) -> None:
        was_alive = await self.counters.heartbeat(self.timeout)
        if self._beating and not was_alive:
            log.warning(
                "replica %s was silent for more than %g s (replica_timeout): the other replicas may have "
                "given back the slots and reservations of its requests in flight",
                self.counters.replica, self.timeout,
            )
        self._beating = True

    async def sweep(self) -> int:
        """Give back what every dead replica held; returns how many reservations were."""
        given = 0
        for replica in await self.counters.dead_replicas():
            held = await self.counters.held_by(replica)
            recorded = await self.usage.billed(held.leases) if held.leases else {}
            n = await self.counters.give_back(replica, held, recorded)
            if held.leases or held.slots:
                log.info(
                    "replica %s stopped answering (no heartbeat for %g s): put right %d quota reservations and "
                    "settlements (%d with a usage record) and freed %d concurrency slots",
                    replica, self.timeout, n, sum(1 for lease in held.leases if lease in recorded), len(held.slots),
                )
            given += n
        return given

    async def run(self) -> None:
        """Beat and sweep until cancelled; a failure (Redis unreachable) is logged and retried."""
        while True:
            await asyncio.sleep(self.timeout / 4)
            try:
                await self.beat()
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica heartbeat or sweep failed; retrying")
