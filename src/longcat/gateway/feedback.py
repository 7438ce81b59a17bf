"""Model feedback, and the quota refresh a valid submission may earn.

A submission is valid when its text has at least 10 visible characters, it does not repeat any
of the account's earlier feedback, and the account has not yet sent `feedback_daily_limit` valid
ones today. Texts are judged after normalisation (NFKC, format characters such as zero-width
spaces dropped, case and spacing ignored), so padding or disguising a text does not make it new.
A valid submission refreshes the quota with probability `feedback_refresh_probability`: back to
a full daily allowance remaining, never beyond `daily_quota_cap` granted in one day. Every grant
is recorded in the quota ledger. Refused submissions are kept too, but at most
`feedback_daily_limit` a day, so a flood of them stores nothing more.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from longcat.canonical import invalid
from longcat.config import Settings
from longcat.gateway.clock import beijing_day
from longcat.gateway.quota import QuotaKeeper, QuotaStatus
from longcat.protocols.fields import get_int, get_str
from longcat.store.accounts import KeyOwner
from longcat.store.feedback import FeedbackStore

REPEAT = "This repeats feedback you sent before; only new feedback counts for a quota refresh."
CATEGORIES = ("quality", "accuracy", "speed", "formatting", "tool_use", "safety", "other")
MIN_TEXT = 10
MAX_TEXT = 5000

# Characters that take no place on screen: controls, format characters (zero-width spaces,
# joiners, direction marks), unassigned and private code points, combining marks and separators;
# and the blank letters and symbols that render as nothing (Hangul fillers, the blank Braille
# pattern, the Khmer and Mongolian inherent vowels and separators).
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me", "Zs", "Zl", "Zp"}
_BLANK = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u17b4", "\u17b5", "\u180e", "\u2028", "\u2029"}


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
    return Submission(rating, category, normalize(text), request_id)


def normalize(text: str) -> str:
    """NFKC, without format characters (zero-width spaces and the like), trimmed: the text as it
    is stored and judged."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip()


def visible_length(text: str) -> int:
    """Characters that show: not spaces, controls, format characters or combining marks."""
    return sum(1 for ch in text if ch not in _BLANK and unicodedata.category(ch) not in _INVISIBLE)


def text_hash(text: str) -> str:
    """Repeats are judged on the words, not on case, spacing or invisible characters."""
    words = re.sub(r"\s+", " ", normalize(text).casefold())
    return hashlib.sha256(words.encode("utf-8", "surrogatepass")).hexdigest()


class FeedbackDesk:
    def __init__(self, settings: Settings, quota: QuotaKeeper, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.quota = quota
        self.store = FeedbackStore(quota.usage.engine)
        self.rng = rng or random.Random()

    async def submit(self, owner: KeyOwner, sub: Submission, now: float) -> dict[str, Any]:
        day = beijing_day(now)
        limit = self.settings.feedback_daily_limit
        digest = text_hash(sub.text)
        reason: str | None = None
        if visible_length(sub.text) < MIN_TEXT:
            reason = f"Feedback needs at least {MIN_TEXT} visible characters to count for a quota refresh."
        elif await self.store.seen(owner.account_id, digest):
            reason = REPEAT
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
        recorded = await self.store.record(row, valid=reason is None, daily_limit=limit)
        if recorded.outcome == "repeat":
            reason = REPEAT
        elif recorded.outcome == "limit":
            reason = f"You have sent {limit} valid feedback submissions today, the most that count for refreshes."

        granted = 0
        lucky = False
        status: QuotaStatus | None = None
        if recorded.outcome == "valid":
            lucky = self.rng.random() < self.settings.feedback_refresh_probability
            if lucky:
                granted, status = await self.quota.refresh(owner.account_id, owner.daily_quota, now, note=f"feedback {digest[:12]}")
                if granted and recorded.id is not None:
                    await self.store.mark_refreshed(recorded.id, granted)
        if status is None:
            status = await self.quota.status(owner.account_id, owner.daily_quota, now)
        return {
            "id": recorded.id,
            "valid": recorded.outcome == "valid",
            "reason": reason,
            "refreshed": granted > 0,
            "granted": granted,
            "valid_remaining_today": max(0, limit - recorded.valid_today),
            "message": self._message(reason, lucky, granted, status),
            "quota": quota_body(status),
        }

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
