"""The Feedback page: rate the model, maybe earn a quota refresh, see past submissions.

Submissions go through the same `FeedbackDesk.submit` as `POST /api/v1/feedback`; the page only
adds that a chosen request must be one of the account's own."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from longcat.canonical import ApiError
from longcat.console.apispec import NS, Api, B, I, S, arr, obj
from longcat.console.web import Ctx, console, endpoint, json_ok, page
from longcat.gateway.actions import N_, ActionError
from longcat.gateway.clock import beijing_day
from longcat.gateway.feedback import CATEGORIES, MIN_TEXT, REPEAT, parse_submission
from longcat.gateway.principal import Principal


def outcome_text(result: dict[str, Any], gettext, cap: int) -> str:
    """The outcome in the page's language (FeedbackDesk's own message is English)."""
    if not result["valid"]:
        reason = result.get("reason") or ""
        if reason == REPEAT:
            return gettext("Thank you. This repeats feedback you sent before, so it does not count for a refresh.")
        if "characters" in reason:
            return gettext("Thank you. Feedback needs at least %(n)s visible characters to count for a refresh.") % {"n": MIN_TEXT}
        return gettext("Thank you. You have sent today's most valid submissions, so this one does not count for a refresh.")
    if result["refreshed"]:
        return gettext("Thank you! Your feedback earned a quota refresh: %(n)s tokens remain today.") % {"n": f"{result['quota']['remaining']:,}"}
    if result["quota"]["allowance"] >= cap:
        return gettext("Thank you! Today's maximum of refreshes is already granted, so nothing was added.")
    return gettext("Thank you! Your feedback counted, but it did not earn a refresh this time.")


async def feedback_data(ctx: Ctx) -> dict[str, Any]:
    assert ctx.user is not None
    c, aid = ctx.c, ctx.user.account.id
    history, total = await c.feedback_log.list(aid, limit=50)
    used = await c.feedback.store.valid_today(aid, beijing_day(c.gateway.clock.now()))
    return {
        "history": history, "total": total, "recent": await c.usage_log.request_ids(aid, 20), "categories": CATEGORIES,
        "remaining": max(0, c.settings.feedback_daily_limit - used), "limit": c.settings.feedback_daily_limit,
    }


async def submit(c, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
    try:
        sub = parse_submission(body)
    except ApiError as err:
        raise ActionError("invalid_feedback", N_("Give a rating from 1 to 5, a category from the list and your feedback text."), 400,
                          field=err.param) from None
    if sub.request_id and not await c.usage_log.owns_request(who.account.id, sub.request_id):
        raise ActionError("invalid_request_id", N_("Choose one of your own recent requests, or none."), 400, field="request_id")
    return await c.feedback.submit(who.owner, sub, c.gateway.clock.now())


@page()
async def feedback_page(ctx: Ctx) -> Response:
    assert ctx.user is not None
    result, error, status = None, None, 200
    form = {"rating": "", "category": "quality", "text": "", "request_id": ""}
    if ctx.request.method == "POST":
        form = {k: ctx.form.get(k, "")[:5000] for k in form}
        body = {"rating": int(form["rating"]) if form["rating"].isdigit() else form["rating"] or None, "category": form["category"],
                "text": form["text"], "request_id": form["request_id"] or None}
        try:
            result = await submit(ctx.c, ctx.user, body)
            result["text"] = outcome_text(result, ctx.gettext, ctx.c.settings.daily_quota_cap)
            form = {"rating": "", "category": "quality", "text": "", "request_id": ""}
        except ActionError as e:
            error, status = ctx.err(e), e.status
    return ctx.render("feedback.html", status=status, result=result, error=error, form=form, **await feedback_data(ctx))


@endpoint()
async def api_feedback_history(request: Request, who: Principal | None) -> Response:
    assert who is not None
    c = console(request)
    rows, total = await c.feedback_log.list(who.account.id, limit=100)
    used = await c.feedback.store.valid_today(who.account.id, beijing_day(c.gateway.clock.now()))
    return json_ok({"data": [{k: v for k, v in r.items() if k != "email"} for r in rows], "total": total,
                    "valid_remaining_today": max(0, c.settings.feedback_daily_limit - used)})


ITEM = obj(id=I, request_id=NS, rating=I, category=S, text=S, valid=B, refreshed=B, granted=I, day=S, created_at={"type": "number"})
ENDPOINTS = [
    Api("POST", "/api/v1/feedback", None, "Submit model feedback; a valid one may refresh the day's quota", "feedback", mutation=True,
        body=obj(("rating", "text"), rating={"type": "integer", "minimum": 1, "maximum": 5},
                 category={"type": "string", "enum": list(CATEGORIES)}, text=S, request_id=S),
        response=obj(id=I, valid=B, reason=NS, refreshed=B, granted=I, message=S, quota={"type": "object"}), status=201),
    Api("GET", "/api/v1/feedback/history", api_feedback_history, "The account's past submissions and their outcomes", "feedback",
        response=obj(data=arr(ITEM), total=I, valid_remaining_today=I)),
]

PAGES = [Route("/feedback", feedback_page, methods=["GET", "POST"])]
