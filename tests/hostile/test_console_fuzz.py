"""The console under hostile input: every form post and every `/api/v1/` endpoint, as an
anonymous visitor, a signed-in user and an admin, with the CSRF token right, wrong or missing,
with a session cookie or an API key, with fields of wrong types, absurd numbers and junk text,
and every page and GET endpoint with fuzzed ids and queries. Never a 5xx, never a hang, and an
`/api/v1/` error is always the console API's envelope (`{"error": {...}}`); pages answer HTML.

Actions that end the session (sign-out, revoking it) are fuzzed too: a session found signed out
is signed in again before the next example."""

from __future__ import annotations

import copy
import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from longcat.console.routes import endpoints
from tests.support.console import Browser, admin_password
from tests.support.hostile import (
    REQUEST_TIMEOUT,
    TEXT,
    check_reply,
    encode,
    examples,
    healthy,
    hostile_values,
    mutated,
    pct,
    query_string,
)

pytestmark = pytest.mark.fuzz

# PostgreSQL refuses what SQLite takes (and the other way round): ids beyond 64 bits, NUL bytes.
SCALE_OUT = True

PASSWORD = "correct horse battery staple"

# Each form post and the fields its form has.
FORMS = {
    "/login": ["email", "password", "next"],
    "/register": ["email", "password", "invite_code"],
    "/logout": [],
    "/account/password": ["current_password", "new_password"],
    "/account/sessions/{session_id}/revoke": [],
    "/account/verify": [],
    "/reset-password": ["email", "token", "new_password"],
    "/keys": ["name"],
    "/keys/{key_id}/{action}": ["name"],
    "/feedback": ["rating", "category", "text", "request_id"],
    "/playground": ["format", "model", "system", "message", "temperature", "max_tokens", "stream"],
    "/admin/users": ["email", "password", "is_admin"],
    "/admin/users/{account_id}": ["action", "daily_quota", "rpm", "tpm", "concurrency"],
    "/admin/keys/{key_id}/{action:str}": [],
    "/admin/invites": ["note", "days"],
    "/admin/invites/{invite_id}/revoke": [],
}
# Valid bodies of the JSON endpoints, to be broken field by field.
API_BODIES = {
    "/api/v1/auth/register": [{"email": "new@example.com", "password": PASSWORD}],
    "/api/v1/auth/login": [{"email": "nobody@example.com", "password": "wrong password"}],
    "/api/v1/auth/logout": [{}],
    "/api/v1/account/password": [{"current_password": "wrong password", "new_password": PASSWORD}],
    "/api/v1/keys": [{"name": "fuzzed key"}],
    "/api/v1/keys/{key_id}": [{"name": "renamed", "status": "enabled"}, {"status": "disabled"}],
    "/api/v1/feedback": [{"rating": 4, "category": "quality", "text": "The answer was right and short."}],
    "/api/v1/playground": [
        {"format": "openai", "model": "mock-echo", "system": "Be brief.", "messages": [{"role": "user", "content": "hi"}],
         "temperature": 0.5, "max_tokens": 16, "stream": False},
        {"format": "anthropic", "model": "mock-echo", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ],
    "/api/v1/admin/users": [{"email": "made@example.com", "password": PASSWORD, "is_admin": False}],
    "/api/v1/admin/users/{account_id}": [{"disabled": False, "daily_quota": 1000, "rpm": "", "tpm": None, "concurrency": 3}],
    "/api/v1/admin/keys/{key_id}": [{"status": "enabled"}],
    "/api/v1/admin/invites": [{"note": "for a friend", "days": 7}],
    "/api/v1/account/sessions/{session_id}": [{}],
    "/api/v1/admin/invites/{invite_id}": [{}],
}
# Page and API GET routes (and the docs site's): ids and queries are fuzzed.
GET_ROUTES = sorted(
    {(e.method, e.path) for e in endpoints() if e.method == "GET" and e.handler is not None}
    | {("GET", "/api/v1/openapi.json")}
    | {("GET", p) for p in ("/", "/login", "/register", "/account", "/verify-email", "/reset-password", "/lang/{lang}",
                            "/theme/{theme}", "/keys", "/usage", "/usage/live", "/usage.csv", "/admin/usage", "/admin/usage/live",
                            "/admin/usage.csv", "/feedback", "/playground", "/admin", "/admin/users", "/admin/users/{account_id}",
                            "/admin/feedback", "/admin/invites", "/admin/audit")}
    | {("GET", p) for p in ("/llms.txt", "/docs", "/docs/zh", "/docs/", "/docs/zh/", "/docs/search", "/docs/zh/search",
                            "/docs/{page}", "/docs/zh/{page}")}
)
API_MUTATIONS = sorted((e.method, e.path) for e in endpoints() if e.method != "GET" and e.handler is not None)
PLANS = {("POST", p) for p in FORMS} | set(GET_ROUTES) | set(API_MUTATIONS)


class Actors:
    """Who the fuzzer speaks as: anonymous, a user (with a key and a spare key to break), an
    admin, and a victim account whose ids the admin's requests name."""

    def __init__(self, server) -> None:
        self.server = server
        self.anon = Browser(server.base_url)
        self.user = Browser(server.base_url)
        self.user_email = "console-fuzz@example.com"
        assert self.user.register(self.user_email, PASSWORD).status_code == 303
        self.admin = Browser(server.base_url)
        self.admin_pw = admin_password(server)
        assert self.admin.login("admin@localhost", self.admin_pw).status_code == 303
        victim = self.admin.api("POST", "/api/v1/admin/users", {"email": "victim@example.com", "password": PASSWORD})
        assert victim.status_code == 201, victim.text
        self.victim_id = victim.json()["account"]["id"] if "account" in victim.json() else victim.json()["id"]
        self.key_id, self.key = self.user.create_key("kept")
        self.spare_key_id, _ = self.user.create_key("spare")

    def ensure(self) -> None:
        """Sign the user and the admin in again if an example signed them out."""
        for browser, email, password in ((self.user, self.user_email, PASSWORD), (self.admin, "admin@localhost", self.admin_pw)):
            r = browser.get("/api/v1/account")
            if r.status_code != 200 or r.json().get("email") != email:  # signed out, or in as someone new
                browser.client.cookies.clear()
                assert browser.login(email, password).status_code == 303

    def ids(self) -> st.SearchStrategy[dict[str, str]]:
        junk = st.one_of(st.sampled_from(["0", "-1", "99999999999999999999999", "abc", "1e3", "%00", "..", "x" * 3000]), TEXT.filter(bool))
        own = st.sampled_from([str(self.spare_key_id), str(self.victim_id), "1", "2"])
        return st.fixed_dictionaries({
            "key_id": st.one_of(st.just(str(self.spare_key_id)), junk),
            "account_id": st.one_of(st.just(str(self.victim_id)), junk),
            "session_id": st.one_of(own, junk),
            "invite_id": st.one_of(own, junk),
            "action": st.one_of(st.sampled_from(["rename", "enable", "disable", "delete", "revoke"]), junk),
            "lang": st.one_of(st.sampled_from(["en", "zh", "zh_CN"]), junk),
            "theme": st.one_of(st.sampled_from(["light", "dark", "system"]), junk),
            "page": st.one_of(st.sampled_from(["quickstart", "api", "agents", "index", "search"]), junk),
        })


@pytest.fixture(scope="module")
def actors(server):
    a = Actors(server)
    yield a
    for b in (a.anon, a.user, a.admin):
        b.close()


def fill(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + ":str}", pct(value)).replace("{" + name + "}", pct(value))
    return path


def who(actors: Actors, name: str) -> Browser:
    return {"anon": actors.anon, "user": actors.user, "admin": actors.admin}[name]


CSRF = st.sampled_from(["right", "right", "missing", "wrong", "empty", "other"])


_TOKENS: dict[tuple[int, str], str] = {}


def token(actors: Actors, browser: Browser, how: str) -> str | None:
    """The CSRF token to send: the browser's own (right), another session's, junk, or none."""
    if how == "missing":
        return None
    if how == "empty":
        return ""
    if how == "wrong":
        return "x" * 43
    source = (actors.admin if browser is actors.user else actors.user) if how == "other" else browser
    # A session's token is the same for its whole life (the anonymous one: for its pre-cookie).
    cache = (id(source), source.client.cookies.get("lc_session") or source.client.cookies.get("lc_pre") or "")
    if cache not in _TOKENS or not cache[1]:
        _TOKENS[cache] = source.csrf("/login" if source is actors.anon else "/account")
    return _TOKENS[cache]


FIELD_VALUES = st.one_of(
    TEXT, st.sampled_from(["", "on", "0", "-1", "1e308", "NaN", "99999999999999999999999", "x" * 300, "a@b.c", "//evil.example/",
                           "\x00", "\ud800", "%00", "<script>alert(1)</script>", "delete", "make_admin", "disable"])
)


def form_body(fields: dict[str, str], csrf: str | None) -> bytes:
    pairs = dict(fields)
    if csrf is not None:
        pairs["csrf_token"] = csrf
    return "&".join(f"{pct(k)}={pct(v)}" for k, v in pairs.items()).encode()


@pytest.mark.parametrize("path", sorted(FORMS))
def test_form_posts(server, actors, path):
    @examples(ci=8)
    @given(
        ids=actors.ids(),
        actor=st.sampled_from(["anon", "user", "admin"]),
        csrf=CSRF,
        known=st.fixed_dictionaries({}, optional={f: FIELD_VALUES for f in FORMS[path]}),
        extra=st.dictionaries(TEXT, FIELD_VALUES, max_size=3),
        ctype=st.sampled_from(["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=latin-1",
                               "multipart/form-data", "application/json", "text/plain"]),
    )
    def run(ids, actor, csrf, known, extra, ctype):
        actors.ensure()
        browser = who(actors, actor)
        url = fill(path, ids)
        r = browser.client.post(url, content=form_body({**extra, **known}, token(actors, browser, csrf)),
                                headers={"Content-Type": ctype}, timeout=REQUEST_TIMEOUT)
        check_reply(url, r)

    run()
    healthy(server)


@pytest.mark.parametrize(("method", "path"), API_MUTATIONS)
def test_api_mutations(server, actors, method, path):
    seeds = API_BODIES[path]

    @examples(ci=10)
    @given(
        ids=actors.ids(),
        actor=st.sampled_from(["anon", "user", "admin", "user-key", "bad-key", "bad-cookie"]),
        csrf=CSRF,
        body=st.one_of(mutated(seeds), st.sampled_from(seeds).map(copy.deepcopy), hostile_values(big=False)),
    )
    def run(ids, actor, csrf, body):
        actors.ensure()
        url = fill(path, ids)
        headers = {"Content-Type": "application/json"}
        if actor in ("user-key", "bad-key"):
            client = httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT)
            headers["Authorization"] = f"Bearer {actors.key}" if actor == "user-key" else "Bearer ak_" + "0" * 40
        elif actor == "bad-cookie":
            client = httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT, cookies={"lc_session": "x" * 64, "lc_pre": "\x7f"})
        else:
            browser = who(actors, actor)
            client = browser.client
            value = token(actors, browser, csrf)
            if value is not None:
                headers["X-CSRF-Token"] = value
        try:
            r = client.request(method, url, content=encode(body), headers=headers, timeout=REQUEST_TIMEOUT)
        finally:
            if client is not getattr(who(actors, actor) if actor in ("anon", "user", "admin") else None, "client", None):
                client.close()
        check_reply(url, r)

    run()
    healthy(server)


