"""Accounts, sessions and their defences, against a real server over real sockets."""

from __future__ import annotations

import time

import httpx

from tests.support.console import Browser, admin_password, signed_in, start_console_server, unique_email


def test_register_signs_in_and_grants_the_daily_quota_at_once(console_server):
    b = Browser(console_server.base_url)
    r = b.register()
    assert r.status_code == 303 and r.headers["location"] == "/keys?welcome=1"
    page = b.get("/keys?welcome=1")
    assert page.status_code == 200 and "5,000,000" in page.text
    usage = b.api("GET", "/api/v1/usage/records").json()
    assert usage["quota"]["remaining"] == 5_000_000 and usage["quota"]["allowance"] == 5_000_000


def test_cookie_flags(console_server):
    b = Browser(console_server.base_url)
    r = b.register()
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("lc_session="))
    flags = {p.strip().split("=")[0].lower() for p in cookie.split(";")[1:]}
    assert {"httponly", "path", "max-age", "samesite"} <= flags and "secure" not in flags
    assert "samesite=lax" in cookie.lower()
    # Page responses are never cached and carry the security headers.
    page = b.get("/keys")
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_secure_cookie_behind_a_trusted_tls_proxy(tmp_path):
    server = start_console_server(tmp_path, 'trusted_proxies = "127.0.0.1"')
    try:
        c = httpx.Client(base_url=server.base_url, headers={"X-Forwarded-Proto": "https"})
        page = c.get("/login")
        pre = next(v for k, v in page.headers.multi_items() if k == "set-cookie" and v.startswith("lc_pre="))
        assert "secure" in pre.lower()
        token = __import__("re").search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        # The client is plain http behind the "proxy", so it would not send a Secure cookie back: do it by hand.
        r = httpx.post(server.base_url + "/register", data={"csrf_token": token, "email": unique_email(), "password": "correct horse battery"},
                       headers={"X-Forwarded-Proto": "https", "Cookie": pre.split(";")[0]})
        cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("lc_session="))
        assert "secure" in cookie.lower()
        # Without the header (or from an untrusted peer), no Secure flag: plain http would drop it.
        plain = Browser(server.base_url).register()
        cookie = next(v for k, v in plain.headers.multi_items() if k == "set-cookie" and v.startswith("lc_session="))
        assert "secure" not in cookie.lower()
    finally:
        server.stop()


def test_forwarded_proto_from_an_untrusted_peer_is_ignored(console_server):
    c = httpx.Client(base_url=console_server.base_url, headers={"X-Forwarded-Proto": "https"})
    page = c.get("/login")
    token = __import__("re").search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = c.post("/register", data={"csrf_token": token, "email": unique_email(), "password": "correct horse battery"})
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("lc_session="))
    assert "secure" not in cookie.lower()


def test_login_and_logout(console_server):
    email = unique_email()
    first = signed_in(console_server, email)
    b = Browser(console_server.base_url)
    assert b.login(email, "wrong password!").status_code == 401
    assert b.login(email, "correct horse battery").status_code == 303
    assert b.get("/keys").status_code == 200
    token = b.session
    r = b.post_form("/logout", {}, token_from="/keys")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    # The session is gone server-side, not only from this cookie jar.
    c = httpx.Client(base_url=console_server.base_url, cookies={"lc_session": token})
    assert c.get("/keys").status_code == 303
    assert c.get("/api/v1/account").status_code == 401
    assert first.get("/keys").status_code == 200  # other sessions stay


def test_session_fixation_a_planted_cookie_never_becomes_signed_in(console_server):
    email = unique_email()
    signed_in(console_server, email)
    victim = Browser(console_server.base_url)
    # An attacker's own valid session cookie, planted in the victim's browser…
    attacker = signed_in(console_server)
    planted = attacker.session
    victim.client.cookies.set("lc_session", planted, domain="127.0.0.1")
    # …and a made-up one: both are replaced by a fresh token at sign-in.
    assert victim.login(email, "correct horse battery", token_from="/account").status_code == 303
    assert victim.session not in (planted, None)
    me = victim.api("GET", "/api/v1/account").json()
    assert me["email"] == email
    # The planted session was ended when the victim signed in over it.
    c = httpx.Client(base_url=console_server.base_url, cookies={"lc_session": planted})
    assert c.get("/api/v1/account").status_code == 401
    made_up = Browser(console_server.base_url)
    made_up.client.cookies.set("lc_session", "made-up-token-value-0123456789", domain="127.0.0.1")
    assert made_up.get("/keys").status_code == 303
    assert made_up.login(email, "correct horse battery").status_code == 303
    assert made_up.session != "made-up-token-value-0123456789"


