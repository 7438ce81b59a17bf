"""The plumbing every console route shares: who is asking, which language and theme, CSRF,
bounded form and JSON bodies, rendering and cookies.

Pages: `@page(auth=…)` resolves the session, redirects anonymous visitors to /login, answers
403 to non-admins on admin pages, and refuses any POST without the browser's CSRF token.
JSON endpoints (`@endpoint(…)`) accept a session cookie (mutations then need the token in
`X-CSRF-Token`) or an API key, and answer errors in the platform's OpenAI-style error body.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from longcat.canonical import ApiError
from longcat.console import i18n
from longcat.console.state import Console
from longcat.gateway.actions import N_, ActionError
from longcat.gateway.principal import PRE_COOKIE, SESSION_COOKIE, Principal, from_key, from_session, has_key
from longcat.gateway.sessions import csrf_ok, csrf_token
from longcat.httpkit import client_address, trusted_peer
from longcat.protocols.fields import parse_json_object
from longcat.protocols.openai_errors import openai_error_body

log = logging.getLogger("longcat.console")

MAX_FORM_BYTES = 256 * 1024
THEMES = ("system", "light", "dark")
THEME_COOKIE = "lc_theme"
# The security headers (CSP, frame denial…) are the app's, for every response (httpkit.SecurityHeaders).
# Console pages hold account data (and once, a new key): never kept by the browser or a proxy.
NO_STORE = {"Cache-Control": "no-store"}


def console(request: Request) -> Console:
    return request.app.state.console


# ------------------------------------------------------------------------------ network facts


def _trusted(request: Request) -> bool:
    peer = request.client.host if request.client else ""
    return trusted_peer(peer, console(request).settings.trusted_proxies)


def client_ip(request: Request) -> str:
    """The client's address; X-Forwarded-For only counts when a trusted proxy sent it."""
    peer = request.client.host if request.client else ""
    return client_address(peer, request.headers.get("x-forwarded-for", ""), console(request).settings.trusted_proxies)


def is_https(request: Request) -> bool:
    if request.url.scheme == "https":
        return True
    return _trusted(request) and request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower() == "https"


def base_url(request: Request) -> str:
    """This deployment's address, for snippets and links: the setting, else what the request used."""
    configured = console(request).settings.public_url.rstrip("/")
    if configured:
        return configured
    scheme = "https" if is_https(request) else "http"
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{scheme}://{host}"


def safe_next(value: str | None, default: str = "/keys") -> str:
    """Only paths of this site: no scheme, no //host, no backslash tricks."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or any(ord(c) < 32 for c in value):
        return default
    return value[:500]


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int | None, http_only: bool = True) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=http_only, samesite="lax", secure=is_https(request))


# ------------------------------------------------------------------------------ bodies


async def read_body(request: Request, limit: int = MAX_FORM_BYTES) -> bytes:
    """The body, bounded in size and in the silence between its chunks (`body_timeout`), like the
    API's bodies: a form that trickles in holds nothing for long."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ActionError("too_large", N_("The form is too large."), 413)
    timeout = console(request).settings.body_timeout
    chunks, size, more = [], 0, True
    while more:
        try:
            message = await asyncio.wait_for(request.receive(), timeout)
        except TimeoutError:
            raise ActionError("bad_form", N_("The form could not be read."), 408) from None
        if message["type"] == "http.disconnect":
            raise ActionError("bad_form", N_("The form could not be read."), 400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ActionError("too_large", N_("The form is too large."), 413)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def read_form(request: Request) -> dict[str, str]:
    raw = await read_body(request)
    try:
        pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=500)
    except ValueError:
        raise ActionError("bad_form", N_("The form could not be read."), 400) from None
    return {k: v.replace("\x00", "") for k, v in pairs}


async def read_json_body(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, Any]:
    """The body as a JSON object (none is `{}`), read as the API's bodies are: bounded nesting
    (a depth bomb is a 400, not a parser's recursion error), lone surrogates replaced."""
    raw = await read_body(request, limit)
    if not raw.strip():
        return {}
    return parse_json_object(raw, console(request).settings.max_json_depth)


# ------------------------------------------------------------------------------ pages


@dataclass
class Ctx:
    """One page request: who, in which language and theme, with which CSRF token."""

    request: Request
    c: Console
    user: Principal | None
    lang: str
    theme: str
    pre: str  # the pre-session cookie (new or kept): binds CSRF before sign-in
    new_pre: bool
    form: dict[str, str] = field(default_factory=dict)
    cookies: list[tuple[str, str, int | None]] = field(default_factory=list)

    @property
    def csrf(self) -> str:
        return csrf_token(self.c.secret, self.user.token if self.user else "pre:" + self.pre)

    def gettext(self, message: str) -> str:
        return self.c.translations[self.lang].gettext(message)

    def err(self, e: ActionError) -> str:
        return e.text(self.gettext)

    def render(self, template: str, status: int = 200, headers: dict[str, str] | None = None, **data: Any) -> HTMLResponse:
        env = self.c.envs[self.lang]
        query = [(k, v) for k, v in self.request.query_params.multi_items()]
        here = self.request.url.path + (("?" + urlencode(query)) if query else "")
        html = env.get_template(template).render(
            ctx=self, user=self.user, csrf=self.csrf, theme=self.theme, languages=i18n.LANGUAGES,
            html_lang=i18n.HTML_LANG[self.lang], here=here, path=self.request.url.path,
            static=lambda p: f"/static/{p}?v={self.c.static_version}", settings=self.c.settings,
            base_url=base_url(self.request), **data,
        )
        response = HTMLResponse(html, status_code=status, headers={**NO_STORE, **(headers or {})})
        return self.finish(response)

    def redirect(self, url: str, status: int = 303) -> Response:
        response = RedirectResponse(url, status_code=status, headers=NO_STORE)
        if self.request.headers.get("hx-request"):
            response = Response(status_code=204, headers={**NO_STORE, "HX-Redirect": url})
        return self.finish(response)

    def finish(self, response: Response) -> Response:
        if self.new_pre:
            set_cookie(response, self.request, PRE_COOKIE, self.pre, None)
        for name, value, age in self.cookies:
            set_cookie(response, self.request, name, value, age)
        return response

    def sign_in(self, token: str) -> None:
        self.cookies.append((SESSION_COOKIE, token, self.c.settings.session_days * 86400))

    def sign_out(self) -> None:
        self.cookies.append((SESSION_COOKIE, "", 0))