QUERIES = st.dictionaries(
    st.sampled_from(["page", "from", "to", "key", "model", "status", "account", "q", "day", "days", "limit", "next", "token",
                     "invite", "lang", "x"]),
    st.one_of(TEXT, st.sampled_from(["0", "-1", "abc", "2026-02-30", "9999-12-31", "1e308", "99999999999999999999", "", "%00",
                                     "//evil.example", "x" * 3000])),
    max_size=4,
)


@pytest.mark.parametrize(("method", "path"), GET_ROUTES)
def test_pages_and_reads(server, actors, method, path):
    @examples(ci=4)
    @given(ids=actors.ids(), actor=st.sampled_from(["anon", "user", "admin"]), query=QUERIES,
           lang=st.sampled_from([None, "zh-CN", "*", "xx;q=abc", "\u00e9" * 50]))
    def run(ids, actor, query, lang):
        actors.ensure()
        url = fill(path, ids) + ("?" + query_string(query) if query else "")
        headers = {"Accept-Language": lang.encode()} if lang else {}
        r = who(actors, actor).client.get(url, headers=headers, timeout=REQUEST_TIMEOUT)
        check_reply(url, r)

    run()
    healthy(server)


STATIC_MOUNTS = ["/static", "/docs/static"]


@pytest.mark.parametrize("mount", STATIC_MOUNTS)
def test_static_files(server, mount):
    @examples(ci=10)
    @given(name=st.one_of(TEXT.map(pct), st.sampled_from(["../../../../etc/passwd", "..%2f..%2fREADME.md", "%00", "app.css?v=x",
                                                            "vendor/../../config.py", "." * 300, "x/" * 200])))
    def run(name):
        url = f"{mount}/{name}"
        r = httpx.get(server.base_url + url, timeout=REQUEST_TIMEOUT)
        check_reply(url, r)
        assert b"root:x:0:0" not in r.content and b"secret_key" not in r.content

    run()


def test_console_json_depth_bomb_is_a_400(server, actors):
    """Regression: the console's JSON endpoints parsed with the standard library's recursion, so
    a deeply nested body was a RecursionError and a 500."""
    for body in (b"[" * 5000 + b"]" * 5000, b'{"name":' + b"[" * 200 + b"]" * 200 + b"}"):
        r = actors.user.client.post("/api/v1/keys", content=body,
                                    headers={"Content-Type": "application/json", "X-CSRF-Token": actors.user.page_csrf()})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
        assert "nests deeper than 128 levels" in r.json()["error"]["message"]
    assert json.loads(actors.user.get("/api/v1/keys").text)["data"]
