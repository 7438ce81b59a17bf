"""Stored Responses API objects: kept when a request says `store: true`, read back by id and by
`previous_response_id`, and only ever by the account that created them."""

from __future__ import annotations

import asyncio
import json
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


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class ResponseStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

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
        query = select(responses).where(responses.c.id == response_id).where(responses.c.account_id == account_id)
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
                delete(responses).where(responses.c.id == response_id).where(responses.c.account_id == account_id)
            )
        return result.rowcount > 0
