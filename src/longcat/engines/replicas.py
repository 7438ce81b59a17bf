"""Which replica of an upstream model takes a request, and what each replica has been through.

`ReplicaSet.choose` picks the replica with the fewest requests in flight for its `weight`
(round-robin among equals), passing over replicas that are out:

- failing their health checks (`probed`, fed by the engine's background probe);
- asked by a 429 to wait (its `Retry-After`; not counted as a failure);
- behind an open circuit: after `circuit_failures` consecutive failures of real requests
  (no connection, a 5xx, a timeout, a stream that broke) the replica gets nothing for
  `circuit_cooldown` seconds, then one trial request (half-open): an answer closes the circuit,
  a failure opens it again. A replica that failed once is tried last for the same cool-down.

Everything here lives in one process and needs no lock: it is only touched from the event loop,
between awaits. Each gateway process keeps its own figures and probes on its own.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from longcat.canonical import ApiError

# How a request to a replica ended, for the circuit and the figures.
OK = "ok"  # answered (a 4xx about the request counts: the replica works)
FAILED = "failed"  # no connection, a 5xx, a timeout, a reply cut short
BUSY = "busy"  # a 429: skipped for its Retry-After, not a failure
LEFT = "left"  # the client went away first: says nothing about the replica

# Consecutive failed health checks that take a replica out, and passed ones that bring it back.
HEALTH_FAILS = 2
HEALTH_PASSES = 2


@dataclass(slots=True, frozen=True)
class ReplicaStats:
    """One replica's figures, for the metrics: `replica` is its host:port (never a credential
    or a path); `latency_seconds_total` sums, over `requests`, the seconds from sending a request
    to the end of its reply."""

    replica: str
    inflight: int
    healthy: bool
    circuit_open: bool
    requests: int
    errors: int
    latency_seconds_total: float


def host_and_port(parts: SplitResult) -> tuple[str, int | None]:
    """The host of a split URL as it is written in one (IPv6 in brackets), and its port if it
    names a valid one."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        return host, parts.port
    except ValueError:
        return host, None


def replica_label(url: str) -> str:
    """host:port of a base URL (the scheme's port if it names none)."""
    parts = urlsplit(url)
    host, port = host_and_port(parts)
    return f"{host or '?'}:{port or (443 if parts.scheme == 'https' else 80)}"


@dataclass(slots=True, eq=False)
class Replica:
    """One replica's state; `ReplicaSet` is the only writer."""

    url: str
    label: str
    weight: float = 1.0
    inflight: int = 0
    requests: int = 0
    errors: int = 0
    latency_seconds_total: float = 0.0
    healthy: bool = True
    failures: int = 0  # consecutive failures of real requests
    open_until: float = 0.0  # monotonic time the open circuit lets a trial through
    trial: bool = False  # the half-open circuit's one trial request is out
    busy_until: float = 0.0  # a 429 asked us to wait until then
    last_until: float = 0.0  # a recent failure: tried after the others until then
    probe_fails: int = 0
    probe_passes: int = 0


class Lease:
    """One request's hold on a replica, from `ReplicaSet.take` to `done` (once; later calls do
    nothing), so the in-flight count cannot be given back twice."""

    __slots__ = ("replicas", "replica", "started", "trial", "finished")

    def __init__(self, replicas: ReplicaSet, replica: Replica, trial: bool) -> None:
        self.replicas = replicas
        self.replica = replica
        self.started = time.monotonic()
        self.trial = trial
        self.finished = False

    def answered(self) -> None:
        """The replica answered (headers of a non-5xx reply): a half-open circuit closes now,
        without waiting for a long reply to end."""
        if self.trial:
            self.trial = self.replica.trial = False
            self.replicas.closed(self.replica)

    def done(self, outcome: str, wait: float = 0.0) -> None:
        """The request ended with `outcome`; `wait`: a 429's Retry-After in seconds."""
        if not self.finished:
            self.finished = True
            self.replicas.release(self, outcome, wait)


