"""Feedback submissions and the daily counters that bound them.

The rules (what makes a submission valid) live in `gateway.feedback`; this module keeps the
books so that they hold on any number of replicas: a valid submission claims one of the day's
`valid` places with a conditional UPDATE and its text with a unique index, in one transaction;
a refused one is kept only while the day's `invalid` places last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from longcat.store.db import dialect_insert
from longcat.store.schema import feedback, feedback_days

Outcome = Literal["valid", "repeat", "limit", "invalid"]


@dataclass(slots=True, frozen=True)
class Recorded:
    outcome: Outcome  # valid, or why it was not counted
    id: int | None  # None: not stored (the day's places for refused submissions are used up)
    valid_today: int  # the account's valid submissions today, this one included


class FeedbackStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def seen(self, account_id: int, text_hash: str) -> bool:
        """Whether the account sent this text before (a cheap check; the unique claim decides)."""
        async with self.engine.connect() as conn:
            query = select(exists().where(and_(feedback.c.account_id == account_id, feedback.c.text_hash == text_hash)))
            return bool((await conn.execute(query)).scalar())

    async def record(self, row: dict[str, Any], *, valid: bool, daily_limit: int) -> Recorded:
        """Store a submission: counted if `valid` and a place and its text are free today."""
        if valid:
            try:
                async with self.engine.begin() as conn:
                    if await self._claim(conn, row, "valid", daily_limit):
                        result = await conn.execute(feedback.insert().values(**row, valid=True, counted_hash=row["text_hash"]))
                        return Recorded("valid", result.inserted_primary_key[0], await self._count(conn, row, "valid"))
                outcome: Outcome = "limit"
            except IntegrityError:
                outcome = "repeat"  # the same text counted at the same moment elsewhere; claim undone
        else:
            outcome = "invalid"
        async with self.engine.begin() as conn:
            stored = None
            if await self._claim(conn, row, "invalid", daily_limit):
                result = await conn.execute(feedback.insert().values(**row, valid=False, counted_hash=None))
                stored = result.inserted_primary_key[0]
            return Recorded(outcome, stored, await self._count(conn, row, "valid"))

    async def _claim(self, conn: AsyncConnection, row: dict[str, Any], column: str, limit: int) -> bool:
        """Take one of the day's `limit` places in `column`; False when none is left."""
        key = {"account_id": row["account_id"], "day": row["day"]}
        await conn.execute(dialect_insert(conn, feedback_days).values(**key, valid=0, invalid=0).on_conflict_do_nothing())
        counter = feedback_days.c[column]
        result = await conn.execute(
            update(feedback_days)
            .where(and_(feedback_days.c.account_id == key["account_id"], feedback_days.c.day == key["day"], counter < limit))
            .values({column: counter + 1})
        )
        return result.rowcount == 1

    async def _count(self, conn: AsyncConnection, row: dict[str, Any], column: str) -> int:
        query = select(feedback_days.c[column]).where(
            and_(feedback_days.c.account_id == row["account_id"], feedback_days.c.day == row["day"])
        )
        return int((await conn.execute(query)).scalar() or 0)

    async def valid_today(self, account_id: int, day: str) -> int:
        async with self.engine.connect() as conn:
            return await self._count(conn, {"account_id": account_id, "day": day}, "valid")

    async def mark_refreshed(self, feedback_id: int, granted: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(feedback).where(feedback.c.id == feedback_id).values(refreshed=True, granted=granted))
