"""Accounts and API keys: the repository every other layer goes through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from longcat.store.credentials import hash_key, hash_password, key_hint, new_api_key
from longcat.store.keycache import KeyCache
from longcat.store.schema import accounts, api_keys

MAX_ACTIVE_KEYS = 100
MAX_LIFETIME_KEYS = 200
KEY_STATUSES = ("enabled", "disabled", "deleted")


class StoreError(Exception):
    """A request the store refuses (duplicate email, key limits, …); the message is user-facing."""


class _Unclaimed(Exception):
    """Rolls back an account whose `claim` failed."""


@dataclass(slots=True, frozen=True)
class Account:
    id: int
    email: str
    is_admin: bool
    disabled: bool
    created_at: int
    daily_quota: int | None = None


@dataclass(slots=True, frozen=True)
class ApiKey:
    id: int
    account_id: int
    name: str
    hint: str
    status: str
    created_at: int
    last_used_at: int | None


@dataclass(slots=True, frozen=True)
class LimitOverrides:
    """Per-key or per-account limits an admin set; None means "the configured default"."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None


@dataclass(slots=True, frozen=True)
class KeyOwner:
    """What authenticating a key yields: enough to admit and meter a request."""

    key_id: int
    key_name: str
    account_id: int
    email: str
    is_admin: bool
    daily_quota: int | None = None
    key_limits: LimitOverrides = LimitOverrides()
    account_limits: LimitOverrides = LimitOverrides()


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    if not local or not domain or " " in email or len(email) > 254:
        raise StoreError(f"not a valid email address: {email!r}")
    return email


def validate_key_name(name: str) -> str:
    name = name.strip()
    if not 2 <= len(name) <= 50:
        raise StoreError("key names are 2 to 50 characters long")
    return name


# Built once: building this SELECT per request cost more than running it.
_AUTHENTICATE = (
    select(
        api_keys.c.id,
        api_keys.c.name,
        accounts.c.id,
        accounts.c.email,
        accounts.c.is_admin,
        accounts.c.daily_quota,
        api_keys.c.rpm_limit,
        api_keys.c.tpm_limit,
        api_keys.c.concurrency_limit,
        accounts.c.rpm_limit,
        accounts.c.tpm_limit,
        accounts.c.concurrency_limit,
    )
    .join(accounts, accounts.c.id == api_keys.c.account_id)
    .where(api_keys.c.key_hash == bindparam("key_hash"))
    .where(api_keys.c.status == "enabled")
    .where(accounts.c.disabled.is_(False))
)


