"""Usage records, daily aggregates, per-day quota state and the quota ledger."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from longcat.store.db import dialect_insert
from longcat.store.schema import api_keys, quota_days, quota_ledger, usage_daily, usage_records
from longcat.store.usage_log import add_to_rollup


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    account_id: int
    key_id: int
    model: str
    endpoint: str
    stream: bool
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    billed_tokens: int
    status: str
    latency_ms: int
    day: str
    created_at: float
    # The account's daily allowance on that day: recorded with the day's first usage.
    base_quota: int = 0


@dataclass(slots=True, frozen=True)
class QuotaDay:
    base: int
    granted: int
    used: int


class UsageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Accounts whose quota row of a day this process knows exists (skips one statement a
        # batch), for the two most recent days only: older days are done.
        self._opened: dict[str, set[int]] = {}

    async def write_batch(self, records: list[UsageRecord]) -> None:
        """Write records, their daily aggregates and the quota they used, in one transaction,
        so the three always agree. A record already written (same request id) is skipped, so a
        batch retried after an unclear failure is never counted twice."""
        if not records:
            return
        async with self.engine.begin() as conn:
            inserted = await conn.execute(
                dialect_insert(conn, usage_records)
                .on_conflict_do_nothing(index_elements=["request_id"])
                .returning(usage_records.c.request_id),
                [
                    {
                        "request_id": r.request_id,
                        "account_id": r.account_id,
                        "key_id": r.key_id,
                        "model": r.model,
                        "endpoint": r.endpoint,
                        "stream": r.stream,
                        "input_tokens": r.input_tokens,
                        "output_tokens": r.output_tokens,
                        "cached_tokens": r.cached_tokens,
                        "billed_tokens": r.billed_tokens,
                        "status": r.status,
                        "latency_ms": r.latency_ms,
                        "day": r.day,
                        "created_at": r.created_at,
                    }
                    for r in records
                ],
            )
            fresh_ids = set(inserted.scalars())
            fresh = [r for r in records if r.request_id in fresh_ids]
            if not fresh:
                return
            daily: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
            quota: dict[tuple[int, str], list[int]] = {}
            for r in fresh:
                d = daily[(r.account_id, r.day, r.model)]
                d[0] += 1
                d[1] += r.input_tokens
                d[2] += r.output_tokens
                d[3] += r.cached_tokens
                d[4] += r.billed_tokens
                q = quota.setdefault((r.account_id, r.day), [0, r.base_quota])
                q[0] += r.billed_tokens
            for (account_id, day, model), (n, inp, out, cached, billed) in sorted(daily.items()):
                stmt = dialect_insert(conn, usage_daily).values(
                    account_id=account_id,
                    day=day,
                    model=model,
                    requests=n,
                    input_tokens=inp,
                    output_tokens=out,
                    cached_tokens=cached,
                    billed_tokens=billed,
                )
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["account_id", "day", "model"],
                        set_={
                            "requests": usage_daily.c.requests + n,
                            "input_tokens": usage_daily.c.input_tokens + inp,
                            "output_tokens": usage_daily.c.output_tokens + out,
                            "cached_tokens": usage_daily.c.cached_tokens + cached,
                            "billed_tokens": usage_daily.c.billed_tokens + billed,
                        },
                    )
                )
            opened = []
            for (account_id, day), (billed, base) in sorted(quota.items()):
                if account_id not in self._opened.get(day, ()):
                    await self._open_day(conn, account_id, day, base)
                    opened.append((account_id, day))
                await conn.execute(
                    update(quota_days)
                    .where(and_(quota_days.c.account_id == account_id, quota_days.c.day == day))
                    .values(used=quota_days.c.used + billed)
                )
            # When each key was last used, for the keys list: one statement per batch and key.
            last_used: dict[int, float] = {}
            for r in fresh:
                last_used[r.key_id] = max(last_used.get(r.key_id, 0.0), r.created_at)
            for key_id, at in sorted(last_used.items()):
                await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=int(at)))
            await add_to_rollup(conn, fresh)  # the console's totals and breakdowns
        # Only once the transaction committed: a rolled-back day must be opened again.
        for account_id, day in opened:
            self._opened.setdefault(day, set()).add(account_id)
        for day in sorted(self._opened)[:-2]:
            del self._opened[day]

    async def _open_day(self, conn: AsyncConnection, account_id: int, day: str, base: int) -> None:
        """Create the day's quota row on first use, and record the day's allowance in the ledger."""
        inserted = await conn.execute(
            dialect_insert(conn, quota_days)
            .values(account_id=account_id, day=day, base=base, granted=0, used=0)
            .on_conflict_do_nothing(index_elements=["account_id", "day"])
        )
        if inserted.rowcount:
            await conn.execute(
                quota_ledger.insert().values(
                    account_id=account_id, day=day, kind="daily_allowance", tokens=base, note="", created_at=time.time()
                )
            )

    async def grant(self, account_id: int, day: str, base: int, tokens: int, kind: str, note: str = "") -> None:
        """Add quota for the day (a feedback refresh, an admin change) and record it in the ledger."""
        async with self.engine.begin() as conn:
            await self._open_day(conn, account_id, day, base)
            await conn.execute(
                update(quota_days)
                .where(and_(quota_days.c.account_id == account_id, quota_days.c.day == day))
                .values(granted=quota_days.c.granted + tokens)
            )
            await conn.execute(
                quota_ledger.insert().values(
                    account_id=account_id, day=day, kind=kind, tokens=tokens, note=note[:200], created_at=time.time()
                )
            )

    async def quota_day(self, account_id: int, day: str) -> QuotaDay | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(quota_days.c.base, quota_days.c.granted, quota_days.c.used).where(
                        and_(quota_days.c.account_id == account_id, quota_days.c.day == day)
                    )
                )
            ).first()
        return QuotaDay(*row) if row else None

    async def ledger(self, account_id: int, day: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(quota_ledger.c.kind, quota_ledger.c.tokens, quota_ledger.c.note, quota_ledger.c.created_at)
                    .where(and_(quota_ledger.c.account_id == account_id, quota_ledger.c.day == day))
                    .order_by(quota_ledger.c.id)
                )
            ).all()
        return [dict(r._mapping) for r in rows]

    async def daily(self, account_id: int, since_day: str) -> list[dict[str, Any]]:
        """Per day and model, from `since_day` on, oldest first."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(usage_daily)
                    .where(and_(usage_daily.c.account_id == account_id, usage_daily.c.day >= since_day))
                    .order_by(usage_daily.c.day, usage_daily.c.model)
                )
            ).all()
        return [{k: v for k, v in r._mapping.items() if k != "account_id"} for r in rows]

    async def daily_for_day(self, account_id: int, day: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(usage_daily)
                    .where(and_(usage_daily.c.account_id == account_id, usage_daily.c.day == day))
                    .order_by(usage_daily.c.model)
                )
            ).all()
        return [{k: v for k, v in r._mapping.items() if k not in ("account_id", "day")} for r in rows]

    async def adjust_base(self, account_id: int, day: str, new_base: int) -> int:
        """An admin changed the daily quota: move today's allowance, and say so in the ledger.
        Returns the change (0 when the day has not started for the account)."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(quota_days.c.base).where(and_(quota_days.c.account_id == account_id, quota_days.c.day == day))
                )
            ).first()
            if row is None or row.base == new_base:
                return 0
            delta = new_base - row.base
            await conn.execute(
                update(quota_days)
                .where(and_(quota_days.c.account_id == account_id, quota_days.c.day == day))
                .values(base=new_base)
            )
            await conn.execute(
                quota_ledger.insert().values(
                    account_id=account_id, day=day, kind="admin_adjust", tokens=delta, note="daily quota changed", created_at=time.time()
                )
            )
        return delta

    async def records(self, account_id: int, day: str, limit: int = 100) -> list[dict[str, Any]]:
        """The day's most recent requests, newest first."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(usage_records)
                    .where(and_(usage_records.c.account_id == account_id, usage_records.c.day == day))
                    .order_by(usage_records.c.id.desc())
                    .limit(limit)
                )
            ).all()
        return [{k: v for k, v in r._mapping.items() if k not in ("id", "account_id")} for r in rows]

    async def totals(self, account_id: int, day: str) -> dict[str, int]:
        """The day's totals, from the daily aggregate (a row per model), never from the records:
        an account with a million requests today costs the same as one with ten."""
        return sum_rows(await self.daily_for_day(account_id, day))


TOTAL_FIELDS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "billed_tokens")


def sum_rows(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Totals of aggregate rows (e.g. `daily_for_day`'s, one per model)."""
    return {name: sum(int(r[name]) for r in rows) for name in TOTAL_FIELDS}
