"""The platform's own API for an account: its usage and quota, and model feedback.

Authenticated with the same API keys as the model routes, or with a console session (then a
mutation needs its CSRF token in X-CSRF-Token).
An account only ever sees its own data.
"""

from __future__ import annotations

import datetime as dt
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from longcat.api.asgi import JSONBody, read_json
from longcat.api.openai import openai_error
from longcat.canonical import ApiError, invalid, shown
from longcat.gateway.clock import beijing_day
from longcat.gateway.feedback import parse_submission, quota_body
from longcat.gateway.pipeline import Gateway
from longcat.gateway.principal import authenticate_either
from longcat.store.usage import sum_rows

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _day(value: str | None, today: str) -> str:
    if value is None:
        return today
    if not _DAY.match(value):
        raise invalid("'day' must be a date like 2026-01-31.", param="day")
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise invalid(f"'day' {shown(value)} is not a real date.", param="day") from None
    return value


async def usage(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        owner = await authenticate_either(request, mutation=False)
        now = gateway.clock.now()
        today = beijing_day(now)
        day = _day(request.query_params.get("day"), today)
        limit = max(1, min(int(request.query_params.get("limit", "50") or 50), 500))
    except ApiError as err:
        return openai_error(err)
    except ValueError:
        return openai_error(invalid("'limit' must be an integer.", param="limit"))
    store = gateway.usage
    by_model = await store.daily_for_day(owner.account_id, day)
    body = {
        "account": {"id": owner.account_id, "email": owner.email},
        "day": day,
        "totals": sum_rows(by_model),
        "by_model": by_model,
        "recent": await store.records(owner.account_id, day, limit),
        "ledger": await store.ledger(owner.account_id, day),
    }
    if day == today:
        body["quota"] = quota_body(await gateway.quota.status(owner.account_id, owner.daily_quota, now))
    else:
        row = await store.quota_day(owner.account_id, day)
        body["quota"] = (
            {"day": day, "daily_quota": row.base, "granted": row.granted, "allowance": row.base + row.granted, "used": row.used}
            if row
            else None
        )
    return JSONBody(body)


async def usage_daily(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        owner = await authenticate_either(request, mutation=False)
        days = int(request.query_params.get("days", "30") or 30)
        if not 1 <= days <= 366:
            raise invalid("'days' must be between 1 and 366.", param="days")
    except ApiError as err:
        return openai_error(err)
    except ValueError:
        return openai_error(invalid("'days' must be an integer.", param="days"))
    now = gateway.clock.now()
    since = beijing_day(now - (days - 1) * 86400)
    return JSONBody({"since": since, "today": beijing_day(now), "days": await gateway.usage.daily(owner.account_id, since)})


async def feedback(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        owner = await authenticate_either(request, mutation=True)
        submission = parse_submission((await read_json(request, str(owner.account_id))).data)
        result = await request.app.state.feedback.submit(owner, submission, gateway.clock.now())
    except ApiError as err:
        return openai_error(err)
    return JSONBody(result, status_code=201)


def routes() -> list[Route]:
    return [
        Route("/api/v1/usage", usage, methods=["GET"]),
        Route("/api/v1/usage/daily", usage_daily, methods=["GET"]),
        Route("/api/v1/feedback", feedback, methods=["POST"]),
    ]
