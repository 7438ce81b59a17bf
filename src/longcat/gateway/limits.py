"""Rate limits per API key and per account: requests per minute, tokens per minute, and
requests in flight. Defaults come from the settings; an admin can override them per key or
account.

Tokens are charged twice: the prompt when the request is admitted (it is known), the output when
the request ends (it is not known before), so a burst of long answers slows the next requests
instead of passing unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass

from longcat.canonical import rate_limited
from longcat.config import Settings
from longcat.gateway.counters import Bucket, Counters, Slots
from longcat.store.accounts import KeyOwner


@dataclass(slots=True, frozen=True)
class Limits:
    rpm: int
    tpm: int
    concurrency: int


@dataclass(slots=True)
class Permit:
    """What an admitted request holds until it ends."""

    lease: str
    key: Limits
    account: Limits
    key_id: int
    account_id: int


class RateLimiter:
    def __init__(self, settings: Settings, counters: Counters) -> None:
        self.settings = settings
        self.counters = counters

    def limits_for(self, owner: KeyOwner) -> tuple[Limits, Limits]:
        s = self.settings
        k, a = owner.key_limits, owner.account_limits
        key = Limits(
            s.key_rpm if k.rpm is None else k.rpm,
            s.key_tpm if k.tpm is None else k.tpm,
            s.key_concurrency if k.concurrency is None else k.concurrency,
        )
        account = Limits(
            s.account_rpm if a.rpm is None else a.rpm,
            s.account_tpm if a.tpm is None else a.tpm,
            s.account_concurrency if a.concurrency is None else a.concurrency,
        )
        return key, account

    def _buckets(self, permit: Permit, requests: int, tokens: int) -> list[Bucket]:
        out = []
        for scope, ident, limits in (("k", permit.key_id, permit.key), ("a", permit.account_id, permit.account)):
            if limits.rpm > 0 and requests:
                out.append(Bucket(f"rpm:{scope}:{ident}", limits.rpm, requests))
            if limits.tpm > 0:
                out.append(Bucket(f"tpm:{scope}:{ident}", limits.tpm, tokens))
        return out

    def _slots(self, permit: Permit) -> list[Slots]:
        out = []
        if permit.key.concurrency > 0:
            out.append(Slots(f"conc:k:{permit.key_id}", permit.key.concurrency))
        if permit.account.concurrency > 0:
            out.append(Slots(f"conc:a:{permit.account_id}", permit.account.concurrency))
        return out

    async def charge_request(self, owner: KeyOwner, now: float) -> None:
        """Count a request against the request-per-minute limits of its key and account, first
        thing after authentication and before any costly work; a 429 takes nothing."""
        key, account = self.limits_for(owner)
        permit = Permit("", key, account, owner.key_id, owner.account_id)
        buckets = [b for b in self._buckets(permit, 1, 0) if b.key.startswith("rpm:")]
        wait = await self.counters.acquire(buckets, [], "", now, self.settings.lease_seconds)
        if wait > 0:
            raise rate_limited(wait)

    def permit(self, owner: KeyOwner, lease: str) -> Permit:
        """The permit a request will hold, before anything is taken: so that whatever happens
        while taking it (a refusal, a cancellation), it can be given back by its lease."""
        key, account = self.limits_for(owner)
        return Permit(lease, key, account, owner.key_id, owner.account_id)

    async def take(self, permit: Permit, prompt_tokens: int, now: float) -> None:
        """The permit's token and concurrency limits at once (its request was charged when it
        was authenticated), or a 429 having taken nothing."""
        wait = await self.counters.acquire(
            self._buckets(permit, 0, prompt_tokens), self._slots(permit), permit.lease, now, self.settings.lease_seconds
        )
        if wait > 0:
            raise rate_limited(wait)

    def slot_keys(self, permit: Permit) -> list[str]:
        return [s.key for s in self._slots(permit)]

    async def release(self, permit: Permit, output_tokens: int, now: float) -> None:
        buckets = [b for b in self._buckets(permit, 0, output_tokens) if b.cost > 0]
        await self.counters.release(buckets, self.slot_keys(permit), permit.lease, now)