def test_csrf_is_required_on_every_mutation(console_server):
    a = signed_in(console_server)
    b = signed_in(console_server)
    key_id, _ = a.create_key("kept")
    # A form post without a token, with a token of another session, with a made-up one: refused, no effect.
    for token in ("", b.page_csrf(), "0" * 64):
        r = a.client.post("/keys", data={"csrf_token": token, "name": "csrf attempt"})
        assert r.status_code == 403, token
        r = a.client.post(f"/keys/{key_id}/delete", data={"csrf_token": token})
        assert r.status_code == 403
    # JSON endpoints: the session needs X-CSRF-Token; an API key (not sent by browsers) does not.
    assert a.api("POST", "/api/v1/keys", {"name": "no token"}, csrf=False).status_code == 403
    assert a.api("DELETE", f"/api/v1/keys/{key_id}", csrf=False).status_code == 403
    assert a.client.post("/api/v1/feedback", json={"rating": 5, "text": "a csrf attempt here"}).status_code == 403
    names = [k["name"] for k in a.api("GET", "/api/v1/keys").json()["data"]]
    assert names == ["kept"]
    # Sign-in and registration forms are bound to the pre-session cookie too.
    fresh = Browser(console_server.base_url)
    r = fresh.client.post("/login", data={"csrf_token": "x", "email": a.email, "password": "correct horse battery"})
    assert r.status_code == 403 and fresh.session is None
    _, secret = a.create_key("api key")
    r = httpx.post(console_server.base_url + "/api/v1/keys", json={"name": "by key"}, headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 201


def test_login_throttling_per_account_and_per_address(tmp_path):
    server = start_console_server(tmp_path, "login_rpm_account = 3\nlogin_rpm_ip = 8")
    try:
        email = unique_email()
        signed_in(server, email)
        b = Browser(server.base_url)
        codes = [b.login(email, "wrong password!").status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        r = b.login(email, "correct horse battery")
        assert r.status_code == 429 and "Try again in" in r.text and int(r.headers["retry-after"]) >= 1
        # Another account from the same address still has attempts left, up to the address's limit.
        other = unique_email()
        signed_in(server, other)
        # The address's bucket (8/min) is spent within a few attempts; it refills one attempt every
        # 7.5 s, so on a slow machine (each wrong password costs a hash) allow a few more.
        codes = []
        while 429 not in codes and len(codes) < 12:
            codes.append(Browser(server.base_url).login(unique_email(), "wrong password!").status_code)
        assert codes[-1] == 429 and len(codes) <= 12, codes
        assert Browser(server.base_url).login(other, "correct horse battery").status_code == 429
    finally:
        server.stop()


def test_password_change_revokes_every_other_session(console_server):
    email = unique_email()
    a1 = signed_in(console_server, email)
    a2 = Browser(console_server.base_url)
    assert a2.login(email, "correct horse battery").status_code == 303
    old = a1.session
    r = a1.post_form("/account/password", {"current_password": "correct horse battery", "new_password": "a brand new secret"}, token_from="/account")
    assert r.status_code == 303
    assert a1.session != old and a1.get("/keys").status_code == 200  # this browser got a fresh session
    assert a2.get("/keys").status_code == 303  # the other one is signed out
    assert Browser(console_server.base_url).login(email, "correct horse battery").status_code == 401
    assert Browser(console_server.base_url).login(email, "a brand new secret").status_code == 303
    wrong = a1.post_form("/account/password", {"current_password": "nope nope nope", "new_password": "another new secret"}, token_from="/account")
    assert wrong.status_code == 401 and "current password is wrong" in wrong.text


def test_disabling_an_account_signs_it_out_and_stops_its_keys(console_server, admin):
    user = signed_in(console_server)
    _, secret = user.create_key()
    me = user.api("GET", "/api/v1/account").json()
    ok = httpx.get(console_server.base_url + "/openai/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert ok.status_code == 200
    r = admin.api("PATCH", f"/api/v1/admin/users/{me['id']}", {"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert user.get("/keys").status_code == 303
    assert httpx.get(console_server.base_url + "/openai/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert Browser(console_server.base_url).login(user.email, "correct horse battery").status_code == 403
    audit = admin.api("GET", "/api/v1/admin/audit").json()["data"]
    assert any(e["action"] == "user.update" and e["target_account_id"] == me["id"] and e["detail"].get("disabled") for e in audit)


def test_registration_modes(tmp_path):
    server = start_console_server(tmp_path / "invite", 'registration = "invite"')
    try:
        b = Browser(server.base_url)
        assert "Invite code" in b.get("/register").text
        assert b.register(invite_code="").status_code == 403
        assert b.register(invite_code="inv_made_up").status_code == 403
        from tests.support.console import admin_browser

        admin = admin_browser(server)
        code = admin.api("POST", "/api/v1/admin/invites", {"note": "for b"}).json()["code"]
        assert b.register(invite_code=code).status_code == 303
        again = Browser(server.base_url).register(invite_code=code)
        assert again.status_code == 403 and "already used" in again.text
        listed = admin.api("GET", "/api/v1/admin/invites").json()["data"]
        assert listed[0]["status"] == "used" and code not in str(listed)
    finally:
        server.stop()
    server = start_console_server(tmp_path / "closed", 'registration = "closed"')
    try:
        b = Browser(server.base_url)
        r = b.register()
        assert r.status_code == 403 and "closed" in r.text
        assert b.client.post("/api/v1/auth/register", json={"email": unique_email(), "password": "correct horse battery"}).status_code == 403
    finally:
        server.stop()


def test_cli_set_password_resets_and_signs_out(console_server):
    email = unique_email()
    b = signed_in(console_server, email)
    out = console_server.cli("users", "set-password", email, "--password-stdin", input="set by the operator\n")
    assert "1 console session(s) signed out" in out.stdout and "set by the operator" not in out.stdout
    assert b.get("/keys").status_code == 303
    assert Browser(console_server.base_url).login(email, "set by the operator").status_code == 303
    generated = console_server.cli("users", "set-password", email)
    password = generated.stdout.strip().splitlines()[-1].split("password: ")[1]
    assert Browser(console_server.base_url).login(email, password).status_code == 303


def test_json_sign_in_returns_a_csrf_token_that_works(console_server):
    email = unique_email()
    c = httpx.Client(base_url=console_server.base_url)
    r = c.post("/api/v1/auth/register", json={"email": email, "password": "correct horse battery"})
    assert r.status_code == 201, r.text
    c2 = httpx.Client(base_url=console_server.base_url)
    r = c2.post("/api/v1/auth/login", json={"email": email, "password": "correct horse battery"})
    assert r.status_code == 200
    token = r.json()["csrf_token"]
    assert c2.post("/api/v1/keys", json={"name": "json"}, headers={"X-CSRF-Token": token}).status_code == 201
    assert c2.post("/api/v1/auth/logout", headers={"X-CSRF-Token": token}).status_code == 200
    assert c2.get("/api/v1/keys").status_code == 401


def test_first_start_banner_names_the_console_and_admin_login(console_server):
    log = console_server.log()
    assert f"Console  : http://127.0.0.1:{console_server.port}/" in log
    assert "Sign in to the console at" in log and "as admin@localhost" in log
    b = Browser(console_server.base_url)
    assert b.login("admin@localhost", admin_password(console_server)).status_code == 303
    assert b.get("/admin/users").status_code == 200


def test_no_password_or_key_in_the_log(console_server):
    b = signed_in(console_server)
    key_id, secret = b.create_key("log check")
    httpx.get(console_server.base_url + "/openai/v1/models", headers={"Authorization": f"Bearer {secret}"})
    Browser(console_server.base_url).login(b.email, "a wrong password 123")
    time.sleep(0.2)
    log = console_server.log()
    assert secret not in log and "correct horse battery" not in log and "a wrong password 123" not in log
