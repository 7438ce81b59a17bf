"""What administrators may do, each change written to the audit log in the same breath.

Disabling an account signs it out everywhere at once (its sessions are deleted) and its keys stop
authenticating on the next request on every replica, since every request reads the account's
state from the database.
"""

from __future__ import annotations

from typing import Any

from longcat.config import Settings
from longcat.gateway.actions import N_, ActionError, not_found, row_id
from longcat.gateway.clock import beijing_day
from longcat.gateway.keys import KeyDesk
from longcat.gateway.principal import Principal
from longcat.gateway.sessions import PasswordHasher, check_email, check_password
from longcat.store.accounts import AccountStore, LimitOverrides, StoreError
from longcat.store.audit import AuditStore
from longcat.store.credentials import new_password
from longcat.store.invites import InviteStore
from longcat.store.sessions import SessionStore
from longcat.store.usage import UsageStore

MAX_QUOTA = 10**12
MAX_LIMIT = 10**9


def parse_optional_int(value: Any, field: str, maximum: int) -> int | None:
    """'' or None: back to the default; else a whole number from 0 to `maximum`."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "default")):
        return None
    if isinstance(value, bool):
        raise ActionError("invalid_number", N_("Enter a whole number of 0 or more, or leave it empty for the default."), field=field)
    try:
        number = int(str(value).replace(",", "").replace("_", "").strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ActionError("invalid_number", N_("Enter a whole number of 0 or more, or leave it empty for the default."), field=field) from None
    if not 0 <= number <= maximum:
        raise ActionError("invalid_number", N_("Enter a whole number of 0 or more, or leave it empty for the default."), field=field)
    return number


class AdminDesk:
    def __init__(
        self,
        settings: Settings,
        accounts: AccountStore,
        sessions: SessionStore,
        invites: InviteStore,
        audit: AuditStore,
        usage: UsageStore,
        keys: KeyDesk,
        hasher: PasswordHasher,
        clock,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.sessions = sessions
        self.invites = invites
        self.audit = audit
        self.usage = usage
        self.keys = keys
        self.hasher = hasher
        self.clock = clock

    @staticmethod
    def require(actor: Principal | None) -> Principal:
        if actor is None or not actor.is_admin:
            raise ActionError("forbidden", N_("This needs an administrator account."), 403)
        return actor

    async def _log(self, actor: Principal, action: str, **kw: Any) -> None:
        await self.audit.record(actor.account.id, actor.account.email, action, **kw)

    async def user(self, account_id: Any) -> dict[str, Any]:
        number = row_id(account_id)
        row = await self.accounts.account_row(number) if number is not None else None
        if row is None:
            raise not_found("account")
        return row

    async def create_user(self, actor: Principal, email: Any, password: Any = "", is_admin: bool = False) -> tuple[dict[str, Any], str | None]:
        """A new account; returns it and the generated password when none was given."""
        email = check_email(email if isinstance(email, str) else "")
        generated = None
        if not password:
            password = generated = new_password()
        check_password(password, email)
        try:
            account = await self.accounts.create_account(email, password_hash=await self.hasher.hash(password), is_admin=bool(is_admin))
        except StoreError:
            raise ActionError("email_taken", N_("An account with this email already exists."), 409, field="email") from None
        await self._log(actor, "user.create", account_id=account.id, email=email, is_admin=bool(is_admin))
        return await self.user(account.id), generated

    async def update_user(self, actor: Principal, account_id: Any, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply any of: disabled, is_admin, daily_quota, rpm, tpm, concurrency."""
        before = await self.user(account_id)
        aid = before["id"]
        done: dict[str, Any] = {}
        if "disabled" in changes:
            disabled = _bool(changes["disabled"], "disabled")
            if disabled and aid == actor.account.id:
                raise ActionError("self_disable", N_("You cannot disable your own account."), 400, field="disabled")
            if disabled != before["disabled"]:
                await self.accounts.update_account(aid, disabled=disabled)
                if disabled:
                    await self.sessions.revoke_all(aid)
                done["disabled"] = disabled
        if "is_admin" in changes:
            admin = _bool(changes["is_admin"], "is_admin")
            if not admin and aid == actor.account.id:
                raise ActionError("self_demote", N_("You cannot remove your own administrator role."), 400, field="is_admin")
            if admin != before["is_admin"]:
                await self.accounts.update_account(aid, is_admin=admin)
                done["is_admin"] = admin
        if "daily_quota" in changes:
            quota = parse_optional_int(changes["daily_quota"], "daily_quota", MAX_QUOTA)
            if quota != before["daily_quota"]:
                await self.accounts.set_daily_quota(aid, quota)
                base = self.settings.daily_quota if quota is None else quota
                delta = await self.usage.adjust_base(aid, beijing_day(self.clock.now()), base)
                done["daily_quota"] = {"from": before["daily_quota"], "to": quota, "today_delta": delta}
        if any(k in changes for k in ("rpm", "tpm", "concurrency")):
            limits = LimitOverrides(
                parse_optional_int(changes.get("rpm", before["rpm_limit"]), "rpm", MAX_LIMIT),
                parse_optional_int(changes.get("tpm", before["tpm_limit"]), "tpm", MAX_LIMIT),
                parse_optional_int(changes.get("concurrency", before["concurrency_limit"]), "concurrency", MAX_LIMIT),
            )
            old = LimitOverrides(before["rpm_limit"], before["tpm_limit"], before["concurrency_limit"])
            if limits != old:
                await self.accounts.replace_limits("account", aid, limits)
                done["limits"] = {"rpm": limits.rpm, "tpm": limits.tpm, "concurrency": limits.concurrency}
        if done:
            await self._log(actor, "user.update", account_id=aid, email=before["email"], **done)
        return await self.user(aid)

    async def set_key_status(self, actor: Principal, key_id: Any, status: Any) -> dict[str, Any]:
        key = await self.keys.set_status(None, key_id, status)
        stored = await self.accounts.get_key(key["id"])
        await self._log(actor, "key." + ("enable" if status == "enabled" else "disable"), account_id=stored.account_id if stored else None,
                        key_id=key["id"], name=key["name"], key=key["key"])
        return key

    async def create_invite(self, actor: Principal, note: Any = "", days: Any = 14) -> tuple[dict[str, Any], str]:
        note = note.strip()[:200] if isinstance(note, str) else ""
        valid_days = parse_optional_int(days, "days", 365)
        invite, code = await self.invites.create(actor.account.id, note, valid_days or None)
        await self._log(actor, "invite.create", invite_id=invite.id, hint=invite.hint, note=note)
        return invite_view(invite), code

    async def revoke_invite(self, actor: Principal, invite_id: Any) -> None:
        number = row_id(invite_id)
        if number is None or not await self.invites.revoke(number):
            raise not_found("invite")
        await self._log(actor, "invite.revoke", invite_id=number)

    async def list_invites(self) -> list[dict[str, Any]]:
        return [invite_view(i) for i in await self.invites.list()]


def invite_view(invite) -> dict[str, Any]:
    return {
        "id": invite.id, "code": invite.hint, "note": invite.note, "status": invite.status,
        "created_at": invite.created_at, "expires_at": invite.expires_at, "used_by": invite.used_by, "used_at": invite.used_at,
    }


def _bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "on", "yes"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "off", "no", ""):
        return False
    raise ActionError("invalid_value", N_("This value must be true or false."), field=field)
