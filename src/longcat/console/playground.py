"""The playground page. With JavaScript it streams through `POST /api/v1/playground` (SSE);
without, the form posts here and the page shows the finished exchange. Both run
`gateway.playground.run`: the account's quota and limits, endpoint `playground`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from longcat.console.apispec import Api, B, I, N, S, arr, obj
from longcat.console.web import Ctx, base_url, console, endpoint, page, read_json_body
from longcat.gateway import playground as pg
from longcat.gateway.actions import N_, ActionError
from longcat.gateway.principal import Principal

# The gateway's errors are English (they are the API's); the page says the common ones in its language.
ERROR_TEXT = {
    "insufficient_quota": N_("Your daily quota cannot cover this request. It refreshes at 00:00 Beijing time; valid feedback may also earn a refresh."),
    "rate_limit_exceeded": N_("Too many requests right now. Wait a moment and send again."),
    "context_length_exceeded": N_("The conversation is longer than this model's context window. Start a new conversation or shorten it."),
    "overloaded": N_("The model is busy right now. Try again in a moment."),
}


def localized(error: dict[str, Any], gettext) -> str:
    text = ERROR_TEXT.get(error.get("code", ""))
    return gettext(text) if text else error.get("message", "")


def pretty(value: Any) -> str:
    """SSE text as it was sent; JSON bodies indented."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)


def _models(c) -> list[str]:
    return list(c.gateway.catalog.models)


async def _owner(c, who: Principal):
    owner = await c.accounts.owner_for_account(who.account.id)
    if owner is None:
        raise ActionError("forbidden", "This account is disabled.", 403)
    return owner


@page()
async def playground_page(ctx: Ctx) -> Response:
    assert ctx.user is not None
    c = ctx.c
    models = _models(c)
    form = {"format": "openai", "model": models[0] if models else "", "system": "", "message": "", "temperature": "0.7",
            "max_tokens": "512", "stream": "on"}
    result: dict[str, Any] | None = None
    error, status, snippets, exchange = None, 200, None, None
    if ctx.request.method == "POST":
        form = {k: ctx.form.get(k, "" if k != "stream" else "")[:200_000] for k in form}
        try:
            ex = pg.parse_exchange({**form, "messages": [{"role": "user", "content": form["message"]}], "stream": form["stream"] == "on"}, models)
            exchange = ex
            snippets = pg.snippets(base_url(ctx.request), ex)
            result = {}
            async for name, data in pg.run(c.gateway, await _owner(c, ctx.user), ex, c.secret):
                if name == "error":
                    data = {**data, "message": localized(data, ctx.gettext)}
                if name in ("request", "done", "error"):
                    result[name] = data
        except ActionError as e:
            error, status = ctx.err(e), e.status
    if snippets is None:
        snippets = pg.snippets(base_url(ctx.request), pg.parse_exchange(
            {"format": "openai", "model": form["model"] or (models[0] if models else ""), "messages": [{"role": "user", "content": "Hello!"}],
             "temperature": 0.7, "max_tokens": 512, "stream": False}, models)) if models else {}
    return ctx.render("playground.html", status=status, models=models, form=form, result=result, error=error, snippets=snippets,
                      exchange=exchange, pretty=pretty)


@endpoint(mutation=True)
async def api_playground(request: Request, who: Principal | None) -> Response:
    assert who is not None
    c = console(request)
    body = await read_json_body(request, 1024 * 1024)
    ex = pg.parse_exchange(body, _models(c))
    owner = await _owner(c, who)
    snippets = pg.snippets(base_url(request), ex)
    from longcat.console import i18n

    gettext = c.translations[i18n.negotiate(request.cookies.get(i18n.COOKIE), request.headers.get("accept-language"))].gettext

    async def frames() -> AsyncIterator[bytes]:
        async for name, data in pg.run(c.gateway, owner, ex, c.secret):
            if name == "request":
                data = {**data, "snippets": snippets}
            elif name == "error":
                data = {**data, "text": localized(data, gettext)}
            yield f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

    return StreamingResponse(frames(), media_type="text/event-stream; charset=utf-8",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


EXCHANGE = obj(
    ("messages",),
    format={"type": "string", "enum": list(pg.FORMATS)}, model=S, system=S,
    messages=arr(obj(("role", "content"), role={"type": "string", "enum": ["user", "assistant"]}, content=S)),
    temperature={"type": "number", "minimum": 0, "maximum": 2}, max_tokens={"type": "integer", "minimum": 1}, stream=B,
)
ENDPOINTS = [
    Api("POST", "/api/v1/playground", api_playground,
        "One playground exchange on the account's quota (endpoint `playground`), streamed as SSE events "
        "`request` (both formats' request bodies and copy-as snippets), `delta`, then `done` (both formats' responses) or `error`",
        "playground", mutation=True, body=EXCHANGE, produces="text/event-stream",
        response=obj(request_id=S, text=S, usage=obj(input_tokens=I, output_tokens=I, cached_tokens=I), stream=B, temperature=N)),
]

PAGES = [Route("/playground", playground_page, methods=["GET", "POST"])]
