"""API-key authentication, identical for both wire formats.

Accepted: `Authorization: Bearer <key>` and `x-api-key: <key>`. The seed's Anthropic SDK example
sets `api_key="Authorization: Bearer <key>"`, so an `x-api-key` carrying that whole header line is
understood too. When several candidates arrive, any valid one authenticates (a valid Bearer wins).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from longcat.canonical import ApiError
from longcat.store.accounts import AccountStore, KeyOwner

# "<key>", "Bearer <key>" or "Authorization: Bearer <key>", any case, any spacing.
_HEADER_VALUE = re.compile(r"^\s*(?:authorization:\s*)?(?:bearer(?:\s+|$))?(\S*)\s*$", re.IGNORECASE)


def key_candidates(headers: Mapping[str, str]) -> list[str]:
    """Every plausible key in the request's headers, best first, without duplicates."""
    found: list[str] = []
    for raw in (headers.get("authorization"), headers.get("x-api-key")):
        if not raw:
            continue
        match = _HEADER_VALUE.match(raw)
        # Anything else (e.g. "Basic …") is kept as is: it will fail as an invalid key, which is
        # the truthful answer, rather than "no key sent".
        value = match.group(1) if match else raw.strip()
        if value and value not in found:
            found.append(value)
    return found


def missing_key() -> ApiError:
    return ApiError(
        "authentication",
        "invalid_api_key",
        "No API key was sent. Pass it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
    )


def bad_key() -> ApiError:
    # Never echo the key back: it may be a real secret pasted in the wrong place.
    return ApiError(
        "authentication",
        "invalid_api_key",
        "The API key is invalid, disabled or deleted. Check it on the API Keys page, or create a new one.",
    )


async def authenticate(store: AccountStore, headers: Mapping[str, str]) -> KeyOwner:
    candidates = key_candidates(headers)
    if not candidates:
        raise missing_key()
    for candidate in candidates:
        if len(candidate) > 200:
            continue
        owner = await store.authenticate(candidate)
        if owner is not None:
            return owner
    raise bad_key()
