"""The API Keys page and its JSON twin. A new key's secret is in exactly one response: the one
that created it (Cache-Control: no-store, like every console page); afterwards only its mask."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from longcat.console.apispec import NI, Api, B, I, S, arr, obj
from longcat.console.web import Ctx, base_url, console, endpoint, json_ok, page, read_json_body
from longcat.gateway.actions import N_, ActionError
from longcat.gateway.principal import Principal

KEY = obj(
    id=I, name=S, key={"type": "string", "description": "the mask, e.g. ak_Xb1…9Qz"}, status=S, created_at=I, last_used_at=NI,
    limits=obj(rpm=I, tpm=I, concurrency=I, custom=B),
)
NEW_KEY = obj(key=KEY, secret={"type": "string", "description": "the key itself: in this response only"})


async def email_confirmed(c, account_id: int) -> bool:
    """Unconfirmed addresses matter only while the platform can send the confirmation."""
    if not c.desk.mailer.enabled:
        return True
    row = await c.accounts.account_row(account_id)
    return bool(row and row["email_verified"])


async def keys_data(ctx: Ctx) -> dict[str, Any]:
    assert ctx.user is not None
    c = ctx.c
    aid = ctx.user.account.id
    return {"keys": await c.keys.list(aid), "counts": await c.keys.counts(aid), "model": next(iter(c.gateway.catalog.models), ""),
            "email_confirmed": await email_confirmed(c, aid)}


def _curl(base: str, secret: str, model: str) -> str:
    return (f"curl {base}/openai/v1/chat/completions -H 'Authorization: Bearer {secret}' -H 'Content-Type: application/json' "
            f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 100}}'")


async def _render(ctx: Ctx, status: int = 200, fragment: bool = False, **extra: Any) -> Response:
    data = await keys_data(ctx)
    data.update({"new_key": None, "secret": None, "curl": None, "error": None, "name": "",
                 "welcome": ctx.request.query_params.get("welcome") == "1"})
    data.update(extra)
    template = "_keys_main.html" if fragment and ctx.request.headers.get("hx-request") else "keys.html"
    return ctx.render(template, status=status, **data)


@page()
async def keys_page(ctx: Ctx) -> Response:
    return await _render(ctx)


@page()
async def create_key(ctx: Ctx) -> Response:
    assert ctx.user is not None
    name = ctx.form.get("name", "")
    try:
        key, secret = await ctx.c.keys.create(ctx.user.account.id, name, email_confirmed=await email_confirmed(ctx.c, ctx.user.account.id))
    except ActionError as e:
        return await _render(ctx, status=e.status, fragment=True, error=ctx.err(e), name=name[:50])
    data = await keys_data(ctx)
    return await _render(ctx, fragment=True, new_key=key, secret=secret, curl=_curl(base_url(ctx.request), secret, data["model"]))


@page()
async def key_action(ctx: Ctx) -> Response:
    """rename / enable / disable / delete, from the row's forms."""
    assert ctx.user is not None
    aid, kid, action = ctx.user.account.id, ctx.request.path_params["key_id"], ctx.request.path_params["action"]
    try:
        if action == "rename":
            await ctx.c.keys.rename(aid, kid, ctx.form.get("name", ""))
        elif action in ("enable", "disable"):
            await ctx.c.keys.set_status(aid, kid, action + "d")
        elif action == "delete":
            await ctx.c.keys.delete(aid, kid)
        else:
            raise ActionError("not_found", N_("There is no such action."), 404)
    except ActionError as e:
        return await _render(ctx, status=e.status, fragment=True, error=ctx.err(e))
    if ctx.request.headers.get("hx-request"):
        return await _render(ctx, fragment=True)
    return ctx.redirect("/keys")


# ------------------------------------------------------------------------------------ JSON


@endpoint()
async def api_keys(request: Request, who: Principal | None) -> Response:
    assert who is not None
    c = console(request)
    return json_ok({"data": await c.keys.list(who.account.id), "counts": await c.keys.counts(who.account.id)})


@endpoint(mutation=True)
async def api_create_key(request: Request, who: Principal | None) -> Response:
    assert who is not None
    body = await read_json_body(request)
    c = console(request)
    key, secret = await c.keys.create(who.account.id, body.get("name"), email_confirmed=await email_confirmed(c, who.account.id))
    return json_ok({"key": key, "secret": secret}, 201)


@endpoint()
async def api_get_key(request: Request, who: Principal | None) -> Response:
    assert who is not None
    return json_ok(await console(request).keys.get(who.account.id, request.path_params["key_id"]))


@endpoint(mutation=True)
async def api_update_key(request: Request, who: Principal | None) -> Response:
    assert who is not None
    body = await read_json_body(request)
    desk, aid, kid = console(request).keys, who.account.id, request.path_params["key_id"]
    await desk.get(aid, kid)  # 404 before anything changes
    if "name" in body:
        await desk.rename(aid, kid, body["name"])
    if "status" in body:
        await desk.set_status(aid, kid, body["status"])
    return json_ok(await desk.get(aid, kid))


@endpoint(mutation=True)
async def api_delete_key(request: Request, who: Principal | None) -> Response:
    assert who is not None
    key = await console(request).keys.delete(who.account.id, request.path_params["key_id"])
    return json_ok({"id": key.id, "deleted": True})


KEY_ID = (("key_id", "path", "integer", "the key's id"),)
COUNTS = obj(active=I, max_active=I, lifetime=I, max_lifetime=I)
ENDPOINTS = [
    Api("GET", "/api/v1/keys", api_keys, "The account's keys (masked), with their limits", "keys", response=obj(data=arr(KEY), counts=COUNTS)),
    Api("POST", "/api/v1/keys", api_create_key, "Create a key; the secret is in this response only", "keys", mutation=True,
        body=obj(("name",), name={"type": "string", "minLength": 2, "maxLength": 50}), response=NEW_KEY, status=201),
    Api("GET", "/api/v1/keys/{key_id}", api_get_key, "One key (masked)", "keys", params=KEY_ID, response=KEY),
    Api("PATCH", "/api/v1/keys/{key_id}", api_update_key, "Rename, enable or disable a key", "keys", mutation=True, params=KEY_ID,
        body=obj(name=S, status={"type": "string", "enum": ["enabled", "disabled"]}), response=KEY),
    Api("DELETE", "/api/v1/keys/{key_id}", api_delete_key, "Delete a key for good (it counts toward the lifetime limit)", "keys",
        mutation=True, params=KEY_ID, response=obj(id=I, deleted=B)),
]

PAGES = [
    Route("/keys", keys_page, methods=["GET"]),
    Route("/keys", create_key, methods=["POST"]),
    Route("/keys/{key_id}/{action}", key_action, methods=["POST"]),
]
