"""Registration, sign-in and out, the account page (password, sessions), emailed links, and the
language and theme switches."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from longcat.console import i18n
from longcat.console.apispec import Api, B, I, S, arr, obj
from longcat.console.web import (
    THEME_COOKIE,
    THEMES,
    Ctx,
    base_url,
    client_ip,
    console,
    endpoint,
    json_ok,
    page,
    read_json_body,
    safe_next,
    set_cookie,
)
from longcat.gateway.actions import ActionError, row_id
from longcat.gateway.principal import SESSION_COOKIE, Principal

ACCOUNT = obj(id=I, email=S, is_admin=B, email_verified=B, created_at=I)


def account_json(principal: Principal, verified: bool = True) -> dict[str, Any]:
    a = principal.account
    return {"id": a.id, "email": a.email, "is_admin": a.is_admin, "email_verified": verified, "created_at": a.created_at}


def _ua(request: Request) -> str:
    return request.headers.get("user-agent", "")[:200]


# ------------------------------------------------------------------------------------ pages


@page(auth=None)
async def home(ctx: Ctx) -> Response:
    return ctx.redirect("/keys" if ctx.user else "/login")


@page(auth=None)
async def login(ctx: Ctx) -> Response:
    nxt = safe_next(ctx.request.query_params.get("next") or ctx.form.get("next"))
    if ctx.request.method == "GET":
        if ctx.user:
            return ctx.redirect(nxt)
        return ctx.render("login.html", next=nxt, email="", error=None)
    email = ctx.form.get("email", "")
    try:
        signed = await ctx.c.desk.login(email, ctx.form.get("password", ""), ip=client_ip(ctx.request), user_agent=_ua(ctx.request))
    except ActionError as e:
        headers = e.headers or None
        return ctx.render("login.html", status=e.status, headers=headers, next=nxt, email=email[:254], error=ctx.err(e))
    # A fresh token at every sign-in: whatever session cookie the browser had (perhaps planted)
    # is replaced and deleted, so it cannot ride along into the signed-in session.
    if ctx.user:
        await ctx.c.desk.logout(ctx.user.token)
    ctx.sign_in(signed.token)
    return ctx.redirect(nxt)


@page(auth=None)
async def register(ctx: Ctx) -> Response:
    mode = ctx.c.settings.registration
    invite = ctx.request.query_params.get("invite", "") if ctx.request.method == "GET" else ctx.form.get("invite_code", "")
    if ctx.request.method == "GET":
        if ctx.user:
            return ctx.redirect("/keys")
        return ctx.render("register.html", mode=mode, email="", invite=invite[:100], errors={}, error=None)
    email = ctx.form.get("email", "")
    try:
        signed = await ctx.c.desk.register(
            email, ctx.form.get("password", ""), invite_code=invite, ip=client_ip(ctx.request),
            user_agent=_ua(ctx.request), base_url=base_url(ctx.request),
        )
    except ActionError as e:
        errors = {e.field: ctx.err(e)} if e.field else {}
        return ctx.render("register.html", status=e.status, mode=mode, email=email[:254], invite=invite[:100], errors=errors,
                          error=None if e.field else ctx.err(e))
    if ctx.user:
        await ctx.c.desk.logout(ctx.user.token)
    ctx.sign_in(signed.token)
    return ctx.redirect("/keys?welcome=1")


@page(auth=None)
async def logout(ctx: Ctx) -> Response:
    if ctx.user:
        await ctx.c.desk.logout(ctx.user.token)
    ctx.sign_out()
    return ctx.redirect("/login")


async def _account_page(ctx: Ctx, status: int = 200, **extra: Any) -> Response:
    assert ctx.user is not None
    row = await ctx.c.accounts.account_row(ctx.user.account.id)
    sessions = await ctx.c.sessions.list(ctx.user.account.id)
    data = {"account": row, "sessions": sessions, "current_session": ctx.user.session.id if ctx.user.session else None,
            "errors": {}, "notice": None, "mail": ctx.c.desk.mailer.enabled}
    data.update(extra)
    return ctx.render("account.html", status=status, **data)


@page()
async def account(ctx: Ctx) -> Response:
    return await _account_page(ctx)


@page()
async def change_password(ctx: Ctx) -> Response:
    assert ctx.user is not None
    try:
        token = await ctx.c.desk.change_password(
            ctx.user.account, ctx.form.get("current_password", ""), ctx.form.get("new_password", ""),
            ip=client_ip(ctx.request), user_agent=_ua(ctx.request),
        )
    except ActionError as e:
        return await _account_page(ctx, status=e.status, errors={e.field or "new_password": ctx.err(e)})
    ctx.sign_in(token)
    return ctx.redirect("/account?changed=1")


@page()
async def revoke_session(ctx: Ctx) -> Response:
    assert ctx.user is not None
    sid = row_id(ctx.request.path_params["session_id"]) or -1
    await ctx.c.sessions.delete_id(ctx.user.account.id, sid)
    if ctx.user.session and sid == ctx.user.session.id:
        ctx.sign_out()
        return ctx.redirect("/login")
    return ctx.redirect("/account")


@page()
async def resend_verification(ctx: Ctx) -> Response:
    assert ctx.user is not None
    await ctx.c.desk.send_verification(ctx.user.account, base_url(ctx.request))
    return ctx.redirect("/account?sent=1")


@page(auth=None)
async def verify_email(ctx: Ctx) -> Response:
    ok = await ctx.c.desk.verify_email(ctx.request.query_params.get("token", ""))
    return ctx.render("notice.html", title=ctx.gettext("Email confirmed") if ok else ctx.gettext("This link does not work"),
                      message=ctx.gettext("Thank you: your email address is confirmed.") if ok
                      else ctx.gettext("This link is invalid, used or expired. Ask for a new one."), ok=ok)


@page(auth=None)
async def reset_password(ctx: Ctx) -> Response:
    desk = ctx.c.desk
    token = ctx.request.query_params.get("token", "") if ctx.request.method == "GET" else ctx.form.get("token", "")
    if ctx.request.method == "GET":
        return ctx.render("reset.html", token=token[:100], sent=False, error=None, mail=desk.mailer.enabled, done=False)
    try:
        if token:
            await desk.reset_password(token, ctx.form.get("new_password", ""))
            return ctx.render("reset.html", token="", sent=False, error=None, mail=True, done=True)
        await desk.request_reset(ctx.form.get("email", ""), base_url(ctx.request), client_ip(ctx.request))
    except ActionError as e:
        return ctx.render("reset.html", status=e.status, token=token[:100], sent=False, error=ctx.err(e), mail=desk.mailer.enabled, done=False)
    return ctx.render("reset.html", token="", sent=True, error=None, mail=True, done=False)


async def switch_language(request: Request) -> Response:
    lang = request.path_params["lang"]
    response = RedirectResponse(safe_next(request.query_params.get("next"), "/"), status_code=303)
    if lang in i18n.LANGUAGES:
        set_cookie(response, request, i18n.COOKIE, lang, 365 * 86400, http_only=False)
    return response


async def switch_theme(request: Request) -> Response:
    theme = request.path_params["theme"]
    response = RedirectResponse(safe_next(request.query_params.get("next"), "/"), status_code=303)
    if theme in THEMES:
        set_cookie(response, request, THEME_COOKIE, theme, 365 * 86400, http_only=False)
    return response


# ------------------------------------------------------------------------------------ JSON


@endpoint(auth=None, mutation=True)
async def api_register(request: Request, who: Principal | None) -> Response:
    body = await read_json_body(request)
    c = console(request)
    signed = await c.desk.register(
        body.get("email", "") if isinstance(body.get("email"), str) else "",
        body.get("password", "") if isinstance(body.get("password"), str) else "",
        invite_code=body.get("invite_code") if isinstance(body.get("invite_code"), str) else "",
        ip=client_ip(request), user_agent=_ua(request), base_url=base_url(request),
    )
    return _signed_in(request, signed, 201)


@endpoint(auth=None, mutation=True)
async def api_login(request: Request, who: Principal | None) -> Response:
    body = await read_json_body(request)
    c = console(request)
    signed = await c.desk.login(
        body.get("email", "") if isinstance(body.get("email"), str) else "",
        body.get("password", "") if isinstance(body.get("password"), str) else "",
        ip=client_ip(request), user_agent=_ua(request),
    )
    if who is not None and not who.by_key:
        await c.desk.logout(who.token)
    return _signed_in(request, signed, 200)


def _signed_in(request: Request, signed, status: int) -> Response:
    from longcat.gateway.sessions import csrf_token

    c = console(request)
    a = signed.account
    body = {"account": {"id": a.id, "email": a.email, "is_admin": a.is_admin, "created_at": a.created_at},
            "csrf_token": csrf_token(c.secret, signed.token)}
    response = json_ok(body, status)
    set_cookie(response, request, SESSION_COOKIE, signed.token, c.settings.session_days * 86400)
    return response


@endpoint(mutation=True)
async def api_logout(request: Request, who: Principal | None) -> Response:
    assert who is not None
    if who.by_key:
        raise ActionError("not_a_session", "An API key is not a session; there is nothing to sign out.", 400)
    await console(request).desk.logout(who.token)
    response = json_ok({"signed_out": True})
    set_cookie(response, request, SESSION_COOKIE, "", 0)
    return response


@endpoint()
async def api_account(request: Request, who: Principal | None) -> Response:
    assert who is not None
    row = await console(request).accounts.account_row(who.account.id)
    return json_ok(account_json(who, bool(row and row["email_verified"])))


@endpoint(mutation=True)
async def api_password(request: Request, who: Principal | None) -> Response:
    assert who is not None
    if who.by_key:
        raise ActionError("session_required", "Changing the password needs a console session, not an API key.", 403)
    body = await read_json_body(request)
    c = console(request)
    token = await c.desk.change_password(
        who.account, body.get("current_password") if isinstance(body.get("current_password"), str) else "",
        body.get("new_password") if isinstance(body.get("new_password"), str) else "",
        ip=client_ip(request), user_agent=_ua(request),
    )
    return _signed_in(request, type("S", (), {"account": who.account, "token": token})(), 200)


@endpoint()
async def api_sessions(request: Request, who: Principal | None) -> Response:
    assert who is not None
    rows = await console(request).sessions.list(who.account.id)
    current = who.session.id if who.session else None
    return json_ok({"data": [{**r, "current": r["id"] == current} for r in rows]})


@endpoint(mutation=True)
async def api_revoke_session(request: Request, who: Principal | None) -> Response:
    assert who is not None
    sid = row_id(request.path_params["session_id"]) or -1
    if not await console(request).sessions.delete_id(who.account.id, sid):
        raise ActionError("not_found", "There is no such session in this account.", 404)
    return json_ok({"revoked": sid})


CREDS = obj(("email", "password"), email=S, password=S, invite_code=S)
SIGNED = obj(account=ACCOUNT, csrf_token=S)
SESSION = obj(id=I, created_at=I, last_seen_at=I, expires_at=I, ip=S, user_agent=S, current=B)

ENDPOINTS = [
    Api("POST", "/api/v1/auth/register", api_register, "Create an account (per the `registration` setting) and sign in", "auth",
        auth="none", mutation=True, body=CREDS, response=SIGNED, status=201),
    Api("POST", "/api/v1/auth/login", api_login, "Sign in: sets the session cookie and returns its CSRF token", "auth",
        auth="none", mutation=True, body=obj(("email", "password"), email=S, password=S), response=SIGNED),
    Api("POST", "/api/v1/auth/logout", api_logout, "Sign out this session", "auth", mutation=True, response=obj(signed_out=B)),
    Api("GET", "/api/v1/account", api_account, "The signed-in account", "account", response=ACCOUNT),
    Api("POST", "/api/v1/account/password", api_password, "Change the password; signs out every other session", "account",
        mutation=True, body=obj(("current_password", "new_password"), current_password=S, new_password=S), response=SIGNED),
    Api("GET", "/api/v1/account/sessions", api_sessions, "The account's live sessions", "account", response=obj(data=arr(SESSION))),
    Api("DELETE", "/api/v1/account/sessions/{session_id}", api_revoke_session, "Sign one session out", "account", mutation=True,
        params=(("session_id", "path", "integer", "the session's id"),), response=obj(revoked=I)),
]

PAGES = [
    Route("/", home, methods=["GET"]),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/register", register, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/account", account, methods=["GET"]),
    Route("/account/password", change_password, methods=["POST"]),
    Route("/account/sessions/{session_id}/revoke", revoke_session, methods=["POST"]),
    Route("/account/verify", resend_verification, methods=["POST"]),
    Route("/verify-email", verify_email, methods=["GET"]),
    Route("/reset-password", reset_password, methods=["GET", "POST"]),
    Route("/lang/{lang}", switch_language, methods=["GET"]),
    Route("/theme/{theme}", switch_theme, methods=["GET"]),
]