class ReplicaSet:
    """A model's replicas: the choice of one per request, the circuit breaker and health state."""

    def __init__(
        self,
        urls: list[str],
        weights: list[float] | None = None,
        *,
        model_id: str,
        log: logging.Logger,
        circuit_failures: int = 5,
        circuit_cooldown: float = 5.0,
        health_interval: float = 0.0,
    ) -> None:
        weights = weights or [1.0] * len(urls)
        self.replicas = [Replica(url, replica_label(url), weight) for url, weight in zip(urls, weights, strict=True)]
        self.model_id = model_id
        self.log = log
        self.circuit_failures = circuit_failures
        self.circuit_cooldown = circuit_cooldown
        self.health_interval = health_interval
        self._turn = itertools.count()

    # ------------------------------------------------------------------ choosing

    def _available(self, r: Replica, now: float) -> bool:
        if not r.healthy or r.busy_until > now:
            return False
        if 0 < self.circuit_failures <= r.failures:  # open, or half-open with its trial out
            return now >= r.open_until and not r.trial
        return True

    def choose(self, tried: list[Replica]) -> Replica | None:
        """The replica for the next attempt (none of `tried`), or None if every other one is out.

        Fewest in flight for its weight; a replica that failed recently only after the others;
        among equals, the one after the last start (round-robin). O(replicas), no await."""
        replicas = self.replicas
        now = time.monotonic()
        if len(replicas) == 1:
            only = replicas[0]
            return only if not tried and self._available(only, now) else None
        n = len(replicas)
        start = next(self._turn) % n
        best: Replica | None = None
        best_late, best_load = True, math.inf
        for k in range(n):
            r = replicas[(start + k) % n]
            if r in tried or not self._available(r, now):
                continue
            late, load = r.last_until > now, r.inflight / r.weight
            if best is None or (late, load) < (best_late, best_load):
                best, best_late, best_load = r, late, load
        return best

    def take(self, r: Replica) -> Lease:
        r.inflight += 1
        r.requests += 1
        trial = 0 < self.circuit_failures <= r.failures
        if trial:
            r.trial = True
        return Lease(self, r, trial)

    # ------------------------------------------------------------------ outcomes

    def release(self, lease: Lease, outcome: str, wait: float = 0.0) -> None:
        r = lease.replica
        now = time.monotonic()
        r.inflight -= 1
        r.latency_seconds_total += now - lease.started
        if lease.trial:
            r.trial = False
        if outcome == OK:
            if r.failures >= self.circuit_failures > 0:
                self.closed(r)
            r.failures = 0
            r.last_until = 0.0
        elif outcome == FAILED:
            r.errors += 1
            r.failures += 1
            r.last_until = now + self.circuit_cooldown
            if 0 < self.circuit_failures <= r.failures:
                if r.failures == self.circuit_failures:
                    self.log.warning("model %s: replica %s failed %d requests in a row; none go to it for %g s",
                                     self.model_id, r.label, r.failures, self.circuit_cooldown)
                r.open_until = now + self.circuit_cooldown
        elif outcome == BUSY:
            r.busy_until = max(r.busy_until, now + wait)

    def closed(self, r: Replica) -> None:
        """A half-open circuit's trial was answered: the replica takes requests again."""
        if r.failures >= self.circuit_failures > 0:
            self.log.info("model %s: replica %s answers again; requests go to it", self.model_id, r.label)
        r.failures = 0
        r.last_until = 0.0

    def probed(self, r: Replica, passed: bool, why: str = "") -> None:
        """One health check's verdict: out after HEALTH_FAILS failures in a row, back after
        HEALTH_PASSES passes in a row."""
        if passed:
            r.probe_fails = 0
            r.probe_passes += 1
            if not r.healthy and r.probe_passes >= HEALTH_PASSES:
                r.healthy = True
                self.log.info("model %s: replica %s passes its health checks again; back in", self.model_id, r.label)
        else:
            r.probe_passes = 0
            r.probe_fails += 1
            if r.healthy and r.probe_fails >= HEALTH_FAILS:
                r.healthy = False
                self.log.warning("model %s: replica %s failed %d health checks (%s); taken out",
                                 self.model_id, r.label, r.probe_fails, why)

    # ------------------------------------------------------------------ when all are out

    def unavailable(self) -> ApiError:
        """The 503 for a request that found every replica out: why, and when to retry, without
        naming any of them."""
        now = time.monotonic()
        unhealthy = sum(not r.healthy for r in self.replicas)
        busy = sum(r.healthy and r.busy_until > now for r in self.replicas)
        broken = len(self.replicas) - unhealthy - busy
        waits = [r.busy_until - now for r in self.replicas if r.healthy and r.busy_until > now]
        waits += [max(r.open_until - now, 1.0) for r in self.replicas if r.healthy and r.busy_until <= now]
        if unhealthy:
            waits.append(self.health_interval * HEALTH_PASSES)
        seconds = max(1, math.ceil(min(waits, default=1.0)))
        reasons = [f"{n} {what}" for n, what in (
            (unhealthy, "failing health checks"), (busy, "asking to wait"), (broken, "set aside after repeated failures")) if n]
        count = len(self.replicas)
        if busy == count:
            return ApiError(
                "overloaded",
                "overloaded",
                f"The model server{'s' if count > 1 else ''} behind {self.model_id!r} "
                f"{'are' if count > 1 else 'is'} busy (asked to wait); retry in {seconds} s.",
                headers={"Retry-After": str(seconds)},
            )
        return ApiError(
            "overloaded",
            "upstream_unavailable",
            f"No server of the model {self.model_id!r} can take requests right now "
            f"({count} replica{'s' if count != 1 else ''}: {', '.join(reasons)}); retry in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )

    # ------------------------------------------------------------------ figures

    def stats(self) -> list[ReplicaStats]:
        return [
            ReplicaStats(r.label, r.inflight, r.healthy, 0 < self.circuit_failures <= r.failures, r.requests, r.errors,
                         r.latency_seconds_total)
            for r in self.replicas
        ]
