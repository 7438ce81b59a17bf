"""API keys as the console manages them: an account only ever touches its own keys.

The rules live in store/accounts.py (name 2-50 characters, 100 active and 200 lifetime keys);
this adds ownership (another account's key is "not found", never "forbidden", so ids reveal
nothing) and messages people can read in their language.
"""

from __future__ import annotations

from typing import Any

from longcat.config import Settings
from longcat.gateway.actions import N_, ActionError, not_found, row_id
from longcat.store.accounts import (
    MAX_ACTIVE_KEYS,
    MAX_LIFETIME_KEYS,
    AccountStore,
    ApiKey,
    LimitOverrides,
    StoreError,
)


def key_view(key: ApiKey, limits: LimitOverrides, settings: Settings) -> dict[str, Any]:
    """A key as pages and JSON show it: masked, with the limits that apply to it."""
    def eff(value: int | None, default: int) -> int:
        return default if value is None else value

    return {
        "id": key.id,
        "name": key.name,
        "key": key.hint,
        "status": key.status,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "limits": {
            "rpm": eff(limits.rpm, settings.key_rpm),
            "tpm": eff(limits.tpm, settings.key_tpm),
            "concurrency": eff(limits.concurrency, settings.key_concurrency),
            "custom": limits != LimitOverrides(),
        },
    }


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not 2 <= len(name.strip()) <= 50:
        raise ActionError("invalid_name", N_("A key name has 2 to 50 characters."), field="name")
    if any(ord(c) < 32 for c in name):
        raise ActionError("invalid_name", N_("A key name cannot contain control characters."), field="name")
    return name.strip()


class KeyDesk:
    def __init__(self, settings: Settings, accounts: AccountStore) -> None:
        self.settings = settings
        self.accounts = accounts

    async def list(self, account_id: int) -> list[dict[str, Any]]:
        return [key_view(k, lim, self.settings) for k, lim in await self.accounts.keys_with_limits(account_id)]

    async def counts(self, account_id: int) -> dict[str, int]:
        active, lifetime = await self.accounts.key_counts(account_id)
        return {"active": active, "max_active": MAX_ACTIVE_KEYS, "lifetime": lifetime, "max_lifetime": MAX_LIFETIME_KEYS}

    async def create(self, account_id: int, name: Any, *, email_confirmed: bool = True) -> tuple[dict[str, Any], str]:
        """A new key and its secret (shown once, never stored). With email verification on, an
        account must confirm its address first: a key is what an unowned address could abuse."""
        if not email_confirmed:
            raise ActionError("email_unconfirmed", N_("Confirm your email address first: open the link we sent you (the Account page can send it again)."), 403)
        name = check_name(name)
        active, lifetime = await self.accounts.key_counts(account_id)
        if lifetime >= MAX_LIFETIME_KEYS:
            raise ActionError("key_limit_lifetime", N_("This account has created %(n)s keys, the most an account may create in its lifetime."), 409, n=MAX_LIFETIME_KEYS)
        if active >= MAX_ACTIVE_KEYS:
            raise ActionError("key_limit_active", N_("This account holds %(n)s keys, the most allowed. Delete a key to create a new one."), 409, n=MAX_ACTIVE_KEYS)
        try:
            key, secret = await self.accounts.create_key(account_id, name)
        except StoreError as exc:  # a race with another request at the limit
            if "lifetime" in str(exc):
                raise ActionError("key_limit_lifetime", N_("This account has created %(n)s keys, the most an account may create in its lifetime."), 409, n=MAX_LIFETIME_KEYS) from None
            raise ActionError("key_limit_active", N_("This account holds %(n)s keys, the most allowed. Delete a key to create a new one."), 409, n=MAX_ACTIVE_KEYS) from None
        return key_view(key, LimitOverrides(), self.settings), secret

    async def _own(self, account_id: int | None, key_id: Any) -> ApiKey:
        """The key, if `account_id` owns it (None: an admin, any account)."""
        number = row_id(key_id)
        key = await self.accounts.get_key(number) if number is not None else None
        if key is None or key.status == "deleted" or (account_id is not None and key.account_id != account_id):
            raise not_found()
        return key

    async def get(self, account_id: int | None, key_id: Any) -> dict[str, Any]:
        key = await self._own(account_id, key_id)
        return key_view(key, await self.accounts.get_limits("key", key.id), self.settings)

    async def rename(self, account_id: int | None, key_id: Any, name: Any) -> dict[str, Any]:
        key = await self._own(account_id, key_id)
        await self.accounts.rename_key(key.id, check_name(name))
        return await self.get(account_id, key.id)

    async def set_status(self, account_id: int | None, key_id: Any, status: Any) -> dict[str, Any]:
        if status not in ("enabled", "disabled"):
            raise ActionError("invalid_status", N_("A key's status is enabled or disabled."), field="status")
        key = await self._own(account_id, key_id)
        await self.accounts.set_key_status(key.id, status)
        return await self.get(account_id, key.id)

    async def delete(self, account_id: int | None, key_id: Any) -> ApiKey:
        key = await self._own(account_id, key_id)
        await self.accounts.set_key_status(key.id, "deleted")
        return key
