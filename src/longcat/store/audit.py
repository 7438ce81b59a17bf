"""The audit log: every change an admin makes, append-only, shown on the admin pages."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from longcat.store.schema import audit_log


class AuditStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record(
        self,
        actor_id: int | None,
        actor_email: str,
        action: str,
        *,
        account_id: int | None = None,
        key_id: int | None = None,
        conn: AsyncConnection | None = None,
        **detail: Any,
    ) -> None:
        """One entry; `detail` holds what changed (never a secret: callers pass hints, not keys)."""
        values = {
            "actor_id": actor_id,
            "actor_email": actor_email,
            "action": action,
            "target_account_id": account_id,
            "target_key_id": key_id,
            "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str),
            "created_at": int(time.time()),
        }
        if conn is not None:
            await conn.execute(insert(audit_log).values(**values))
            return
        async with self.engine.begin() as c:
            await c.execute(insert(audit_log).values(**values))

    async def list(self, *, account_id: int | None = None, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        query = select(audit_log)
        count = select(func.count()).select_from(audit_log)
        if account_id is not None:
            query = query.where(audit_log.c.target_account_id == account_id)
            count = count.where(audit_log.c.target_account_id == account_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(audit_log.c.id.desc()).limit(limit).offset(offset))).all()
            total = (await conn.execute(count)).scalar_one()
        out = []
        for r in rows:
            entry = dict(r._mapping)
            entry["detail"] = json.loads(entry["detail"] or "{}")
            out.append(entry)
        return out, total
