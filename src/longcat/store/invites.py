"""Invite codes for invite-only registration: single use, stored hashed, shown once."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from longcat.store.schema import invites


def code_hash(code: str) -> str:
    return hashlib.sha256(code.strip().encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(slots=True, frozen=True)
class Invite:
    id: int
    hint: str
    note: str
    created_by: int | None
    created_at: int
    expires_at: int | None
    used_by: int | None
    used_at: int | None
    revoked: bool

    @property
    def status(self) -> str:
        if self.revoked:
            return "revoked"
        if self.used_by is not None:
            return "used"
        if self.expires_at is not None and self.expires_at <= time.time():
            return "expired"
        return "open"


class InviteStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, created_by: int | None, note: str = "", days: int | None = 14) -> tuple[Invite, str]:
        code = "inv_" + secrets.token_urlsafe(15)
        now = int(time.time())
        hint = f"{code[:7]}…{code[-3:]}"
        expires = now + days * 86400 if days else None
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert(invites).values(
                    code_hash=code_hash(code), hint=hint, note=note[:200], created_by=created_by,
                    created_at=now, expires_at=expires, used_by=None, used_at=None, revoked=False,
                )
            )
        return Invite(result.inserted_primary_key[0], hint, note[:200], created_by, now, expires, None, None, False), code

    async def claim(self, conn: AsyncConnection, code: str, account_id: int) -> bool:
        """Use the code for `account_id` inside the caller's transaction; False if it cannot be."""
        if not code or len(code) > 100:
            return False
        now = int(time.time())
        result = await conn.execute(
            update(invites)
            .where(
                and_(
                    invites.c.code_hash == code_hash(code),
                    invites.c.used_by.is_(None),
                    invites.c.revoked.is_(False),
                    or_(invites.c.expires_at.is_(None), invites.c.expires_at > now),
                )
            )
            .values(used_by=account_id, used_at=now)
        )
        return bool(result.rowcount)

    async def list(self) -> list[Invite]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(invites).order_by(invites.c.id.desc()).limit(200))).all()
        return [
            Invite(r.id, r.hint, r.note, r.created_by, r.created_at, r.expires_at, r.used_by, r.used_at, bool(r.revoked))
            for r in rows
        ]

    async def revoke(self, invite_id: int) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(invites).where(and_(invites.c.id == invite_id, invites.c.used_by.is_(None))).values(revoked=True)
            )
        return bool(result.rowcount)
