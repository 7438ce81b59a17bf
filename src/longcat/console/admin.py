"""Admin pages (role admin) and their JSON twins. Every change goes through `AdminDesk`, which
writes the audit log these pages show."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from longcat.console.apispec import NI, Api, B, I, S, arr, obj
from longcat.console.keys import KEY
from longcat.console.web import Ctx, console, endpoint, json_ok, page, read_json_body
from longcat.gateway.actions import ActionError
from longcat.gateway.feedback import quota_body
from longcat.gateway.principal import Principal

PER_PAGE = 50


def _int(value: Any, default: int = 1) -> int:
    try:
        return max(1, min(int(value), 1_000_000))
    except (TypeError, ValueError):
        return default


async def users_data(c, query) -> dict[str, Any]:
    q = (query.get("q") or "").strip()[:254]
    number = _int(query.get("page"))
    rows, total = await c.accounts.search_accounts(q, PER_PAGE, (number - 1) * PER_PAGE)
    return {"users": rows, "total": total, "q": q, "page": number, "pages": max(1, -(-total // PER_PAGE))}


async def user_data(c, account_id: Any) -> dict[str, Any]:
    row = await c.admin.user(account_id)
    now = c.gateway.clock.now()
    status = await c.gateway.quota.status(row["id"], row["daily_quota"], now)
    audit, _ = await c.audit.list(account_id=row["id"], limit=20)
    return {"account": row, "keys": await c.keys.list(row["id"]), "quota": quota_body(status), "audit": audit,
            "defaults": {"daily_quota": c.settings.daily_quota, "rpm": c.settings.account_rpm, "tpm": c.settings.account_tpm,
                         "concurrency": c.settings.account_concurrency}}


# ------------------------------------------------------------------------------------ pages


@page(auth="admin")
async def admin_home(ctx: Ctx) -> Response:
    return ctx.redirect("/admin/users")


@page(auth="admin")
async def users_page(ctx: Ctx) -> Response:
    assert ctx.user is not None
    created, error, status = None, None, 200
    if ctx.request.method == "POST":
        try:
            account, password = await ctx.c.admin.create_user(ctx.user, ctx.form.get("email", ""), ctx.form.get("password", ""),
                                                              ctx.form.get("is_admin") == "on")
            created = {"account": account, "password": password}
        except ActionError as e:
            error, status = ctx.err(e), e.status
    data = await users_data(ctx.c, ctx.request.query_params)
    link = lambda n: "/admin/users?" + urlencode({k: v for k, v in (("q", data["q"]), ("page", n)) if v and v != 1})  # noqa: E731
    return ctx.render("admin/users.html", status=status, created=created, error=error, link=link, **data)


@page(auth="admin")
async def user_page(ctx: Ctx) -> Response:
    assert ctx.user is not None
    aid = ctx.request.path_params["account_id"]
    error, status, notice = None, 200, None
    if ctx.request.method == "POST":
        f = ctx.form
        changes: dict[str, Any] = {}
        action = f.get("action", "save")
        if action == "save":
            changes = {k: f.get(k, "") for k in ("daily_quota", "rpm", "tpm", "concurrency")}
        elif action in ("disable", "enable"):
            changes = {"disabled": action == "disable"}
        elif action in ("make_admin", "remove_admin"):
            changes = {"is_admin": action == "make_admin"}
        try:
            await ctx.c.admin.update_user(ctx.user, aid, changes)
            notice = ctx.gettext("Saved.")
        except ActionError as e:
            error, status = ctx.err(e), e.status
    try:
        data = await user_data(ctx.c, aid)
    except ActionError as e:
        return ctx.render("notice.html", status=e.status, title=ctx.gettext("Not found"), message=ctx.err(e))
    return ctx.render("admin/user.html", status=status, error=error, notice=notice, **data)


@page(auth="admin")
async def key_status(ctx: Ctx) -> Response:
    assert ctx.user is not None
    status = "enabled" if ctx.request.path_params["action"] == "enable" else "disabled"
    key = await ctx.c.admin.set_key_status(ctx.user, ctx.request.path_params["key_id"], status)
    stored = await ctx.c.accounts.get_key(key["id"])
    return ctx.redirect(f"/admin/users/{stored.account_id}" if stored else "/admin/users")


@page(auth="admin")
async def feedback_page(ctx: Ctx) -> Response:
    number = _int(ctx.request.query_params.get("page"))
    rows, total = await ctx.c.feedback_log.list(None, PER_PAGE, (number - 1) * PER_PAGE)
    return ctx.render("admin/feedback.html", rows=rows, total=total, page=number, pages=max(1, -(-total // PER_PAGE)))


@page(auth="admin")
async def invites_page(ctx: Ctx) -> Response:
    assert ctx.user is not None
    created, error, status = None, None, 200
    if ctx.request.method == "POST":
        try:
            invite, code = await ctx.c.admin.create_invite(ctx.user, ctx.form.get("note", ""), ctx.form.get("days", "14"))
            created = {"invite": invite, "code": code}
        except ActionError as e:
            error, status = ctx.err(e), e.status
    return ctx.render("admin/invites.html", status=status, invites=await ctx.c.admin.list_invites(), created=created, error=error,
                      mode=ctx.c.settings.registration)


@page(auth="admin")
async def revoke_invite(ctx: Ctx) -> Response:
    assert ctx.user is not None
    await ctx.c.admin.revoke_invite(ctx.user, ctx.request.path_params["invite_id"])
    return ctx.redirect("/admin/invites")


@page(auth="admin")
async def audit_page(ctx: Ctx) -> Response:
    number = _int(ctx.request.query_params.get("page"))
    rows, total = await ctx.c.audit.list(limit=PER_PAGE, offset=(number - 1) * PER_PAGE)
    return ctx.render("admin/audit.html", rows=rows, total=total, page=number, pages=max(1, -(-total // PER_PAGE)))


# ------------------------------------------------------------------------------------ JSON


@endpoint(auth="admin")
async def api_users(request: Request, who: Principal | None) -> Response:
    data = await users_data(console(request), request.query_params)
    return json_ok({"data": data["users"], "total": data["total"], "page": data["page"], "pages": data["pages"]})


@endpoint(auth="admin", mutation=True)
async def api_create_user(request: Request, who: Principal | None) -> Response:
    assert who is not None
    body = await read_json_body(request)
    account, password = await console(request).admin.create_user(who, body.get("email"), body.get("password") or "", body.get("is_admin") is True)
    return json_ok({"account": account, "password": password}, 201)


@endpoint(auth="admin")
async def api_user(request: Request, who: Principal | None) -> Response:
    data = await user_data(console(request), request.path_params["account_id"])
    return json_ok({k: v for k, v in data.items() if k != "defaults"})


@endpoint(auth="admin", mutation=True)
async def api_update_user(request: Request, who: Principal | None) -> Response:
    assert who is not None
    body = await read_json_body(request)
    allowed = {"disabled", "is_admin", "daily_quota", "rpm", "tpm", "concurrency"}
    if set(body) - allowed:
        raise ActionError("invalid_field", "Unknown fields: " + ", ".join(sorted(set(body) - allowed)), 400)
    return json_ok(await console(request).admin.update_user(who, request.path_params["account_id"], body))


@endpoint(auth="admin", mutation=True)
async def api_admin_key(request: Request, who: Principal | None) -> Response:
    assert who is not None
    body = await read_json_body(request)
    return json_ok(await console(request).admin.set_key_status(who, request.path_params["key_id"], body.get("status")))


@endpoint(auth="admin")
async def api_feedback(request: Request, who: Principal | None) -> Response:
    number = _int(request.query_params.get("page"))
    rows, total = await console(request).feedback_log.list(None, PER_PAGE, (number - 1) * PER_PAGE)
    return json_ok({"data": rows, "total": total, "page": number})


@endpoint(auth="admin")
async def api_invites(request: Request, who: Principal | None) -> Response:
    return json_ok({"data": await console(request).admin.list_invites()})


@endpoint(auth="admin", mutation=True)
async def api_create_invite(request: Request, who: Principal | None) -> Response:
    assert who is not None
    body = await read_json_body(request)
    invite, code = await console(request).admin.create_invite(who, body.get("note", ""), body.get("days", 14))
    return json_ok({"invite": invite, "code": code}, 201)


@endpoint(auth="admin", mutation=True)
async def api_revoke_invite(request: Request, who: Principal | None) -> Response:
    assert who is not None
    await console(request).admin.revoke_invite(who, request.path_params["invite_id"])
    return json_ok({"revoked": True})


@endpoint(auth="admin")
async def api_audit(request: Request, who: Principal | None) -> Response:
    number = _int(request.query_params.get("page"))
    rows, total = await console(request).audit.list(limit=PER_PAGE, offset=(number - 1) * PER_PAGE)
    return json_ok({"data": rows, "total": total, "page": number})


USER = obj(id=I, email=S, is_admin=B, disabled=B, email_verified=B, created_at=I, daily_quota=NI, rpm_limit=NI, tpm_limit=NI,
           concurrency_limit=NI, keys=I)
AID = (("account_id", "path", "integer", "the account's id"),)
PAGE = (("page", "query", "integer", f"page of {PER_PAGE}"),)
INVITE = obj(id=I, code={"type": "string", "description": "masked"}, note=S, status=S, created_at=I, expires_at=NI, used_by=NI, used_at=NI)
OPT = {"type": ["integer", "string", "null"], "description": "a whole number, or null / '' for the configured default"}
ENDPOINTS = [
    Api("GET", "/api/v1/admin/users", api_users, "Search accounts by email", "admin", auth="admin",
        params=(("q", "query", "string", "part of an email"), *PAGE), response=obj(data=arr(USER), total=I, page=I, pages=I)),
    Api("POST", "/api/v1/admin/users", api_create_user, "Create an account (a password is generated when none is given)", "admin",
        auth="admin", mutation=True, body=obj(("email",), email=S, password=S, is_admin=B), response=obj(account=USER, password=S), status=201),
    Api("GET", "/api/v1/admin/users/{account_id}", api_user, "An account with its keys, today's quota and its audit entries", "admin",
        auth="admin", params=AID, response=obj(account=USER, keys=arr(KEY), quota={"type": "object"}, audit=arr({"type": "object"}))),
    Api("PATCH", "/api/v1/admin/users/{account_id}", api_update_user, "Disable or enable, make or unmake admin, set the daily quota and limits",
        "admin", auth="admin", mutation=True, params=AID,
        body=obj(disabled=B, is_admin=B, daily_quota=OPT, rpm=OPT, tpm=OPT, concurrency=OPT), response=USER),
    Api("PATCH", "/api/v1/admin/keys/{key_id}", api_admin_key, "Enable or disable any account's key", "admin", auth="admin",
        mutation=True, params=(("key_id", "path", "integer", "the key's id"),),
        body=obj(("status",), status={"type": "string", "enum": ["enabled", "disabled"]}), response=KEY),
    Api("GET", "/api/v1/admin/feedback", api_feedback, "Every account's feedback, newest first", "admin", auth="admin", params=PAGE,
        response=obj(data=arr({"type": "object"}), total=I, page=I)),
    Api("GET", "/api/v1/admin/invites", api_invites, "Invite codes (masked) and their state", "admin", auth="admin", response=obj(data=arr(INVITE))),
    Api("POST", "/api/v1/admin/invites", api_create_invite, "Create an invite code; the code is in this response only", "admin",
        auth="admin", mutation=True, body=obj(note=S, days=I), response=obj(invite=INVITE, code=S), status=201),
    Api("DELETE", "/api/v1/admin/invites/{invite_id}", api_revoke_invite, "Revoke an unused invite code", "admin", auth="admin",
        mutation=True, params=(("invite_id", "path", "integer", "the invite's id"),), response=obj(revoked=B)),
    Api("GET", "/api/v1/admin/audit", api_audit, "The audit log of admin changes, newest first", "admin", auth="admin", params=PAGE,
        response=obj(data=arr({"type": "object"}), total=I, page=I)),
]

PAGES = [
    Route("/admin", admin_home, methods=["GET"]),
    Route("/admin/users", users_page, methods=["GET", "POST"]),
    Route("/admin/users/{account_id}", user_page, methods=["GET", "POST"]),
    Route("/admin/keys/{key_id}/{action:str}", key_status, methods=["POST"]),
    Route("/admin/feedback", feedback_page, methods=["GET"]),
    Route("/admin/invites", invites_page, methods=["GET", "POST"]),
    Route("/admin/invites/{invite_id}/revoke", revoke_invite, methods=["POST"]),
    Route("/admin/audit", audit_page, methods=["GET"]),
]
