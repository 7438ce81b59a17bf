"""The authorization matrix: every console route and `/api/v1/` endpoint, as anonymous, user A,
user B and an admin. Each cell is one real request with its own status asserted; resources in
paths are A's, so B and the admin (who is not A either, on user routes) must not reach them.
A route added to the app without a row here fails `test_every_route_is_in_the_matrix`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from longcat.console.routes import routes as console_routes
from tests.support.console import Browser, admin_password, unique_email

ROLES = ("anon", "a", "b", "admin")
R = 303  # a redirect: to /login for anonymous visitors of signed-in pages


@dataclass
class Row:
    method: str
    path: str  # may hold {key_id}, {account_id}, {session_id}, {invite_id}
    expect: dict[str, int]
    body: Any = None
    api: bool = False
    fresh: bool = False  # the request changes who is signed in: use a throwaway session
    check: Callable[[dict, str, Any], None] | None = None  # (resources, role, response)
    query: str = ""


def users(status: int, anon: int = R) -> dict[str, int]:
    return {"anon": anon, "a": status, "b": status, "admin": status}


def owner(status: int, other: int = 404, anon: int = R) -> dict[str, int]:
    return {"anon": anon, "a": status, "b": other, "admin": other}


def admins(status: int, anon: int = R, user: int = 403) -> dict[str, int]:
    return {"anon": anon, "a": user, "b": user, "admin": status}


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


def key_unchanged(res, role, response):
    if role in ("b", "admin", "anon"):
        assert res["a"].api("GET", f"/api/v1/keys/{res['key_id']}").status_code == 200


def own_data_only(res, role, response):
    if role in ("b", "admin"):
        assert res["marker"] not in response.text, role


def own_account(res, role, response):
    if role != "anon":
        assert response.json()["email"] == res[role].email


def session_kept(res, role, response):
    if role in ("b", "admin", "anon"):
        c = Browser(res["server"].base_url)
        c.client.cookies.set("lc_session", res["spare_token"], domain="127.0.0.1")
        assert c.get("/keys").status_code == 200


WRONG = {"email": "nobody@example.com", "password": "wrong password"}
ROWS = [
    # ---------------------------------------------------------------- pages
    Row("GET", "/", {"anon": R, "a": R, "b": R, "admin": R}),
    Row("GET", "/login", {"anon": 200, "a": R, "b": R, "admin": R}),
    Row("POST", "/login", everyone(401), body=WRONG),
    Row("GET", "/register", {"anon": 200, "a": R, "b": R, "admin": R}),
    Row("POST", "/register", everyone(R), body=lambda: {"email": unique_email("m"), "password": "correct horse battery"}, fresh=True),
    Row("POST", "/logout", everyone(R), fresh=True),
    Row("GET", "/account", users(200)),
    Row("POST", "/account/password", users(401), body={"current_password": "not it at all", "new_password": "whatever you like"}),
    Row("POST", "/account/sessions/{session_id}/revoke", users(R), check=session_kept),
    Row("POST", "/account/verify", users(R)),
    Row("GET", "/verify-email", everyone(200), query="?token=bogus"),
    Row("GET", "/reset-password", everyone(200)),
    Row("POST", "/reset-password", everyone(400), body={"email": "someone@example.com"}),
    Row("GET", "/lang/{lang}", everyone(R)),
    Row("GET", "/theme/{theme}", everyone(R)),
    Row("GET", "/keys", users(200), check=own_data_only),
    Row("POST", "/keys", users(200), body={"name": "matrix key"}),
    Row("POST", "/keys/{key_id}/{action}", owner(R), check=key_unchanged),
    Row("GET", "/usage", users(200), check=own_data_only),
    Row("GET", "/usage/live", users(200), check=own_data_only),
    Row("GET", "/usage.csv", users(200), check=own_data_only),
    Row("GET", "/feedback", users(200)),
    Row("POST", "/feedback", users(200), body={"rating": "4", "category": "speed", "text": "matrix feedback text"}),
    Row("GET", "/playground", users(200)),
    Row("POST", "/playground", users(200), body={"format": "anthropic", "model": "mock-echo", "message": "hi there", "max_tokens": "20"}),
    Row("GET", "/admin", admins(R)),
    Row("GET", "/admin/users", admins(200)),
    Row("POST", "/admin/users", admins(200), body=lambda: {"email": unique_email("adm")}),
    Row("GET", "/admin/users/{account_id}", admins(200)),
    Row("POST", "/admin/users/{account_id}", admins(200), body={"action": "save", "daily_quota": "", "rpm": "", "tpm": "", "concurrency": ""}),
    Row("POST", "/admin/keys/{key_id}/{action:str}", admins(R)),
    Row("GET", "/admin/usage", admins(200)),
    Row("GET", "/admin/usage/live", admins(200)),
    Row("GET", "/admin/usage.csv", admins(200)),
    Row("GET", "/admin/feedback", admins(200)),
    Row("GET", "/admin/invites", admins(200)),
    Row("POST", "/admin/invites", admins(200), body={"note": "matrix", "days": "3"}),
    Row("POST", "/admin/invites/{invite_id}/revoke", admins(R)),
    Row("GET", "/admin/audit", admins(200)),
    # ---------------------------------------------------------------- JSON
    Row("POST", "/api/v1/auth/register", everyone(201), body=lambda: {"email": unique_email("j"), "password": "correct horse battery"}, api=True, fresh=True),
    Row("POST", "/api/v1/auth/login", everyone(401), body=WRONG, api=True),
    Row("POST", "/api/v1/auth/logout", users(200, anon=401), api=True, fresh=True),
    Row("GET", "/api/v1/account", users(200, anon=401), api=True, check=own_account),
    Row("POST", "/api/v1/account/password", users(401, anon=401), body={"current_password": "not it", "new_password": "whatever you like"}, api=True),
    Row("GET", "/api/v1/account/sessions", users(200, anon=401), api=True),
    Row("DELETE", "/api/v1/account/sessions/{session_id}", owner(200, anon=401), api=True, check=session_kept),
    Row("GET", "/api/v1/keys", users(200, anon=401), api=True, check=own_data_only),
    Row("POST", "/api/v1/keys", users(201, anon=401), body={"name": "matrix api key"}, api=True),
    Row("GET", "/api/v1/keys/{key_id}", owner(200, anon=401), api=True),
    Row("PATCH", "/api/v1/keys/{key_id}", owner(200, anon=401), body={"name": "renamed by matrix"}, api=True, check=key_unchanged),
    Row("DELETE", "/api/v1/keys/{key_id}", owner(200, anon=401), api=True, check=key_unchanged),
    Row("GET", "/api/v1/usage", users(200, anon=401), api=True, check=own_data_only),
    Row("GET", "/api/v1/usage/daily", users(200, anon=401), api=True),
    Row("GET", "/api/v1/usage/records", users(200, anon=401), api=True, check=own_data_only),
    Row("GET", "/api/v1/usage/records.csv", users(200, anon=401), api=True, check=own_data_only),
    Row("POST", "/api/v1/feedback", users(201, anon=401), body={"rating": 3, "text": "json matrix feedback"}, api=True),
    Row("GET", "/api/v1/feedback/history", users(200, anon=401), api=True),
    Row("POST", "/api/v1/playground", users(200, anon=401), body={"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}, api=True),
    Row("GET", "/api/v1/admin/usage", admins(200, anon=401), api=True),
    Row("GET", "/api/v1/admin/usage.csv", admins(200, anon=401), api=True),
    Row("GET", "/api/v1/admin/users", admins(200, anon=401), api=True),
    Row("POST", "/api/v1/admin/users", admins(201, anon=401), body=lambda: {"email": unique_email("ja")}, api=True),
    Row("GET", "/api/v1/admin/users/{account_id}", admins(200, anon=401), api=True),
    Row("PATCH", "/api/v1/admin/users/{account_id}", admins(200, anon=401), body={"daily_quota": None}, api=True),
    Row("PATCH", "/api/v1/admin/keys/{key_id}", admins(200, anon=401), body={"status": "disabled"}, api=True, check=lambda r, role, resp: role != "admin" and key_unchanged(r, role, resp)),
    Row("GET", "/api/v1/admin/feedback", admins(200, anon=401), api=True),
    Row("GET", "/api/v1/admin/invites", admins(200, anon=401), api=True),
    Row("POST", "/api/v1/admin/invites", admins(201, anon=401), body={"note": "json"}, api=True),
    Row("DELETE", "/api/v1/admin/invites/{invite_id}", admins(200, anon=401), api=True),
    Row("GET", "/api/v1/admin/audit", admins(200, anon=401), api=True),
    Row("GET", "/api/v1/openapi.json", everyone(200), api=True),
]


@pytest.fixture(scope="module")
def world(console_server):
    """A, B and the admin, signed in once; A has a usage record with a recognisable key name."""
    from tests.support.console import signed_in

    a, b = signed_in(console_server), signed_in(console_server)
    admin = Browser(console_server.base_url)
    assert admin.login("admin@localhost", admin_password(console_server)).status_code == 303
    marker = "marker-" + unique_email("k").split("@")[0]
    _, secret = a.create_key(marker)
    import httpx

    r = httpx.post(console_server.base_url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                   json={"model": "mock-echo", "messages": [{"role": "user", "content": "hello"}]})
    assert r.status_code == 200
    return {"server": console_server, "a": a, "b": b, "admin": admin, "anon": None, "marker": marker,
            "a_id": a.api("GET", "/api/v1/account").json()["id"]}


def _resources(world, path: str) -> dict[str, Any]:
    """Fresh objects of A's for one cell, as its path needs: a key, a spare session, an invite."""
    a, server = world["a"], world["server"]
    res = {**world, "account_id": world["a_id"], "action": "disable", "lang": "zh_CN", "theme": "dark"}
    if "{key_id}" in path:
        res["key_id"], _ = a.create_key("cell key")
    if "{session_id}" in path:
        spare = Browser(server.base_url)
        assert spare.login(a.email, "correct horse battery").status_code == 303
        sessions = a.api("GET", "/api/v1/account/sessions").json()["data"]
        res["session_id"] = max(s["id"] for s in sessions if not s["current"])
        res["spare_token"] = spare.session
    if "{invite_id}" in path:
        res["invite_id"] = world["admin"].api("POST", "/api/v1/admin/invites", {"note": "cell"}).json()["invite"]["id"]
    return res


