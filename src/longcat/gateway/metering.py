"""Counting what each request cost, however it ended, and writing it down.

Engines keep `CallContext.usage` current while tokens flow. When a request ends, `Meter.settle`
runs exactly once: it bills the quota, charges the rate limiter for the output, frees the
request's concurrency slot and writes a usage record.

Records are written by `UsageWriter` in batches (group commit): every request that ends while a
batch is being written joins the next one, so a busy server does one transaction per batch, not
one per request, and nothing is written per token. A request that finishes normally waits for
its batch to commit *before* its final event is sent, so a response the client saw complete is
always on disk. A crash (kill -9) can lose only the usage of requests that had not finished:
those in flight, and those cut off by their clients in the instant before the crash, whose
records were still queued (the time of one batch write, a few milliseconds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from longcat.engines.base import CallContext
from longcat.gateway.clock import beijing_day
from longcat.observe import metrics
from longcat.store.usage import UsageRecord, UsageStore

log = logging.getLogger("longcat.usage")

MAX_BATCH = 500
# A finishing request waits at most this long for its record to commit; past that the record
# stays queued (and keeps being retried) while the response goes out.
COMMIT_WAIT = 5.0


@dataclass(slots=True)
class _Pending:
    record: UsageRecord
    done: asyncio.Future[None] | None


class UsageWriter:
    """Group commit of usage records, with retries while the database is unavailable."""

    def __init__(self, store: UsageStore, on_committed: Callable[[list[UsageRecord]], Awaitable[None]] | None = None) -> None:
        self.store = store
        # Told of each batch once it is on disk (after its waiting requests were let go).
        self.on_committed = on_committed
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def commit(self, record: UsageRecord) -> None:
        """Queue a record and wait until it is durable (bounded by COMMIT_WAIT)."""
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(record, done))
        try:
            # No shield: if this wait is cancelled, so is `done`, which the writer then skips.
            async with asyncio.timeout(COMMIT_WAIT):
                await done
        except TimeoutError:
            log.warning("usage record %s not committed after %.0f s; still queued", record.request_id, COMMIT_WAIT)

    def submit(self, record: UsageRecord) -> None:
        """Queue a record without waiting (for requests that ended without a client to answer)."""
        self._queue.put_nowait(_Pending(record, None))

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        delay = 0.05
        while True:
            try:
                started = time.perf_counter()
                await self.store.write_batch([p.record for p in batch])
                metrics.usage_written(time.perf_counter() - started)
                break
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("writing %d usage records failed; retrying in %.1f s", len(batch), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for p in batch:
            if p.done is not None and not p.done.done():
                p.done.set_result(None)
        if self.on_committed is not None:
            try:
                await self.on_committed([p.record for p in batch])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("after committing %d usage records", len(batch))

    async def close(self) -> None:
        """Write everything still queued, then stop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        pending = []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for start in range(0, len(pending), MAX_BATCH):
            await self._write(pending[start : start + MAX_BATCH])
        close = getattr(self.store, "close", None)
        if close is not None:
            await asyncio.get_running_loop().run_in_executor(None, close)


def billed_tokens(ctx: CallContext, outcome: str, delivered: bool) -> int:
    """What the quota is charged. A request that failed (engine error, server shutdown) before the
    client got any output costs nothing; otherwise input and output both count (cached input too)."""
    if outcome in ("engine_error", "shutdown") and not delivered:
        return 0
    return ctx.usage.input_tokens + ctx.usage.output_tokens


def make_record(
    *,
    ctx: CallContext,
    account_id: int,
    key_id: int,
    model: str,
    endpoint: str,
    stream: bool,
    outcome: str,
    billed: int,
    latency_ms: int,
    day: str | None,
    now: float,
    base_quota: int,
) -> UsageRecord:
    u = ctx.usage
    return UsageRecord(
        request_id=ctx.request_id,
        account_id=account_id,
        key_id=key_id,
        model=model,
        endpoint=endpoint,
        stream=stream,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cached_tokens=u.cached_tokens,
        billed_tokens=billed,
        status=outcome,
        latency_ms=latency_ms,
        day=day or beijing_day(now),
        created_at=now,
        base_quota=base_quota,
    )
