"""The API Keys page and endpoints: shown once, masked afterwards, limits, and revocation that
reaches every replica within a second."""

from __future__ import annotations

import re
import time

import httpx

from tests.support.console import SECRET, Browser, signed_in, start_console_server
from tests.support.server import scale_out_backend


def models(base: str, secret: str) -> int:
    return httpx.get(base + "/openai/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code


def test_a_new_key_is_shown_once_then_only_masked(console_server):
    b = signed_in(console_server)
    token = b.csrf("/keys")
    r = b.client.post("/keys", data={"csrf_token": token, "name": "shown once"})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    secret = SECRET.search(r.text).group(1)
    assert re.fullmatch(r"ak_[A-Za-z0-9]{40}", secret)
    assert f"Bearer {secret}" in r.text  # the ready curl line for this deployment
    assert console_server.base_url + "/openai/v1/chat/completions" in r.text
    mask = f"{secret[:7]}…{secret[-4:]}"
    assert models(console_server.base_url, secret) == 200
    later = [b.get(p) for p in ("/keys", "/usage", "/usage/live", "/usage.csv", "/feedback", "/playground", "/account")]
    later += [b.api("GET", p) for p in ("/api/v1/keys", "/api/v1/usage/records", "/api/v1/usage/records.csv", "/api/v1/usage")]
    for response in later:
        assert secret not in response.text, response.url
        assert secret[3:] not in response.text
    assert mask in b.get("/keys").text
    assert secret not in console_server.log()


def test_htmx_create_returns_the_fragment_with_the_key(console_server):
    b = signed_in(console_server)
    token = b.csrf("/keys")
    r = b.client.post("/keys", data={"csrf_token": token, "name": "via htmx"}, headers={"HX-Request": "true"})
    assert r.status_code == 200 and r.text.lstrip().startswith('<div id="keys-main">')
    assert SECRET.search(r.text) and r.headers["cache-control"] == "no-store"


def test_names_are_validated_with_clear_messages(console_server):
    b = signed_in(console_server)
    for name, status in (("x", 400), ("y" * 51, 400), ("tab\there", 400), ("  ", 400)):
        assert b.api("POST", "/api/v1/keys", {"name": name}).status_code == status, name
    assert b.api("POST", "/api/v1/keys", {"name": 12}).status_code == 400
    assert b.api("POST", "/api/v1/keys", {}).status_code == 400
    r = b.post_form("/keys", {"name": "x"}, token_from="/keys")
    assert r.status_code == 400 and "2 to 50 characters" in r.text
    b.client.cookies.set("lc_lang", "zh_CN", domain="127.0.0.1")
    zh = b.client.post("/keys", data={"csrf_token": b.csrf("/keys"), "name": "x"})
    assert "2 到 50 个字符" in zh.text


def test_rename_disable_enable_delete(console_server):
    b = signed_in(console_server)
    key_id, secret = b.create_key("first name")
    assert b.post_form(f"/keys/{key_id}/rename", {"name": "second name"}, token_from="/keys").status_code == 303
    assert b.api("GET", f"/api/v1/keys/{key_id}").json()["name"] == "second name"
    assert b.post_form(f"/keys/{key_id}/disable", {}, token_from="/keys").status_code == 303
    assert models(console_server.base_url, secret) == 401
    assert b.api("PATCH", f"/api/v1/keys/{key_id}", {"status": "enabled"}).json()["status"] == "enabled"
    assert models(console_server.base_url, secret) == 200
    assert b.api("PATCH", f"/api/v1/keys/{key_id}", {"status": "deleted"}).status_code == 400
    page = b.get("/keys").text
    assert "Delete “second name” for good?" in page  # the confirmation step, in the page without script
    assert b.post_form(f"/keys/{key_id}/delete", {}, token_from="/keys").status_code == 303
    assert models(console_server.base_url, secret) == 401
    assert b.api("GET", f"/api/v1/keys/{key_id}").status_code == 404
    assert "second name" not in b.get("/keys").text


def test_limits_100_active_and_200_lifetime(console_server):
    b = signed_in(console_server)
    token = b.page_csrf()
    ids = []
    for i in range(100):
        r = b.client.post("/api/v1/keys", json={"name": f"key {i}"}, headers={"X-CSRF-Token": token})
        assert r.status_code == 201, r.text
        ids.append(r.json()["key"]["id"])
    r = b.client.post("/api/v1/keys", json={"name": "one too many"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_limit_active"
    assert "100 keys, the most allowed" in r.json()["error"]["message"]
    page = b.post_form("/keys", {"name": "one too many"}, token_from="/keys")
    assert page.status_code == 409 and "Delete a key to create a new one" in page.text
    # Deleting makes room, but every key ever made counts toward the lifetime limit.
    for key_id in ids:
        assert b.client.delete(f"/api/v1/keys/{key_id}", headers={"X-CSRF-Token": token}).status_code == 200
    for i in range(100):
        assert b.client.post("/api/v1/keys", json={"name": f"again {i}"}, headers={"X-CSRF-Token": token}).status_code == 201
    counts = b.api("GET", "/api/v1/keys").json()["counts"]
    assert counts == {"active": 100, "max_active": 100, "lifetime": 200, "max_lifetime": 200}
    last = b.client.get("/api/v1/keys").json()["data"][0]["id"]
    b.client.delete(f"/api/v1/keys/{last}", headers={"X-CSRF-Token": token})
    r = b.client.post("/api/v1/keys", json={"name": "past the lifetime"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_limit_lifetime"


def test_a_disabled_key_gets_401_within_a_second_on_every_replica(tmp_path):
    with scale_out_backend("console_keys") as env:
        first = start_console_server(tmp_path / "a", env=env)
        second = start_console_server(tmp_path / "b", env=env)
        try:
            b = signed_in(first)
            key_id, secret = b.create_key("replicated")
            assert models(first.base_url, secret) == 200 and models(second.base_url, secret) == 200
            assert b.api("PATCH", f"/api/v1/keys/{key_id}", {"status": "disabled"}).status_code == 200
            done = time.monotonic()
            codes = {}
            while time.monotonic() - done < 1.0 and set(codes.values()) != {401}:
                codes = {s.port: models(s.base_url, secret) for s in (first, second)}
            assert set(codes.values()) == {401} and time.monotonic() - done < 1.0, codes
            # A session made on one replica works on the other: sessions live in the database.
            other = Browser(second.base_url)
            other.client.cookies.set("lc_session", b.session, domain="127.0.0.1")
            assert other.get("/keys").status_code == 200
            assert other.api("DELETE", f"/api/v1/keys/{key_id}").status_code == 200
            assert models(first.base_url, secret) == 401
        finally:
            first.stop()
            second.stop()
