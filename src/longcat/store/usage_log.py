"""The request log as the Usage pages filter it: one filter, three uses (the page of rows, the
totals and breakdowns over every matching row, and the CSV export of exactly those rows).

Totals and the per-key, per-model (or per-account) breakdowns are sums over `usage_rollup`
(per account, day, key, model and status), which `UsageStore.write_batch` keeps in step with the
records in the same transaction: every filter the page offers is a filter on its columns, so
they cost a few hundred rows whatever the number of requests. A page of rows is found by id in a
covering index first, then fetched, so deep pages do not drag whole rows through an OFFSET.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from longcat.store.schema import accounts, usage_daily, usage_records, usage_rollup

STATUSES = ("ok", "length", "client_closed", "engine_error", "shutdown", "cancelled")
COLUMNS = ("request_id", "created_at", "account_id", "key_id", "model", "endpoint", "stream", "input_tokens",
           "output_tokens", "cached_tokens", "billed_tokens", "status", "latency_ms", "day")
SUMS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "billed_tokens", "latency_ms")


@dataclass(slots=True, frozen=True)
class LogFilter:
    """Which records: `account_id` None means every account (admins only)."""

    account_id: int | None
    key_id: int | None = None
    model: str | None = None
    status: str | None = None
    day_from: str | None = None  # Beijing days, inclusive
    day_to: str | None = None

    def where(self, table=usage_records) -> list:
        c = table.c
        out = []
        if self.account_id is not None:
            out.append(c.account_id == self.account_id)
        if self.key_id is not None:
            out.append(c.key_id == self.key_id)
        if self.model:
            out.append(c.model == self.model)
        if self.status:
            out.append(c.status == self.status)
        if self.day_from:
            out.append(c.day >= self.day_from)
        if self.day_to:
            out.append(c.day <= self.day_to)
        return out


def _zero() -> dict[str, int]:
    return dict.fromkeys(SUMS, 0)


class UsageLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def summary(self, f: LogFilter, by: str = "key_id") -> dict[str, Any]:
        """Totals over every matching record, and breakdowns by `by` (key_id or account_id) and
        by model, largest first."""
        c = usage_rollup.c
        group = c.key_id if by == "key_id" else c.account_id
        query = (
            select(
                group, c.model, func.sum(c.requests), func.sum(c.input_tokens), func.sum(c.output_tokens),
                func.sum(c.cached_tokens), func.sum(c.billed_tokens), func.sum(c.latency_ms),
            )
            .where(*f.where(usage_rollup))
            .group_by(group, c.model)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        totals, first, models = _zero(), {}, {}
        for who, model, *sums in rows:
            for bucket in (totals, first.setdefault(who, _zero()), models.setdefault(model, _zero())):
                for name, value in zip(SUMS, sums, strict=True):
                    bucket[name] += int(value or 0)

        def ranked(groups: dict) -> list[dict[str, Any]]:
            return [{"id": k, **v} for k, v in sorted(groups.items(), key=lambda kv: (-kv[1]["billed_tokens"], -kv[1]["requests"], str(kv[0])))]

        return {"totals": totals, "by_" + by.removesuffix("_id"): ranked(first), "by_model": ranked(models)}

    async def page(self, f: LogFilter, limit: int, offset: int) -> list[dict[str, Any]]:
        c = usage_records.c
        ids = select(c.id).where(*f.where()).order_by(c.id.desc()).limit(limit).offset(offset)
        async with self.engine.connect() as conn:
            wanted = list((await conn.execute(ids)).scalars())
            if not wanted:
                return []
            rows = (await conn.execute(select(*[getattr(c, n) for n in COLUMNS], c.id).where(c.id.in_(wanted)).order_by(c.id.desc()))).all()
        return [dict(r._mapping) for r in rows]

    async def latest_id(self, account_id: int | None) -> int:
        query = select(func.max(usage_records.c.id))
        if account_id is not None:
            query = query.where(usage_records.c.account_id == account_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).scalar() or 0

    async def rows(self, f: LogFilter, chunk: int = 2000) -> AsyncIterator[dict[str, Any]]:
        """Every matching record, newest first, read a chunk at a time (for the CSV export)."""
        c = usage_records.c
        before: int | None = None
        while True:
            where = f.where() + ([c.id < before] if before is not None else [])
            query = select(*[getattr(c, n) for n in COLUMNS], c.id).where(*where).order_by(c.id.desc()).limit(chunk)
            async with self.engine.connect() as conn:
                batch = [dict(r._mapping) for r in (await conn.execute(query)).all()]
            for row in batch:
                yield row
            if len(batch) < chunk:
                return
            before = batch[-1]["id"]

    async def models(self, account_id: int | None) -> list[str]:
        """The models this account (or anyone) has used: the choices of the model filter."""
        query = select(usage_daily.c.model).distinct().order_by(usage_daily.c.model)
        if account_id is not None:
            query = query.where(usage_daily.c.account_id == account_id)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def daily(self, account_id: int | None, since_day: str) -> dict[str, dict[str, int]]:
        """Per day (oldest first): requests and tokens, for the 30-day chart."""
        d = usage_daily.c
        query = (
            select(d.day, func.sum(d.requests), func.sum(d.input_tokens), func.sum(d.output_tokens), func.sum(d.cached_tokens), func.sum(d.billed_tokens))
            .where(d.day >= since_day)
            .group_by(d.day)
            .order_by(d.day)
        )
        if account_id is not None:
            query = query.where(d.account_id == account_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        names = ("requests", "input_tokens", "output_tokens", "cached_tokens", "billed_tokens")
        return {r[0]: dict(zip(names, (int(v or 0) for v in r[1:]), strict=True)) for r in rows}

    async def emails(self, ids: set[int]) -> dict[int, str]:
        if not ids:
            return {}
        async with self.engine.connect() as conn:
            return dict((await conn.execute(select(accounts.c.id, accounts.c.email).where(accounts.c.id.in_(sorted(ids))))).all())

    async def request_ids(self, account_id: int, limit: int = 20) -> list[dict[str, Any]]:
        """The account's most recent requests, for the feedback form's picker."""
        c = usage_records.c
        query = (
            select(c.request_id, c.model, c.endpoint, c.created_at)
            .where(c.account_id == account_id)
            .order_by(c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(query)).all()]

    async def owns_request(self, account_id: int, request_id: str) -> bool:
        c = usage_records.c
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(c.id).where(and_(c.account_id == account_id, c.request_id == request_id)))).first()
        return row is not None


def with_account(f: LogFilter, account_id: int | None) -> LogFilter:
    return replace(f, account_id=account_id)


async def add_to_rollup(conn: AsyncConnection, records) -> None:
    """Add freshly written usage records to `usage_rollup`, in the caller's transaction."""
    sums: dict[tuple, list[int]] = {}
    for r in records:
        s = sums.setdefault((r.account_id, r.day, r.key_id, r.model, r.status), [0, 0, 0, 0, 0, 0])
        for i, v in enumerate((1, r.input_tokens, r.output_tokens, r.cached_tokens, r.billed_tokens, r.latency_ms)):
            s[i] += v
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    t = usage_rollup.c
    for (account_id, day, key_id, model, status), (n, inp, out, cached, billed, ms) in sorted(sums.items()):
        stmt = insert(usage_rollup).values(
            account_id=account_id, day=day, key_id=key_id, model=model, status=status, requests=n, input_tokens=inp,
            output_tokens=out, cached_tokens=cached, billed_tokens=billed, latency_ms=ms,
        )
        await conn.execute(stmt.on_conflict_do_update(
            index_elements=["account_id", "day", "key_id", "model", "status"],
            set_={"requests": t.requests + n, "input_tokens": t.input_tokens + inp, "output_tokens": t.output_tokens + out,
                  "cached_tokens": t.cached_tokens + cached, "billed_tokens": t.billed_tokens + billed, "latency_ms": t.latency_ms + ms},
        ))
