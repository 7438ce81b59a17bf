"""Usage records, daily aggregates, per-day quota state and the quota ledger."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from longcat.store.db import dialect_insert
from longcat.store.schema import quota_days, quota_ledger, usage_daily, usage_records


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


# The batch's statements, as SQL both SQLite (>= 3.24) and PostgreSQL speak, written once: building
# them with SQLAlchemy's expression language for every batch cost more than running them.
_RECORD_COLUMNS = (
    "request_id", "account_id", "key_id", "model", "endpoint", "stream", "input_tokens", "output_tokens",
    "cached_tokens", "billed_tokens", "status", "latency_ms", "day", "created_at",
)
INSERT_RECORD = (
    f"INSERT INTO usage_records ({', '.join(_RECORD_COLUMNS)}) VALUES ({', '.join(':' + c for c in _RECORD_COLUMNS)}) "
    "ON CONFLICT (request_id) DO NOTHING"
)
UPSERT_DAILY = (
    "INSERT INTO usage_daily (account_id, day, model, requests, input_tokens, output_tokens, cached_tokens, billed_tokens) "
    "VALUES (:account_id, :day, :model, :requests, :input_tokens, :output_tokens, :cached_tokens, :billed_tokens) "
    "ON CONFLICT (account_id, day, model) DO UPDATE SET requests = usage_daily.requests + excluded.requests, "
    "input_tokens = usage_daily.input_tokens + excluded.input_tokens, output_tokens = usage_daily.output_tokens + excluded.output_tokens, "
    "cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens, billed_tokens = usage_daily.billed_tokens + excluded.billed_tokens"
)
OPEN_DAY = (
    "INSERT INTO quota_days (account_id, day, base, granted, used) VALUES (:account_id, :day, :base, 0, 0) "
    "ON CONFLICT (account_id, day) DO NOTHING"
)
LEDGER_ALLOWANCE = (
    "INSERT INTO quota_ledger (account_id, day, kind, tokens, note, created_at) "
    "VALUES (:account_id, :day, 'daily_allowance', :base, '', :created_at)"
)
ADD_USED = "UPDATE quota_days SET used = used + :billed WHERE account_id = :account_id AND day = :day"
LAST_USED = "UPDATE api_keys SET last_used_at = :at WHERE id = :key_id"
LAST_USED_EVERY = 60  # seconds (see UsageStore._last_used)
UPSERT_ROLLUP = (
    "INSERT INTO usage_rollup (account_id, day, key_id, model, status, requests, input_tokens, output_tokens, cached_tokens, "
    "billed_tokens, latency_ms) VALUES (:account_id, :day, :key_id, :model, :status, :requests, :input_tokens, :output_tokens, "
    ":cached_tokens, :billed_tokens, :latency_ms) "
    "ON CONFLICT (account_id, day, key_id, model, status) DO UPDATE SET requests = usage_rollup.requests + excluded.requests, "
    "input_tokens = usage_rollup.input_tokens + excluded.input_tokens, output_tokens = usage_rollup.output_tokens + excluded.output_tokens, "
    "cached_tokens = usage_rollup.cached_tokens + excluded.cached_tokens, billed_tokens = usage_rollup.billed_tokens + excluded.billed_tokens, "
    "latency_ms = usage_rollup.latency_ms + excluded.latency_ms"
)
_TEXT = {name: text(sql) for name, sql in (
    ("daily", UPSERT_DAILY), ("open", OPEN_DAY), ("ledger", LEDGER_ALLOWANCE), ("used", ADD_USED),
    ("keys", LAST_USED), ("rollup", UPSERT_ROLLUP),
)}


def _record_params(r: UsageRecord) -> dict[str, Any]:
    return {
        "request_id": r.request_id, "account_id": r.account_id, "key_id": r.key_id, "model": r.model,
        "endpoint": r.endpoint, "stream": r.stream, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
        "cached_tokens": r.cached_tokens, "billed_tokens": r.billed_tokens, "status": r.status,
        "latency_ms": r.latency_ms, "day": r.day, "created_at": r.created_at,
    }


@dataclass(slots=True)
class _BatchParams:
    """What a batch of fresh records adds to the aggregates, as statement parameters."""

    daily: list[dict[str, Any]]
    quota: list[dict[str, Any]]  # account_id, day, billed, base
    keys: list[dict[str, Any]]
    rollup: list[dict[str, Any]]


def batch_params(fresh: list[UsageRecord]) -> _BatchParams:
    daily: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    quota: dict[tuple[int, str], list[int]] = {}
    rollup: dict[tuple, list[int]] = {}
    last_used: dict[int, float] = {}
    for r in fresh:
        d = daily[(r.account_id, r.day, r.model)]
        d[0] += 1
        d[1] += r.input_tokens
        d[2] += r.output_tokens
        d[3] += r.cached_tokens
        d[4] += r.billed_tokens
        q = quota.setdefault((r.account_id, r.day), [0, r.base_quota])
        q[0] += r.billed_tokens
        u = rollup.setdefault((r.account_id, r.day, r.key_id, r.model, r.status), [0, 0, 0, 0, 0, 0])
        u[0] += 1
        u[1] += r.input_tokens
        u[2] += r.output_tokens
        u[3] += r.cached_tokens
        u[4] += r.billed_tokens
        u[5] += r.latency_ms
        last_used[r.key_id] = max(last_used.get(r.key_id, 0.0), r.created_at)
    # Sorted, so that concurrent writers (replicas) take row locks in the same order.
    return _BatchParams(
        daily=[
            {"account_id": a, "day": day, "model": m, "requests": n, "input_tokens": i, "output_tokens": o,
             "cached_tokens": c, "billed_tokens": b}
            for (a, day, m), (n, i, o, c, b) in sorted(daily.items())
        ],
        quota=[{"account_id": a, "day": day, "billed": b, "base": base} for (a, day), (b, base) in sorted(quota.items())],
        keys=[{"key_id": k, "at": int(at)} for k, at in sorted(last_used.items())],
        rollup=[
            {"account_id": a, "day": day, "key_id": k, "model": m, "status": st, "requests": n, "input_tokens": i,
             "output_tokens": o, "cached_tokens": c, "billed_tokens": b, "latency_ms": ms}
            for (a, day, k, m, st), (n, i, o, c, b, ms) in sorted(rollup.items())
        ],
    )


def _sqlite_path(engine: AsyncEngine) -> str | None:
    """The database file of a SQLite engine (None for PostgreSQL or an in-memory database)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return url.database


class UsageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Accounts whose quota row of a day this process knows exists (skips one statement a
        # batch), for the two most recent days only: older days are done.
        self._opened: dict[str, set[int]] = {}
        # When this process last wrote each key's `last_used_at`: it is written at most once a
        # minute per key (the console shows it to the minute), which saves a statement and a
        # page write in nearly every batch.
        self._last_used: dict[int, int] = {}
        # On SQLite a batch is written on a thread of its own, with a connection of its own, in
        # one hop from the event loop (not one per statement, as through aiosqlite).
        self._sqlite_file = _sqlite_path(engine)
        self._writer: ThreadPoolExecutor | None = None
        self._sqlite: sqlite3.Connection | None = None

    async def write_batch(self, records: list[UsageRecord]) -> None:
        """Write records, their daily aggregates and the quota they used, in one transaction,
        so the three always agree. A record already written (same request id) is skipped, so a
        batch retried after an unclear failure is never counted twice."""
        if not records:
            return
        if self._sqlite_file is not None:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="usage-sqlite")
            opened, keys = await asyncio.get_running_loop().run_in_executor(self._writer, self._write_sqlite, records)
        else:
            opened, keys = await self._write_sqlalchemy(records)
        # Only once the transaction committed: a rolled-back day must be opened again.
        for account_id, day in opened:
            self._opened.setdefault(day, set()).add(account_id)
        for day in sorted(self._opened)[:-2]:
            del self._opened[day]
        for k in keys:
            self._last_used[k["key_id"]] = k["at"]
        if len(self._last_used) > 100_000:
            self._last_used.clear()

    def _stale_keys(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The keys whose `last_used_at` this process has not written in the last minute."""
        return [k for k in keys if k["at"] - self._last_used.get(k["key_id"], 0) >= LAST_USED_EVERY]

    def _unopened(self, quota: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [q for q in quota if q["account_id"] not in self._opened.get(q["day"], ())]

    def _write_sqlite(self, records: list[UsageRecord]) -> tuple[list[tuple[int, str]], list[dict[str, Any]]]:
        """The batch in one transaction, on the writer thread (plain `sqlite3`)."""
        db = self._sqlite
        if db is None:
            db = self._sqlite = sqlite3.connect(self._sqlite_file, timeout=10, isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000", "foreign_keys=ON"):
                db.execute("PRAGMA " + pragma)
        try:
            db.execute("BEGIN IMMEDIATE")
            fresh = [r for r in records if db.execute(INSERT_RECORD, _record_params(r)).rowcount]
            opened: list[tuple[int, str]] = []
            keys: list[dict[str, Any]] = []
            if fresh:
                p = batch_params(fresh)
                db.executemany(UPSERT_DAILY, p.daily)
                for q in self._unopened(p.quota):
                    if db.execute(OPEN_DAY, q).rowcount:
                        db.execute(LEDGER_ALLOWANCE, {**q, "created_at": time.time()})
                    opened.append((q["account_id"], q["day"]))
                db.executemany(ADD_USED, p.quota)
                keys = self._stale_keys(p.keys)
                db.executemany(LAST_USED, keys)
                db.executemany(UPSERT_ROLLUP, p.rollup)  # the console's totals and breakdowns
            db.execute("COMMIT")
            return opened, keys
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                # The connection is not usable: the next batch (the retry) opens another.
                self._sqlite = None
                db.close()
            raise

    async def _write_sqlalchemy(self, records: list[UsageRecord]) -> tuple[list[tuple[int, str]], list[dict[str, Any]]]:
        opened: list[tuple[int, str]] = []
        keys: list[dict[str, Any]] = []
        async with self.engine.begin() as conn:
            inserted = await conn.execute(
                dialect_insert(conn, usage_records)
                .on_conflict_do_nothing(index_elements=["request_id"])
                .returning(usage_records.c.request_id),
                [_record_params(r) for r in records],
            )
            fresh_ids = set(inserted.scalars())
            fresh = [r for r in records if r.request_id in fresh_ids]
            if not fresh:
                return opened, keys
            p = batch_params(fresh)
            await conn.execute(_TEXT["daily"], p.daily)
            for q in self._unopened(p.quota):
                if (await conn.execute(_TEXT["open"], q)).rowcount:
                    await conn.execute(_TEXT["ledger"], {**q, "created_at": time.time()})
                opened.append((q["account_id"], q["day"]))
            await conn.execute(_TEXT["used"], [{k: q[k] for k in ("account_id", "day", "billed")} for q in p.quota])
            keys = self._stale_keys(p.keys)
            if keys:
                await conn.execute(_TEXT["keys"], keys)
            await conn.execute(_TEXT["rollup"], p.rollup)  # the console's totals and breakdowns
        return opened, keys

    def close(self) -> None:
        """Close the SQLite writer's connection and thread (after the last batch)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None

            def shut() -> None:
                if self._sqlite is not None:
                    self._sqlite.close()
                    self._sqlite = None

            writer.submit(shut)
            writer.shutdown(wait=True)

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

    async def billed(self, request_ids: list[str]) -> dict[str, int]:
        """The billed tokens of those requests that have a record (for a dead replica's leases)."""
        out: dict[str, int] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(request_ids), 500):
                chunk = request_ids[start : start + 500]
                rows = await conn.execute(
                    select(usage_records.c.request_id, usage_records.c.billed_tokens).where(usage_records.c.request_id.in_(chunk))
                )
                out.update({rid: int(billed) for rid, billed in rows})
        return out

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
