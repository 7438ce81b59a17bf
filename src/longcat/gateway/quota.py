"""Daily token quotas: admission, exact settlement, and feedback-earned refreshes.

Each account may spend its daily quota (default 5,000,000 tokens, input and output alike) per
Beijing calendar day; it refreshes at 00:00 UTC+8 and nothing rolls over.

A request is admitted only if the quota can cover its prompt and at least one output token, and
it reserves what it may spend: its prompt plus an output budget, which is its `max_tokens` capped
by what remains. Reservations are atomic, so concurrent requests, on any number of replicas,
cannot together spend more than the quota: the overshoot bound is zero. When the request ends,
the reservation is replaced by what it really used.
"""

from __future__ import annotations

from dataclasses import dataclass

from longcat.canonical import ApiError
from longcat.config import Settings
from longcat.gateway.clock import beijing_day, describe_refresh, next_refresh
from longcat.gateway.counters import Counters, QuotaState
from longcat.store.accounts import KeyOwner
from longcat.store.usage import UsageStore


@dataclass(slots=True)
class Reservation:
    account_id: int
    day: str
    lease: str
    base: int
    out_budget: int


@dataclass(slots=True, frozen=True)
class QuotaStatus:
    day: str
    base: int
    granted: int
    used: int
    reserved: int
    refreshes_at: float

    @property
    def allowance(self) -> int:
        return self.base + self.granted

    @property
    def remaining(self) -> int:
        return max(0, self.allowance - self.used - self.reserved)


class QuotaKeeper:
    def __init__(self, settings: Settings, counters: Counters, usage: UsageStore) -> None:
        self.settings = settings
        self.counters = counters
        self.usage = usage

    def base_for(self, daily_quota: int | None) -> int:
        return self.settings.daily_quota if daily_quota is None else daily_quota

    def _key(self, account_id: int, day: str) -> str:
        return f"{account_id}:{day}"

    def _seed(self, account_id: int, day: str):
        async def load() -> tuple[int, int]:
            row = await self.usage.quota_day(account_id, day)
            return (row.used, row.granted) if row else (0, 0)

        return load

    def pending(self, owner: KeyOwner, lease: str, now: float) -> Reservation:
        """The reservation a request will hold, before anything is reserved (see `reserve`)."""
        day = beijing_day(now)
        return Reservation(owner.account_id, day, lease, self.base_for(owner.daily_quota), 0)

    async def reserve(self, reservation: Reservation, prompt_tokens: int, max_tokens: int, now: float) -> None:
        """Reserve the prompt and an output budget (set on `reservation`), or raise a 403
        having reserved nothing."""
        r = reservation
        result = await self.counters.quota_reserve(
            self._key(r.account_id, r.day),
            self._seed(r.account_id, r.day),
            r.base,
            prompt_tokens,
            max_tokens,
            r.lease,
            now,
            self.settings.lease_seconds,
        )
        if not result.ok:
            raise self._exhausted(r.base, result.state, prompt_tokens, now)
        r.out_budget = result.out_budget

    def _exhausted(self, base: int, state: QuotaState, prompt_tokens: int, now: float) -> ApiError:
        allowance = base + state.granted
        remaining = max(0, allowance - state.used - state.reserved)
        refresh = describe_refresh(next_refresh(now), now)
        if remaining <= 0:
            text = f"Your daily quota of {allowance:,} tokens is used up."
        else:
            text = (
                f"This request needs at least {prompt_tokens + 1:,} tokens (its prompt and one output token), "
                f"but only {remaining:,} of your daily quota of {allowance:,} remain."
            )
        if state.reserved:
            text += f" ({state.reserved:,} tokens are held by your requests in flight.)"
        text += f" It refreshes at {refresh}. Valid model feedback may also earn a refresh."
        return ApiError(
            "permission", "insufficient_quota", text, extra={"refreshes_at": int(next_refresh(now))}
        )

    def key_of(self, reservation: Reservation) -> str:
        return self._key(reservation.account_id, reservation.day)

    def key_for(self, account_id: int, day: str) -> str:
        return self._key(account_id, day)

    async def settle(self, reservation: Reservation, billed: int) -> None:
        await self.counters.quota_settle(self.key_of(reservation), reservation.lease, billed)

    async def status(self, account_id: int, daily_quota: int | None, now: float) -> QuotaStatus:
        day = beijing_day(now)
        base = self.base_for(daily_quota)
        state = await self.counters.quota_state(self._key(account_id, day), self._seed(account_id, day), now)
        return QuotaStatus(day, base, state.granted, state.used, state.reserved, next_refresh(now))

    async def refresh(self, account_id: int, daily_quota: int | None, now: float, note: str = "") -> tuple[int, QuotaStatus]:
        """Bring the remaining quota back to a full daily allowance, within the daily cap.
        Returns the tokens granted (0 when the quota was already full or the cap is reached)."""
        day = beijing_day(now)
        base = self.base_for(daily_quota)
        grant, state = await self.counters.quota_refresh(
            self._key(account_id, day), self._seed(account_id, day), base, self.settings.daily_quota_cap, now
        )
        if grant:
            await self.usage.grant(account_id, day, base, grant, "feedback_refresh", note)
        return grant, QuotaStatus(day, base, state.granted, state.used, state.reserved, next_refresh(now))