class AccountStore:
    def __init__(self, engine: AsyncEngine, key_cache: KeyCache | None = None) -> None:
        self.engine = engine
        # Authenticated keys, for a moment (see store/keycache.py); emptied by every change here.
        self.keys = key_cache if key_cache is not None else KeyCache()
        # Called after each change to keys or accounts (the app announces it on Redis).
        self.on_change: Callable[[], Awaitable[None]] | None = None
        self.changed = False  # a change was made through this store (the CLI then waits out the TTL)
        self._lookups: dict[str, tuple[int, asyncio.Future[KeyOwner | None]]] = {}

    async def _changed(self) -> None:
        self.keys.clear()
        self.changed = True
        if self.on_change is not None:
            await self.on_change()

    # ----------------------------------------------------------------- accounts

    async def create_account(
        self,
        email: str,
        password: str | None = None,
        *,
        is_admin: bool = False,
        password_hash: str | None = None,
        email_verified: bool = True,
        claim: Callable[[AsyncConnection, int], Awaitable[bool]] | None = None,
    ) -> Account:
        """Create an account. `password_hash` is a hash made elsewhere (off the event loop);
        `claim(conn, account_id)` runs in the same transaction (e.g. spending an invite code) and
        undoes the creation when it returns False."""
        email = normalize_email(email)
        now = int(time.time())
        row = {
            "email": email,
            "password_hash": password_hash or (hash_password(password) if password else None),
            "is_admin": is_admin,
            "disabled": False,
            "created_at": now,
            "email_verified": email_verified,
        }
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(insert(accounts).values(**row))
                account_id = result.inserted_primary_key[0]
                if claim is not None and not await claim(conn, account_id):
                    raise _Unclaimed
        except IntegrityError:
            raise StoreError(f"an account with the email {email} already exists") from None
        except _Unclaimed:
            raise StoreError("the invite code is unknown, used or expired") from None
        return Account(account_id, email, is_admin, False, now)

    async def get_account(self, email: str) -> Account | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.email == normalize_email(email)))).first()
        return _account(row) if row else None

    async def require_account(self, email: str) -> Account:
        account = await self.get_account(email)
        if account is None:
            raise StoreError(f"no account with the email {normalize_email(email)}")
        return account

    async def count_accounts(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(accounts))).scalar_one()

    # ----------------------------------------------------------------- keys

    async def create_key(self, account_id: int, name: str) -> tuple[ApiKey, str]:
        """Create a key; returns its record and the secret, which is never stored or shown again."""
        name = validate_key_name(name)
        secret = new_api_key()
        now = int(time.time())
        async with self.engine.begin() as conn:
            counts = dict(
                (
                    await conn.execute(
                        select(api_keys.c.status, func.count())
                        .where(api_keys.c.account_id == account_id)
                        .group_by(api_keys.c.status)
                    )
                ).all()
            )
            if sum(counts.values()) >= MAX_LIFETIME_KEYS:
                raise StoreError(f"an account can create at most {MAX_LIFETIME_KEYS} keys in its lifetime")
            if counts.get("enabled", 0) + counts.get("disabled", 0) >= MAX_ACTIVE_KEYS:
                raise StoreError(f"an account can hold at most {MAX_ACTIVE_KEYS} keys; delete one first")
            result = await conn.execute(
                insert(api_keys).values(
                    account_id=account_id,
                    name=name,
                    key_hash=hash_key(secret),
                    hint=key_hint(secret),
                    status="enabled",
                    created_at=now,
                )
            )
            key_id = result.inserted_primary_key[0]
        return ApiKey(key_id, account_id, name, key_hint(secret), "enabled", now, None), secret

    async def list_keys(self, account_id: int, *, include_deleted: bool = False) -> list[ApiKey]:
        query = select(api_keys).where(api_keys.c.account_id == account_id).order_by(api_keys.c.id)
        if not include_deleted:
            query = query.where(api_keys.c.status != "deleted")
        async with self.engine.connect() as conn:
            return [_key(r) for r in (await conn.execute(query)).all()]

    async def get_key(self, key_id: int) -> ApiKey | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _key(row) if row else None

    async def set_key_status(self, key_id: int, status: str) -> ApiKey:
        if status not in KEY_STATUSES:
            raise StoreError(f"unknown key status {status!r}")
        key = await self.get_key(key_id)
        if key is None or key.status == "deleted":
            raise StoreError(f"no key with id {key_id}")
        async with self.engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(status=status))
        await self._changed()
        return await self.get_key(key_id)  # type: ignore[return-value]

    async def authenticate(self, secret: str) -> KeyOwner | None:
        """The owner of an enabled key on an enabled account, or None (cached: see keycache)."""
        digest = hash_key(secret)
        owner = self.keys.get(digest)
        if owner is not None:
            return owner
        # One lookup per key at a time: when an entry expires under load, the requests that
        # arrive meanwhile share the lookup instead of each reading the database.
        pending = self._lookups.get(digest)
        if pending is not None and pending[0] == self.keys.generation:
            return await asyncio.shield(pending[1])
        generation = self.keys.generation
        lookup = asyncio.ensure_future(self._lookup(digest, generation))
        self._lookups[digest] = (generation, lookup)
        lookup.add_done_callback(lambda _f: self._lookups.pop(digest, None) if self._lookups.get(digest, (0, None))[1] is lookup else None)
        return await asyncio.shield(lookup)

    async def _lookup(self, digest: str, generation: int) -> KeyOwner | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_AUTHENTICATE, {"key_hash": digest})).first()
        if row is None:
            return None
        owner = KeyOwner(
            row[0], row[1], row[2], row[3], bool(row[4]), row[5], LimitOverrides(*row[6:9]), LimitOverrides(*row[9:12])
        )
        self.keys.put(digest, owner, generation)
        return owner

    async def set_daily_quota(self, account_id: int, tokens: int | None) -> None:
        if tokens is not None and tokens < 0:
            raise StoreError("a daily quota cannot be negative")
        async with self.engine.begin() as conn:
            await conn.execute(update(accounts).where(accounts.c.id == account_id).values(daily_quota=tokens))
        await self._changed()

    async def set_key_limits(self, key_id: int, limits: LimitOverrides) -> ApiKey:
        key = await self.get_key(key_id)
        if key is None or key.status == "deleted":
            raise StoreError(f"no key with id {key_id}")
        await self._set_limits(api_keys, key_id, limits)
        return key

    async def set_account_limits(self, account_id: int, limits: LimitOverrides) -> None:
        await self._set_limits(accounts, account_id, limits)

    async def _set_limits(self, table, row_id: int, limits: LimitOverrides) -> None:
        values = {
            f"{name}_limit": value
            for name, value in (("rpm", limits.rpm), ("tpm", limits.tpm), ("concurrency", limits.concurrency))
            if value is not None
        }
        if any(v < 0 for v in values.values()):
            raise StoreError("limits cannot be negative (0 means unlimited)")
        if values:
            async with self.engine.begin() as conn:
                await conn.execute(update(table).where(table.c.id == row_id).values(**values))
            await self._changed()

    async def get_limits(self, table_name: str, row_id: int) -> LimitOverrides:
        table = api_keys if table_name == "key" else accounts
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(table.c.rpm_limit, table.c.tpm_limit, table.c.concurrency_limit).where(table.c.id == row_id)
                )
            ).first()
        return LimitOverrides(*row) if row else LimitOverrides()

    # ----------------------------------------------------------------- console

    async def get_account_by_id(self, account_id: int) -> Account | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        return _account(row) if row else None

    async def credentials(self, email: str) -> tuple[Account, str | None, bool] | None:
        """(account, password hash, email verified) for a sign-in, or None."""
        try:
            email = normalize_email(email)
        except StoreError:
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.email == email))).first()
        return (_account(row), row.password_hash, bool(row.email_verified)) if row else None

    async def password_hash(self, account_id: int) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(accounts.c.password_hash).where(accounts.c.id == account_id))).scalar()

    async def update_account(self, account_id: int, **values: Any) -> None:
        """Set columns of one account (password_hash, disabled, is_admin, email_verified)."""
        allowed = {"password_hash", "disabled", "is_admin", "email_verified"}
        if not values or set(values) - allowed:
            raise StoreError(f"cannot set {sorted(set(values) - allowed)}")
        async with self.engine.begin() as conn:
            await conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
        await self._changed()

    async def replace_limits(self, scope: str, row_id: int, limits: LimitOverrides) -> None:
        """Set all three limits of a key or account; None goes back to the configured default."""
        table = api_keys if scope == "key" else accounts
        values = {"rpm_limit": limits.rpm, "tpm_limit": limits.tpm, "concurrency_limit": limits.concurrency}
        if any(v is not None and v < 0 for v in values.values()):
            raise StoreError("limits cannot be negative (0 means unlimited)")
        async with self.engine.begin() as conn:
            await conn.execute(update(table).where(table.c.id == row_id).values(**values))
        await self._changed()

    async def search_accounts(self, query: str = "", limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Accounts whose email contains `query`, newest first, with their active key counts."""
        active = (
            select(func.count())
            .where(api_keys.c.account_id == accounts.c.id)
            .where(api_keys.c.status != "deleted")
            .scalar_subquery()
        )
        where = []
        if query:
            like = "%" + query.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append(or_(accounts.c.email.like(like, escape="\\")))
        stmt = select(accounts, active.label("keys")).where(*where).order_by(accounts.c.id.desc()).limit(limit).offset(offset)
        count = select(func.count()).select_from(accounts).where(*where)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
            total = (await conn.execute(count)).scalar_one()
        return [_account_row(r) | {"keys": r.keys} for r in rows], total

    async def account_row(self, account_id: int) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        return _account_row(row) if row else None

    async def rename_key(self, key_id: int, name: str) -> ApiKey:
        name = validate_key_name(name)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).where(api_keys.c.status != "deleted").values(name=name)
            )
        if not result.rowcount:
            raise StoreError(f"no key with id {key_id}")
        await self._changed()
        return await self.get_key(key_id)  # type: ignore[return-value]

    async def keys_with_limits(self, account_id: int) -> list[tuple[ApiKey, LimitOverrides]]:
        query = (
            select(api_keys)
            .where(api_keys.c.account_id == account_id)
            .where(api_keys.c.status != "deleted")
            .order_by(api_keys.c.id.desc())
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(_key(r), LimitOverrides(r.rpm_limit, r.tpm_limit, r.concurrency_limit)) for r in rows]

    async def key_counts(self, account_id: int) -> tuple[int, int]:
        """(active keys, keys ever created) against MAX_ACTIVE_KEYS and MAX_LIFETIME_KEYS."""
        async with self.engine.connect() as conn:
            counts = dict(
                (
                    await conn.execute(
                        select(api_keys.c.status, func.count()).where(api_keys.c.account_id == account_id).group_by(api_keys.c.status)
                    )
                ).all()
            )
        return counts.get("enabled", 0) + counts.get("disabled", 0), sum(counts.values())

    async def key_names(self, account_id: int | None) -> dict[int, str]:
        """Key id -> name (deleted keys included: old usage still names them); all keys if None."""
        query = select(api_keys.c.id, api_keys.c.name)
        if account_id is not None:
            query = query.where(api_keys.c.account_id == account_id)
        async with self.engine.connect() as conn:
            return dict((await conn.execute(query)).all())

    async def owner_for_account(self, account_id: int) -> KeyOwner | None:
        """A `KeyOwner` for requests made from the console (the playground): no key, so only the
        account's own limits apply (key limits 0 = none), billed to the same quota."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        if row is None or row.disabled:
            return None
        return KeyOwner(
            0, "console", row.id, row.email, bool(row.is_admin), row.daily_quota, LimitOverrides(0, 0, 0),
            LimitOverrides(row.rpm_limit, row.tpm_limit, row.concurrency_limit),
        )


def _account_row(row) -> dict[str, Any]:
    return {
        "id": row.id,
        "email": row.email,
        "is_admin": bool(row.is_admin),
        "disabled": bool(row.disabled),
        "email_verified": bool(row.email_verified),
        "created_at": row.created_at,
        "daily_quota": row.daily_quota,
        "rpm_limit": row.rpm_limit,
        "tpm_limit": row.tpm_limit,
        "concurrency_limit": row.concurrency_limit,
    }


def _account(row) -> Account:
    return Account(row.id, row.email, bool(row.is_admin), bool(row.disabled), row.created_at, row.daily_quota)


def _key(row) -> ApiKey:
    return ApiKey(row.id, row.account_id, row.name, row.hint, row.status, row.created_at, row.last_used_at)
