"""Who is asking: a console session (cookie) or an API key (header), for the console pages and
the `/api/v1/` endpoints alike.

An API key is an explicit credential, so requests made with one need no CSRF token; a session
cookie is sent by the browser on its own, so every mutation made with one must carry the
session's CSRF token. A key wins when both arrive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from longcat.gateway.auth import key_candidates
from longcat.gateway.sessions import csrf_ok, csrf_token
from longcat.store.accounts import Account, AccountStore, KeyOwner, LimitOverrides
from longcat.store.sessions import SessionInfo, SessionStore

SESSION_COOKIE = "lc_session"
PRE_COOKIE = "lc_pre"  # before sign-in: binds the sign-in and registration forms' CSRF token


@dataclass(slots=True, frozen=True)
class Principal:
    account: Account
    owner: KeyOwner  # what gateway calls need (quota, limits); key_id 0 for a session
    session: SessionInfo | None = None  # None when authenticated by an API key
    token: str = ""  # the session cookie's value

    @property
    def by_key(self) -> bool:
        return self.session is None

    @property
    def is_admin(self) -> bool:
        return self.account.is_admin

    def csrf(self, secret: bytes) -> str:
        return csrf_token(secret, self.token) if self.token else ""


def has_key(headers: Mapping[str, str]) -> bool:
    return bool(key_candidates(headers))


async def from_session(sessions: SessionStore, token: str | None) -> Principal | None:
    info = await sessions.lookup(token or "")
    if info is None:
        return None
    a = info.account
    owner = KeyOwner(0, "console", a.id, a.email, a.is_admin, a.daily_quota, LimitOverrides(0, 0, 0), info.account_limits)
    return Principal(a, owner, info, token or "")


async def from_key(gateway, accounts: AccountStore, headers: Mapping[str, str]) -> Principal:
    """The key's owner, charged one request against its rate limits like any API call; raises
    the API's 401 / 429 `ApiError`."""
    owner = await gateway.authenticate(headers)
    account = await accounts.get_account_by_id(owner.account_id)
    assert account is not None
    return Principal(account, owner)


def mutation_allowed(principal: Principal, secret: bytes, given: str | None) -> bool:
    """A mutation by a session needs its CSRF token; one by an API key does not."""
    return principal.by_key or csrf_ok(secret, principal.token, given)


async def authenticate_either(request, *, mutation: bool) -> KeyOwner:
    """For the platform's own JSON routes: an API key as before, else the console session (whose
    mutations need the CSRF token). Raises the API's `ApiError` (401 / 403 / 429)."""
    from longcat.canonical import ApiError
    from longcat.gateway.auth import missing_key

    state = request.app.state
    sessions = getattr(state, "sessions", None)
    if has_key(request.headers) or sessions is None:
        return await state.gateway.authenticate(request.headers)
    principal = await from_session(sessions, request.cookies.get(SESSION_COOKIE))
    if principal is None:
        raise missing_key()
    # Charged like a key's request: against the account's requests per minute.
    await state.gateway.limiter.charge_request(principal.owner, state.gateway.clock.now())
    if mutation and not csrf_ok(state.secret_key, principal.token, request.headers.get("x-csrf-token")):
        raise ApiError("permission", "csrf_failed", "This request needs the session's CSRF token in the X-CSRF-Token header.")
    return principal.owner