async def build_ctx(request: Request) -> Ctx:
    c = console(request)
    user = await from_session(c.sessions, request.cookies.get(SESSION_COOKIE))
    lang = i18n.negotiate(request.cookies.get(i18n.COOKIE), request.headers.get("accept-language"))
    theme = request.cookies.get(THEME_COOKIE) or "system"
    pre = request.cookies.get(PRE_COOKIE) or ""
    new_pre = not (16 <= len(pre) <= 64 and pre.replace("-", "").replace("_", "").isalnum())
    if new_pre:
        pre = secrets.token_urlsafe(24)
    return Ctx(request, c, user, lang, theme if theme in THEMES else "system", pre, new_pre)


Handler = Callable[[Ctx], Awaitable[Response]]


def page(auth: str | None = "user") -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """`auth`: None (anyone), "user" (signed in) or "admin"."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            ctx = await build_ctx(request)
            if auth and ctx.user is None:
                return ctx.redirect("/login?" + urlencode({"next": request.url.path + (("?" + request.url.query) if request.url.query else "")}))
            if auth == "admin" and not ctx.user.is_admin:  # type: ignore[union-attr]
                return ctx.render("notice.html", status=403, title=ctx.gettext("Not allowed"),
                                  message=ctx.gettext("This page needs an administrator account."))
            try:
                if request.method == "POST":
                    ctx.form = await read_form(request)
                    given = ctx.form.get("csrf_token") or request.headers.get("x-csrf-token")
                    if not csrf_ok(ctx.c.secret, ctx.user.token if ctx.user else "pre:" + ctx.pre, given):
                        return ctx.render("notice.html", status=403, title=ctx.gettext("The form expired"),
                                          message=ctx.gettext("This form was open too long or came from another site. Go back, reload the page and try again."))
                return await handler(ctx)
            except ActionError as e:
                return ctx.render("notice.html", status=e.status, title=ctx.gettext("Something is not right"), message=ctx.err(e))

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return wrap


# ------------------------------------------------------------------------------ JSON endpoints


def api_error(code: str, message: str, status: int, *, param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = {400: "invalid_request", 401: "authentication", 403: "permission", 404: "not_found", 429: "rate_limit"}.get(status, "invalid_request")
    err = ApiError(kind, code, message, param=param, status=status)  # type: ignore[arg-type]
    return JSONResponse(openai_error_body(err), status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


def json_ok(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


ApiHandler = Callable[[Request, Principal | None], Awaitable[Response]]


def endpoint(auth: str | None = "user", mutation: bool = False) -> Callable[[ApiHandler], Callable[[Request], Awaitable[Response]]]:
    def wrap(handler: ApiHandler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            c = console(request)
            who: Principal | None = None
            try:
                if has_key(request.headers):
                    who = await from_key(c.gateway, c.accounts, request.headers)
                else:
                    who = await from_session(c.sessions, request.cookies.get(SESSION_COOKIE))
                    if who is not None and mutation and not csrf_ok(c.secret, who.token, request.headers.get("x-csrf-token")):
                        return api_error("csrf_failed", "This request needs the session's CSRF token in the X-CSRF-Token header.", 403)
                    if who is not None:
                        # A JSON call counts against the account's requests per minute, whichever
                        # way it was authenticated (a key's are charged by `from_key`).
                        await c.gateway.limiter.charge_request(who.owner, c.gateway.clock.now())
                    if who is None and mutation and auth is None:
                        # Anonymous mutations (sign-in, registration) are bound to the pre-session cookie.
                        pre = request.cookies.get(PRE_COOKIE, "")
                        if not csrf_ok(c.secret, "pre:" + pre, request.headers.get("x-csrf-token")) and not request.headers.get("content-type", "").startswith("application/json"):
                            return api_error("csrf_failed", "This request needs a CSRF token.", 403)
                if auth and who is None:
                    return api_error("not_authenticated", "Sign in to the console, or send an API key as 'Authorization: Bearer <key>'.", 401)
                if auth == "admin" and not who.is_admin:  # type: ignore[union-attr]
                    return api_error("forbidden", "This endpoint needs an administrator account.", 403)
                return await handler(request, who)
            except ApiError as err:
                return JSONResponse(openai_error_body(err), status_code=err.status, headers={"Cache-Control": "no-store", **err.headers})
            except ActionError as e:
                return api_error(e.code, e.text(), e.status, param=e.field, headers=e.headers)

        run.__name__ = handler.__name__
        run.__doc__ = handler.__doc__
        return run

    return wrap
