"""No input gives a 500: every console form and endpoint, fed junk, answers 4xx (or 2xx/3xx)."""

from __future__ import annotations

import httpx

from tests.console.test_matrix import ROWS

JUNK_JSON = [b"", b"null", b"[]", b"{", b'"text"', b'{"name": {"a": 1}}', b'{"email": 5, "password": []}',
             b'{"status": null, "name": "\\u0000\\u0000"}', b'{"messages": "nope", "max_tokens": "x", "temperature": "hot"}',
             b'{"rating": 1e400, "text": 7}', "{\"name\": \"\ud800\"}".encode("utf-8", "surrogatepass"), b"\xff\xfe\x00garbage"]
JUNK_FORMS = [b"", b"%%%", b"a=1&a=2&csrf_token=", b"name=" + b"x" * 300_000, "email=\u0000&password=\u0000".encode(),
              b"rating=99&category=<script>&text=%00%00", b"\xff\xfe\xfd"]


def test_junk_never_gives_500(console_server, user_a, admin):
    ids = {"key_id": "1", "account_id": "1", "session_id": "1", "invite_id": "1", "action": "rename", "lang": "xx", "theme": "x"}
    weird_ids = {"key_id": "99999999999999999999999", "account_id": "-1", "session_id": "abc", "invite_id": "0x1",
                 "action": "../../etc", "lang": "../", "theme": "%00"}
    checked = 0
    for who in (user_a, admin, None):
        client = who.client if who else httpx.Client(base_url=console_server.base_url)
        token = who.page_csrf() if who else ""
        for row in ROWS:
            for params in (ids, weird_ids):
                path = row.path.replace("{action:str}", "{action}").format(**params)
                if row.method == "GET":
                    for query in ("", "?page=abc&from=x&to=y&key=-1&q=%00&token=" + "z" * 500):
                        r = client.get(path + query)
                        assert r.status_code < 500, (path + query, r.text[:200])
                        checked += 1
                    continue
                bodies = JUNK_JSON if row.api else JUNK_FORMS
                for body in bodies:
                    ctype = "application/json" if row.api else "application/x-www-form-urlencoded"
                    if not row.api:
                        body = b"csrf_token=" + token.encode() + b"&" + body
                    r = client.request(row.method, path, content=body, headers={"Content-Type": ctype, "X-CSRF-Token": token})
                    assert r.status_code < 500, (row.method, path, body[:80], r.text[:200])
                    checked += 1
    assert checked > 1000


def test_oversized_bodies_are_refused(console_server, user_a):
    token = user_a.page_csrf()
    r = user_a.client.post("/keys", content=b"csrf_token=" + token.encode() + b"&name=" + b"x" * (300 * 1024),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    r = user_a.client.post("/api/v1/playground", content=b'{"x": "' + b"y" * (2 * 1024 * 1024) + b'"}',
                           headers={"Content-Type": "application/json", "X-CSRF-Token": token})
    assert r.status_code == 413
