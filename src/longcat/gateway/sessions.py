"""Console accounts: registration, sign-in, sign-out, passwords, emailed links, CSRF tokens.

Passwords are hashed with scrypt at OWASP's parameters (see store/credentials.py). A hash costs
~0.1 s of CPU and 128 MiB, so it runs on a worker thread and at most
`password_hash_concurrency` run at once: a burst of sign-ins queues instead of exhausting memory.
Sign-ins are throttled per account and per client address with the same GCRA counters as the
API's rate limits (in process, or in Redis across replicas); every attempt counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass

from longcat.config import Settings
from longcat.gateway.actions import N_, ActionError
from longcat.gateway.counters import Bucket, Counters, retry_seconds
from longcat.gateway.mailer import Mailer
from longcat.store.accounts import Account, AccountStore, StoreError, normalize_email
from longcat.store.credentials import DUMMY_HASH, hash_password, verify_password
from longcat.store.invites import InviteStore
from longcat.store.sessions import SessionStore

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
RESET_TTL = 3600
VERIFY_TTL = 3 * 86400


def csrf_token(secret: bytes, binding: str) -> str:
    """The CSRF token of a browser: an HMAC of its session (or pre-session) cookie, so nothing is
    stored and a token is useless with any other cookie."""
    return hmac.new(secret, b"csrf\x00" + binding.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def csrf_ok(secret: bytes, binding: str, given: str | None) -> bool:
    return bool(binding and given) and hmac.compare_digest(csrf_token(secret, binding), given or "")


class PasswordHasher:
    """scrypt off the event loop, a bounded number at a time."""

    def __init__(self, concurrency: int) -> None:
        self._gate = asyncio.Semaphore(max(1, concurrency))

    async def hash(self, password: str) -> str:
        async with self._gate:
            return await asyncio.to_thread(hash_password, password)

    async def verify(self, password: str, stored: str | None) -> bool:
        async with self._gate:
            return await asyncio.to_thread(verify_password, password, stored or DUMMY_HASH)


def check_password(password: str, email: str = "") -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise ActionError("weak_password", N_("The password needs at least %(n)s characters."), field="password", n=MIN_PASSWORD)
    if len(password) > MAX_PASSWORD:
        raise ActionError("invalid_password", N_("The password may have at most %(n)s characters."), field="password", n=MAX_PASSWORD)
    if "\x00" in password:
        raise ActionError("invalid_password", N_("The password contains a character that is not allowed."), field="password")
    if email and password.strip().lower() == email.strip().lower():
        raise ActionError("weak_password", N_("The password must not be your email address."), field="password")
    return password


def check_email(email: str) -> str:
    try:
        email = normalize_email(email if isinstance(email, str) else "")
    except StoreError:
        raise ActionError("invalid_email", N_("Enter a valid email address, like name@example.com."), field="email") from None
    if "\x00" in email or any(c.isspace() for c in email) or "." not in email.rpartition("@")[2] and email.rpartition("@")[2] != "localhost":
        raise ActionError("invalid_email", N_("Enter a valid email address, like name@example.com."), field="email")
    return email


@dataclass(slots=True, frozen=True)
class SignedIn:
    account: Account
    token: str


class AccountDesk:
    """What the register, sign-in and password pages (and their JSON twins) do."""

    def __init__(
        self,
        settings: Settings,
        accounts: AccountStore,
        sessions: SessionStore,
        invites: InviteStore,
        counters: Counters,
        clock,
        mailer: Mailer,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.sessions = sessions
        self.invites = invites
        self.counters = counters
        self.clock = clock
        self.mailer = mailer
        self.hasher = PasswordHasher(settings.password_hash_concurrency)

    async def _throttle(self, *scopes: tuple[str, str, int]) -> None:
        buckets = [Bucket(f"{kind}:{hashlib.sha256(who.encode()).hexdigest()[:32]}", limit, 1) for kind, who, limit in scopes if limit > 0]
        wait = await self.counters.acquire(buckets, [], "", self.clock.now(), 60)
        if wait > 0:
            err = ActionError(
                "too_many_attempts", N_("Too many attempts. Try again in %(seconds)s seconds."), 429, seconds=retry_seconds(wait)
            )
            err.headers["Retry-After"] = str(retry_seconds(wait))
            raise err

    async def register(self, email: str, password: str, *, invite_code: str = "", ip: str = "", user_agent: str = "", base_url: str = "") -> SignedIn:
        mode = self.settings.registration
        if mode == "closed":
            raise ActionError("registration_closed", N_("Registration is closed on this platform. Ask its operator for an account."), 403)
        email = check_email(email)
        check_password(password, email)
        code = (invite_code or "").strip()
        if mode == "invite" and not code:
            raise ActionError("invite_required", N_("Registration needs an invite code from an administrator."), 403, field="invite_code")
        await self._throttle(("register-ip", ip, self.settings.login_rpm_ip))
        if await self.accounts.get_account(email) is not None:
            raise ActionError("email_taken", N_("An account with this email already exists. Sign in instead."), 409, field="email")
        digest = await self.hasher.hash(password)
        verify = self.mailer.enabled

        async def claim(conn, account_id: int) -> bool:
            return await self.invites.claim(conn, code, account_id)

        try:
            account = await self.accounts.create_account(
                email, password_hash=digest, email_verified=not verify, claim=claim if mode == "invite" else None
            )
        except StoreError as exc:
            if "invite" in str(exc):
                raise ActionError("invalid_invite", N_("The invite code is unknown, already used or expired."), 403, field="invite_code") from None
            raise ActionError("email_taken", N_("An account with this email already exists. Sign in instead."), 409, field="email") from None
        if verify:
            await self.send_verification(account, base_url)
        token = await self.sessions.create(account.id, days=self.settings.session_days, ip=ip, user_agent=user_agent)
        return SignedIn(account, token)

    async def send_verification(self, account: Account, base_url: str) -> None:
        token = await self.sessions.new_email_token(account.id, "verify", VERIFY_TTL)
        await self.mailer.send(
            account.email,
            "Confirm your email for the LongCat API platform",
            f"Open this link to confirm your email address:\n\n{base_url}/verify-email?token={token}\n\n"
            "If you did not create an account, ignore this message.",
        )

    async def verify_email(self, token: str) -> bool:
        account_id = await self.sessions.use_email_token(token, "verify")
        if account_id is None:
            return False
        await self.accounts.update_account(account_id, email_verified=True)
        return True

    async def login(self, email: str, password: str, *, ip: str = "", user_agent: str = "") -> SignedIn:
        raw = (email if isinstance(email, str) else "").strip().lower()[:254]
        await self._throttle(("login-ip", ip, self.settings.login_rpm_ip), ("login-acct", raw, self.settings.login_rpm_account))
        found = await self.accounts.credentials(raw) if raw else None
        # The hash is checked even for an unknown email, so timing does not reveal which emails exist.
        ok = await self.hasher.verify(password if isinstance(password, str) else "", found[1] if found else None)
        if not found or not ok:
            raise ActionError("invalid_credentials", N_("The email or password is wrong."), 401)
        account = found[0]
        if account.disabled:
            raise ActionError("account_disabled", N_("This account is disabled. Ask the platform's operator."), 403)
        token = await self.sessions.create(account.id, days=self.settings.session_days, ip=ip, user_agent=user_agent)
        return SignedIn(account, token)

    async def logout(self, token: str) -> None:
        await self.sessions.delete(token)

    async def change_password(self, account: Account, current: str, new: str, *, ip: str = "", user_agent: str = "") -> str:
        """Check the current password, set the new one, sign out every session; returns a fresh
        session token for the browser that made the change."""
        await self._throttle(("login-acct", account.email, self.settings.login_rpm_account))
        if not await self.hasher.verify(current if isinstance(current, str) else "", await self.accounts.password_hash(account.id)):
            raise ActionError("invalid_credentials", N_("The current password is wrong."), 401, field="current_password")
        check_password(new, account.email)
        await self.accounts.update_account(account.id, password_hash=await self.hasher.hash(new))
        await self.sessions.revoke_all(account.id)
        return await self.sessions.create(account.id, days=self.settings.session_days, ip=ip, user_agent=user_agent)

    async def request_reset(self, email: str, base_url: str, ip: str = "") -> None:
        """Mail a reset link if the account exists; the answer is the same either way."""
        if not self.mailer.enabled:
            raise ActionError("no_email", N_("This platform cannot send email. Ask its operator to reset your password."), 400)
        await self._throttle(("reset-ip", ip, self.settings.login_rpm_ip))
        try:
            email = check_email(email)
        except ActionError:
            return
        account = await self.accounts.get_account(email)
        if account is None or account.disabled:
            return
        token = await self.sessions.new_email_token(account.id, "reset", RESET_TTL)
        await self.mailer.send(
            email,
            "Reset your LongCat API platform password",
            f"Open this link within an hour to choose a new password:\n\n{base_url}/reset-password?token={token}\n\n"
            "If you did not ask for this, ignore this message; your password stays as it is.",
        )

    async def reset_password(self, token: str, new: str) -> None:
        if not await self.sessions.check_email_token(token, "reset"):
            raise ActionError("invalid_link", N_("This link is invalid, used or expired. Ask for a new one."), 400)
        check_password(new)
        account_id = await self.sessions.use_email_token(token, "reset")
        if account_id is None:
            raise ActionError("invalid_link", N_("This link is invalid, used or expired. Ask for a new one."), 400)
        await self.accounts.update_account(account_id, password_hash=await self.hasher.hash(new))
        await self.sessions.revoke_all(account_id)
