"""Stored Responses API objects: kept when a request says `store: true`, read back by id and by
`previous_response_id`, and only ever by the account that created them.

Retention (`responses_ttl_days`, 0 = forever): a response older than that is gone for its owner
at once (reads and deletes answer as if it never existed), and `sweep_forever` deletes such rows
in the background, `SWEEP_BATCH` per transaction with a pause between, one pass every few
minutes in every process. Passes on several replicas at once are safe: on PostgreSQL each batch
takes only rows no other transaction holds (SKIP LOCKED); SQLite runs one writer at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from longcat.store.schema import responses


@dataclass(slots=True, frozen=True)
class StoredResponse:
    id: str
    account_id: int
    model: str
    status: str
    created_at: int
    body: dict[str, Any]
    items: list[dict[str, Any]]
    size: int = 0  # characters stored (body and items): what continuing from it carries along

    def history(self) -> list[dict[str, Any]]:
        """What a continuation starts from: the conversation's input, then this response's output."""
        return self.items + list(self.body.get("output") or [])


OFF_LOOP_CHARS = 256 * 1024
# Rows deleted per transaction, and the pause between two, so a backlog never holds locks long.
SWEEP_BATCH = 500
SWEEP_PAUSE = 0.2
# Seconds between two passes (each process picks a little more or less, so replicas spread out).
SWEEP_INTERVAL = 300.0
DAY = 86_400

log = logging.getLogger("longcat.responses")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class ResponseStore:
    def __init__(self, engine: AsyncEngine, *, ttl_days: float = 0, now: Callable[[], float] | None = None) -> None:
        import time

        self.engine = engine
        self.ttl = ttl_days * DAY  # 0: kept forever
        self.now = now or time.time

    def _alive(self):
        """The condition of a response that has not expired (true when nothing expires)."""
        if self.ttl <= 0:
            return responses.c.id.is_not(None)
        return responses.c.created_at >= int(self.now() - self.ttl)

    async def save(self, body: dict[str, Any], items: list[dict[str, Any]], *, account_id: int, key_id: int | None) -> None:
        # On a worker thread: a long conversation is megabytes of JSON, too long for the event loop.
        body_text, items_text = await asyncio.to_thread(lambda: (_dumps(body), _dumps(items)))
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(responses).values(
                    id=body["id"],
                    account_id=account_id,
                    key_id=key_id,
                    model=body["model"],
                    status=body["status"],
                    created_at=int(body["created_at"]),
                    body=body_text,
                    items=items_text,
                )
            )

    async def get(self, response_id: str, account_id: int) -> StoredResponse | None:
        """The response, if it exists and belongs to `account_id`; another account's is None."""
        query = (
            select(responses)
            .where(responses.c.id == response_id)
            .where(responses.c.account_id == account_id)
            .where(self._alive())  # expired, not yet swept: as good as deleted
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        size = len(row.body) + len(row.items)
        if size > OFF_LOOP_CHARS:
            body, items = await asyncio.to_thread(lambda: (json.loads(row.body), json.loads(row.items)))
        else:
            body, items = json.loads(row.body), json.loads(row.items)
        return StoredResponse(row.id, row.account_id, row.model, row.status, row.created_at, body, items, size)

    async def delete(self, response_id: str, account_id: int) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(responses)
                .where(responses.c.id == response_id)
                .where(responses.c.account_id == account_id)
                .where(self._alive())
            )
        return result.rowcount > 0

    async def delete_expired(self, *, batch: int = SWEEP_BATCH, pause: float = SWEEP_PAUSE) -> list[int]:
        """Delete what has expired, `batch` rows per transaction; returns the rows of each batch."""
        if self.ttl <= 0:
            return []
        cutoff = int(self.now() - self.ttl)
        done: list[int] = []
        while True:
            async with self.engine.begin() as conn:
                oldest = select(responses.c.id).where(responses.c.created_at < cutoff).order_by(responses.c.created_at).limit(batch)
                if conn.dialect.name == "postgresql":
                    oldest = oldest.with_for_update(skip_locked=True)  # rows another sweeper holds are its own
                result = await conn.execute(delete(responses).where(responses.c.id.in_(oldest.scalar_subquery())))
            done.append(result.rowcount)
            if result.rowcount < batch:
                return done
            await asyncio.sleep(pause)

    async def sweep_forever(self, interval: float = SWEEP_INTERVAL, first: float | None = None) -> None:
        """One `delete_expired` pass every `interval` seconds or so, until cancelled."""
        await asyncio.sleep(random.uniform(1, 5) if first is None else first)
        while True:
            try:
                batches = await self.delete_expired()
                if sum(batches):
                    log.info("deleted %d expired stored response(s) (responses_ttl_days = %g)", sum(batches), self.ttl / DAY)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database may be down for a while: try again next pass
                log.exception("deleting expired stored responses failed; trying again in %.0f s", interval)
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