def _client(world, role: str, fresh: bool) -> Browser:
    server = world["server"]
    if role == "anon":
        return Browser(server.base_url)
    if not fresh:
        return world[role]
    b = Browser(server.base_url)
    password = admin_password(server) if role == "admin" else "correct horse battery"
    assert b.login(world[role].email, password).status_code == 303
    return b


def _call(world, row: Row, role: str):
    res = _resources(world, row.path)
    path = row.path.replace("{action:str}", "{action}").format(**res) + row.query
    body = row.body() if callable(row.body) else row.body
    b = _client(world, role, row.fresh)
    if row.api:
        headers = {}
        if row.method != "GET" and role != "anon":
            headers["X-CSRF-Token"] = b.page_csrf()
        if row.method != "GET" and role == "anon":
            headers["X-CSRF-Token"] = b.csrf("/login")
        response = b.client.request(row.method, path, json=body, headers=headers)
    elif row.method == "GET":
        response = b.get(path)
    else:
        token = b.csrf("/login") if role == "anon" else b.page_csrf()
        response = b.client.post(path, data={"csrf_token": token, **(body or {})})
    return res, response


CELLS = [(row, role) for row in ROWS for role in ROLES]


@pytest.mark.parametrize(("row", "role"), CELLS, ids=[f"{r.method} {r.path} as {role}" for r, role in CELLS])
def test_cell(world, row: Row, role: str):
    res, response = _call(world, row, role)
    assert response.status_code == row.expect[role], (row.method, row.path, role, response.text[:300])
    assert response.status_code < 500
    if row.expect[role] == R and role == "anon" and row.path not in ("/", "/lang/{lang}", "/theme/{theme}") and row.method == "GET":
        assert response.headers["location"].startswith("/login")
    if row.check:
        row.check(res, role, response)


def test_every_route_is_in_the_matrix():
    covered = {(r.method, r.path) for r in ROWS}
    served = set()
    for route in console_routes():
        methods = getattr(route, "methods", None)
        if not methods:
            continue  # the static files mount
        for m in methods - {"HEAD"}:
            served.add((m, route.path))
    served |= {("GET", "/api/v1/usage"), ("GET", "/api/v1/usage/daily"), ("POST", "/api/v1/feedback")}
    assert served - covered == set(), "routes without a row in the matrix"
    assert covered - served == set(), "rows for routes that do not exist"
