"""Past feedback submissions, for the Feedback page (one account) and the admin review (all)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from longcat.store.schema import accounts, feedback


class FeedbackLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def list(self, account_id: int | None, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        f = feedback.c
        query = (
            select(f.id, f.account_id, accounts.c.email, f.request_id, f.rating, f.category, f.text, f.valid,
                   f.refreshed, f.granted, f.day, f.created_at)
            .join(accounts, accounts.c.id == f.account_id)
            .order_by(f.id.desc())
            .limit(limit)
            .offset(offset)
        )
        count = select(func.count()).select_from(feedback)
        if account_id is not None:
            query = query.where(f.account_id == account_id)
            count = count.where(f.account_id == account_id)
        async with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in (await conn.execute(query)).all()]
            total = (await conn.execute(count)).scalar_one()
        for r in rows:
            r["valid"], r["refreshed"] = bool(r["valid"]), bool(r["refreshed"])
        return rows, total
