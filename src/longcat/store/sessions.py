"""Console sessions and emailed one-use links, kept in the database so every replica sees them.

A session is a random token in a cookie; the table keeps only its sha256, so reading the
database does not let anyone sign in. Revoking is deleting rows: the next request on any
replica finds nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from longcat.store.accounts import Account, LimitOverrides
from longcat.store.schema import accounts, email_tokens, sessions

# last_seen_at is rewritten at most this often (seconds): one write per active user, not per page.
TOUCH_EVERY = 300


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(slots=True, frozen=True)
class SessionInfo:
    id: int
    account: Account
    account_limits: LimitOverrides
    created_at: int
    last_seen_at: int
    expires_at: int
    ip: str
    user_agent: str


class SessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, account_id: int, *, days: int, ip: str = "", user_agent: str = "") -> str:
        """A new session for the account; returns the token (for the cookie, never stored)."""
        token = secrets.token_urlsafe(32)
        now = int(time.time())
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(sessions).values(
                    token_hash=token_hash(token),
                    account_id=account_id,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + days * 86400,
                    ip=ip[:64],
                    user_agent=user_agent[:200],
                )
            )
        return token

    async def lookup(self, token: str) -> SessionInfo | None:
        """The live session of an enabled account, or None (expired, revoked, disabled)."""
        if not token or len(token) > 100:
            return None
        now = int(time.time())
        query = (
            select(sessions, accounts.c.email, accounts.c.is_admin, accounts.c.disabled, accounts.c.daily_quota,
                   accounts.c.created_at.label("account_created_at"), accounts.c.rpm_limit, accounts.c.tpm_limit,
                   accounts.c.concurrency_limit)
            .join(accounts, accounts.c.id == sessions.c.account_id)
            .where(sessions.c.token_hash == token_hash(token))
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None or row.expires_at <= now or row.disabled:
            return None
        if now - row.last_seen_at >= TOUCH_EVERY:
            async with self.engine.begin() as conn:
                await conn.execute(update(sessions).where(sessions.c.id == row.id).values(last_seen_at=now))
        account = Account(row.account_id, row.email, bool(row.is_admin), False, row.account_created_at, row.daily_quota)
        return SessionInfo(
            row.id, account, LimitOverrides(row.rpm_limit, row.tpm_limit, row.concurrency_limit),
            row.created_at, row.last_seen_at, row.expires_at, row.ip, row.user_agent,
        )

    async def delete(self, token: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(sessions).where(sessions.c.token_hash == token_hash(token)))

    async def delete_id(self, account_id: int, session_id: int) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(sessions).where(and_(sessions.c.id == session_id, sessions.c.account_id == account_id))
            )
        return bool(result.rowcount)

    async def revoke_all(self, account_id: int) -> int:
        """Sign the account out everywhere (password changed, account disabled)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(sessions).where(sessions.c.account_id == account_id))
        return result.rowcount or 0

    async def list(self, account_id: int) -> list[dict]:
        now = int(time.time())
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(sessions.c.id, sessions.c.created_at, sessions.c.last_seen_at, sessions.c.expires_at,
                           sessions.c.ip, sessions.c.user_agent)
                    .where(and_(sessions.c.account_id == account_id, sessions.c.expires_at > now))
                    .order_by(sessions.c.id.desc())
                )
            ).all()
        return [dict(r._mapping) for r in rows]

    async def purge_expired(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(sessions).where(sessions.c.expires_at <= int(time.time())))

    # ------------------------------------------------------------------ emailed links

    async def new_email_token(self, account_id: int, purpose: str, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        now = int(time.time())
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(email_tokens).values(
                    token_hash=token_hash(token), account_id=account_id, purpose=purpose,
                    created_at=now, expires_at=now + ttl, used_at=None,
                )
            )
        return token

    async def use_email_token(self, token: str, purpose: str) -> int | None:
        """Spend a link: the account it was for, or None (unknown, used, expired). Atomic, so a
        link clicked twice at once works once."""
        if not token or len(token) > 100:
            return None
        now = int(time.time())
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(email_tokens.c.id, email_tokens.c.account_id).where(
                        and_(
                            email_tokens.c.token_hash == token_hash(token),
                            email_tokens.c.purpose == purpose,
                            email_tokens.c.used_at.is_(None),
                            email_tokens.c.expires_at > now,
                        )
                    )
                )
            ).first()
            if row is None:
                return None
            done = await conn.execute(
                update(email_tokens)
                .where(and_(email_tokens.c.id == row.id, email_tokens.c.used_at.is_(None)))
                .values(used_at=now)
            )
        return row.account_id if done.rowcount else None

    async def check_email_token(self, token: str, purpose: str) -> bool:
        if not token or len(token) > 100:
            return False
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(email_tokens.c.id).where(
                        and_(
                            email_tokens.c.token_hash == token_hash(token),
                            email_tokens.c.purpose == purpose,
                            email_tokens.c.used_at.is_(None),
                            email_tokens.c.expires_at > int(time.time()),
                        )
                    )
                )
            ).first()
        return row is not None
