"""The gateway's hot path keeps its promises: a cached key is refused within a second of being
revoked, in the process that revoked it and on every other replica (via Redis), and the usage of
a response is on disk before the client sees the response complete."""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest

from tests.support.console import signed_in, start_console_server
from tests.support.server import scale_out_backend


def models(base: str, secret: str) -> int:
    return httpx.get(base + "/openai/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code


def refused_within(servers, secret: str, limit: float) -> float:
    """Seconds until every server refuses `secret` (fails if that takes `limit` or more)."""
    start = time.monotonic()
    codes: dict[int, int] = {}
    while time.monotonic() - start < limit:
        codes = {s.port: models(s.base_url, secret) for s in servers}
        if set(codes.values()) == {401}:
            return time.monotonic() - start
    raise AssertionError(f"still accepted after {limit} s: {codes}")


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    server = start_console_server(tmp_path_factory.mktemp("hot-one"))
    yield server
    server.stop()


def test_one_process_refuses_a_cached_key_at_once_when_disabled_or_deleted(one):
    b = signed_in(one)
    for action in ("disable", "delete"):
        key_id, secret = b.create_key(f"cached {action}")
        assert [models(one.base_url, secret) for _ in range(5)] == [200] * 5  # now cached
        if action == "disable":
            assert b.api("PATCH", f"/api/v1/keys/{key_id}", {"status": "disabled"}).status_code == 200
        else:
            assert b.api("DELETE", f"/api/v1/keys/{key_id}").status_code == 200
        assert models(one.base_url, secret) == 401  # the change emptied this process's cache


def test_the_cli_returns_only_once_the_change_is_in_force(one):
    email = f"cli{time.monotonic_ns()}@example.com"
    secret = one.new_key(email)
    assert models(one.base_url, secret) == 200
    key_id = one.cli("keys", "list", email).stdout.splitlines()[-1].split()[0]
    one.cli("keys", "disable", key_id)
    assert models(one.base_url, secret) == 401
    one.cli("keys", "enable", key_id)
    assert models(one.base_url, secret) == 200


def test_two_replicas_refuse_a_cached_key_within_a_second(tmp_path):
    with scale_out_backend("hot_keys") as env:
        first = start_console_server(tmp_path / "a", env=env)
        second = start_console_server(tmp_path / "b", env=env)
        try:
            b = signed_in(first)
            for action in ("disable", "delete"):
                key_id, secret = b.create_key(f"replicated {action}")
                for _ in range(3):  # cached on both
                    assert models(first.base_url, secret) == 200 and models(second.base_url, secret) == 200
                if action == "disable":
                    assert b.api("PATCH", f"/api/v1/keys/{key_id}", {"status": "disabled"}).status_code == 200
                else:
                    assert b.api("DELETE", f"/api/v1/keys/{key_id}").status_code == 200
                refused_within((first, second), secret, 1.0)
            # An account disabled by an admin on one replica: its keys stop on the other too.
            admin_key = first.new_key("admin-target@example.com")
            assert models(second.base_url, admin_key) == 200
            account_id = None
            from tests.support.console import admin_browser

            admin = admin_browser(first)
            for row in admin.api("GET", "/api/v1/admin/users?q=admin-target").json()["data"]:
                if row["email"] == "admin-target@example.com":
                    account_id = row["id"]
            assert account_id is not None
            assert admin.api("PATCH", f"/api/v1/admin/users/{account_id}", {"disabled": True}).status_code == 200
            refused_within((first, second), admin_key, 1.0)
        finally:
            first.stop()
            second.stop()


def test_usage_is_on_disk_before_the_response_completes(one):
    secret = one.new_key(f"disk{time.monotonic_ns()}@example.com")
    db = sqlite3.connect(one.data_dir / "longcat.db")
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": "mock-echo", "messages": [{"role": "user", "content": "on disk first"}]}
    try:
        with httpx.Client(base_url=one.base_url, headers=headers, timeout=30) as client:
            for i in range(20):
                stream = i % 2 == 1
                with client.stream("POST", "/openai/v1/chat/completions", json={**body, "stream": stream}) as r:
                    assert r.status_code == 200
                    rid = r.headers["x-request-id"]
                    raw = b"".join(r.iter_bytes())
                    # The last bytes have arrived: the record must already be committed.
                    row = db.execute("SELECT status, billed_tokens FROM usage_records WHERE request_id = ?", (rid,)).fetchone()
                    assert row is not None, f"request {i} ({'stream' if stream else 'json'}) complete but not on disk"
                    assert row[0] == "ok" and row[1] > 0
                    assert (b"[DONE]" in raw) if stream else raw.endswith(b"}")
    finally:
        db.close()
