"""Model feedback, and the quota refresh a valid submission may earn.

A submission is valid when its text has at least 10 characters, it does not repeat any of the
account's earlier feedback, and the account has not yet sent `feedback_daily_limit` valid ones
today. A valid submission refreshes the quota with probability `feedback_refresh_probability`:
back to a full daily allowance remaining, never beyond `daily_quota_cap` granted in one day.
Every submission is kept; every grant is recorded in the quota ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError

from longcat.canonical import invalid
from longcat.config import Settings
from longcat.gateway.clock import beijing_day
from longcat.gateway.quota import QuotaKeeper, QuotaStatus
from longcat.protocols.fields import get_int, get_str
from longcat.store.accounts import KeyOwner
from longcat.store.schema import feedback as feedback_table

REPEAT = "This repeats feedback you sent before; only new feedback counts for a quota refresh."
CATEGORIES = ("quality", "accuracy", "speed", "formatting", "tool_use", "safety", "other")
MIN_TEXT = 10
MAX_TEXT = 5000


@dataclass(slots=True, frozen=True)
class Submission:
    rating: int
    category: str
    text: str
    request_id: str | None


def parse_submission(body: dict[str, Any]) -> Submission:
    rating = get_int(body, "rating", minimum=1, maximum=5)
    if rating is None:
        raise invalid("'rating' is required: an integer from 1 (bad) to 5 (great).", param="rating")
    category = get_str(body, "category") or "other"
    if category not in CATEGORIES:
        raise invalid(f"'category' must be one of {', '.join(CATEGORIES)}.", param="category")
    text = get_str(body, "text", required=True) or ""
    if len(text) > MAX_TEXT:
        raise invalid(f"'text' may be at most {MAX_TEXT} characters.", param="text")
    request_id = get_str(body, "request_id")
    if request_id is not None and len(request_id) > 40:
        raise invalid("'request_id' is at most 40 characters (the id a response carries in x-request-id).", param="request_id")
    for name, value in (("text", text), ("request_id", request_id)):
        if value and "\x00" in value:
            raise invalid(f"'{name}' must not contain NUL characters.", param=name)
    return Submission(rating, category, text, request_id)


def text_hash(text: str) -> str:
    """Repeats are judged on the words, not on case or spacing."""
    normal = re.sub(r"\s+", " ", text.strip().lower())
    return hashlib.sha256(normal.encode("utf-8", "surrogatepass")).hexdigest()


class FeedbackDesk:
    def __init__(self, settings: Settings, quota: QuotaKeeper, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.quota = quota
        self.engine = quota.usage.engine
        self.rng = rng or random.Random()
        self._locks: dict[int, asyncio.Lock] = {}

    async def submit(self, owner: KeyOwner, sub: Submission, now: float) -> dict[str, Any]:
        # One submission at a time per account, so two copies of the same text cannot both count.
        lock = self._locks.setdefault(owner.account_id, asyncio.Lock())
        async with lock:
            return await self._submit(owner, sub, now)

    async def _submit(self, owner: KeyOwner, sub: Submission, now: float) -> dict[str, Any]:
        day = beijing_day(now)
        digest = text_hash(sub.text)
        reason = await self._invalid_reason(owner.account_id, sub.text, digest, day)
        row = {
            "account_id": owner.account_id,
            "key_id": owner.key_id,
            "request_id": sub.request_id,
            "rating": sub.rating,
            "category": sub.category,
            "text": sub.text,
            "text_hash": digest,
            "refreshed": False,
            "granted": 0,
            "day": day,
            "created_at": now,
        }
        feedback_id = None
        if reason is None:
            # Claim the text first: the unique index refuses a repeat made at the same moment
            # on another replica, which the check above cannot see.
            try:
                async with self.engine.begin() as conn:
                    result = await conn.execute(feedback_table.insert().values(**row, valid=True, counted_hash=digest))
                    feedback_id = result.inserted_primary_key[0]
            except IntegrityError:
                reason = REPEAT
        if reason is not None:
            async with self.engine.begin() as conn:
                result = await conn.execute(feedback_table.insert().values(**row, valid=False, counted_hash=None))
                feedback_id = result.inserted_primary_key[0]

        granted = 0
        lucky = False
        status: QuotaStatus | None = None
        if reason is None:
            lucky = self.rng.random() < self.settings.feedback_refresh_probability
            if lucky:
                granted, status = await self.quota.refresh(owner.account_id, owner.daily_quota, now, note=f"feedback {digest[:12]}")
                if granted:
                    async with self.engine.begin() as conn:
                        await conn.execute(
                            update(feedback_table)
                            .where(feedback_table.c.id == feedback_id)
                            .values(refreshed=True, granted=granted)
                        )
        if status is None:
            status = await self.quota.status(owner.account_id, owner.daily_quota, now)
        return {
            "id": feedback_id,
            "valid": reason is None,
            "reason": reason,
            "refreshed": granted > 0,
            "granted": granted,
            "message": self._message(reason, lucky, granted, status),
            "quota": quota_body(status),
        }

    async def _invalid_reason(self, account_id: int, text: str, digest: str, day: str) -> str | None:
        if len(text.strip()) < MIN_TEXT:
            return f"Feedback needs at least {MIN_TEXT} characters to count for a quota refresh."
        async with self.engine.connect() as conn:
            repeats = (
                await conn.execute(
                    select(func.count()).where(
                        and_(feedback_table.c.account_id == account_id, feedback_table.c.text_hash == digest)
                    )
                )
            ).scalar_one()
            today = (
                await conn.execute(
                    select(func.count()).where(
                        and_(
                            feedback_table.c.account_id == account_id,
                            feedback_table.c.day == day,
                            feedback_table.c.valid.is_(True),
                        )
                    )
                )
            ).scalar_one()
        if repeats:
            return REPEAT
        if today >= self.settings.feedback_daily_limit:
            return f"You have sent {today} valid feedback submissions today, the most that count for refreshes."
        return None

    def _message(self, reason: str | None, lucky: bool, granted: int, status: QuotaStatus) -> str:
        if reason is not None:
            return f"Thank you for your feedback. {reason}"
        if granted:
            return f"Thank you! Your feedback earned a quota refresh: {status.remaining:,} tokens remain today."
        if lucky and status.allowance >= self.settings.daily_quota_cap:
            return (
                f"Thank you! Your feedback would have earned a refresh, but today's maximum of "
                f"{self.settings.daily_quota_cap:,} tokens has already been granted."
            )
        if lucky:
            return "Thank you! Your quota is already full, so there was nothing to refresh."
        return "Thank you for your feedback! It did not earn a quota refresh this time."


def quota_body(status: QuotaStatus) -> dict[str, Any]:
    import datetime as dt

    from longcat.gateway.clock import BEIJING

    return {
        "day": status.day,
        "timezone": "Asia/Shanghai",
        "daily_quota": status.base,
        "granted": status.granted,
        "allowance": status.allowance,
        "used": status.used,
        "in_flight": status.reserved,
        "remaining": status.remaining,
        "refreshes_at": dt.datetime.fromtimestamp(status.refreshes_at, BEIJING).isoformat(),
        "refreshes_at_unix": int(status.refreshes_at),
    }
