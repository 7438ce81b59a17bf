"""kill -9 in the middle of a load: after a restart, every response a client saw complete is on
record, the books balance, and the quota continues from what was committed."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time

import httpx

from tests.support.load import keep_in_flight
from tests.support.server import Server, free_port, write_config

CONFIG = """
key_rpm = 0
key_tpm = 0
key_concurrency = 0
account_rpm = 0
account_tpm = 0
account_concurrency = 0

[[models]]
id = "mock-steady"
engine = "mock"
context_window = 100000
max_output = 100000
token_delay = 0.01
"""


def test_kill_9_loses_no_committed_usage(tmp_path):
    config = write_config(tmp_path / "config.toml", CONFIG)
    server = Server(tmp_path / "data", config, free_port()).start()
    key = server.new_key("crash@example.com")
    completed: dict[str, int] = {}  # request id -> total tokens the client was told
    stop = threading.Event()

    async def one(client: httpx.AsyncClient, i: int) -> None:
        body = {
            "model": "mock-steady",
            "messages": [{"role": "user", "content": " ".join(["tok"] * (5 + i % 40))}],
            "stream": i % 2 == 0,
            "stream_options": {"include_usage": True},
        }
        try:
            if body["stream"]:
                async with client.stream("POST", "/openai/v1/chat/completions", json=body) as r:
                    total = None
                    async for line in r.aiter_lines():
                        if line.startswith("data: {") and '"usage":{' in line:
                            total = json.loads(line[6:])["usage"]["total_tokens"]
                        if line == "data: [DONE]" and total is not None:
                            completed[r.headers["x-request-id"]] = total
            else:
                r = await client.post("/openai/v1/chat/completions", json=body)
                if r.status_code == 200:
                    completed[r.headers["x-request-id"]] = r.json()["usage"]["total_tokens"]
        except (httpx.HTTPError, json.JSONDecodeError):
            pass  # the server died under us: this response never completed

    async def load() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            await keep_in_flight(one, client, 30, stop, 20)

    loader = threading.Thread(target=lambda: asyncio.run(load()))
    loader.start()
    deadline = time.monotonic() + 15
    while len(completed) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    stop.set()
    loader.join(30)
    assert len(completed) >= 60, "the load did not get going"

    db = sqlite3.connect(server.data_dir / "longcat.db")
    records = dict(db.execute("select request_id, billed_tokens from usage_records").fetchall())
    missing = [rid for rid in completed if rid not in records]
    assert not missing, f"{len(missing)} completed responses have no usage record"
    assert all(records[rid] == total for rid, total in completed.items())
    # The books balance: quota used == sum of records == the daily aggregates.
    used = db.execute("select sum(used) from quota_days").fetchone()[0]
    billed, count = db.execute("select sum(billed_tokens), count(*) from usage_records").fetchone()
    assert used == billed == db.execute("select sum(billed_tokens) from usage_daily").fetchone()[0]
    assert count == db.execute("select sum(requests) from usage_daily").fetchone()[0]
    assert db.execute("select kind from quota_ledger").fetchall() == [("daily_allowance",)]
    db.close()

    # After a restart the quota continues from what was committed.
    server.start()
    try:
        report = httpx.get(server.base_url + "/api/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
        assert report["quota"]["used"] == billed
        r = httpx.post(
            server.base_url + "/openai/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "mock-steady", "messages": [{"role": "user", "content": "after the crash"}]},
        )
        assert r.status_code == 200
        report = httpx.get(server.base_url + "/api/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
        assert report["quota"]["used"] == billed + r.json()["usage"]["total_tokens"]
    finally:
        server.stop()


def test_shutdown_ends_requests_in_flight_properly_and_settles_them(tmp_path):
    # shutdown_grace is a top-level key, so it goes before the first table.
    config = write_config(tmp_path / "config.toml", "shutdown_grace = 1\n" + CONFIG.replace("token_delay = 0.01", "token_delay = 0.2"))
    server = Server(tmp_path / "data", config, free_port()).start()
    key = server.new_key("shutdown@example.com")
    words = " ".join(["w"] * 200)
    requests = {
        "chat-stream": ("/openai/v1/chat/completions", {"model": "mock-steady", "messages": [{"role": "user", "content": words}], "stream": True}),
        "chat": ("/openai/v1/chat/completions", {"model": "mock-steady", "messages": [{"role": "user", "content": words}]}),
        "anthropic-stream": ("/anthropic/v1/messages", {"model": "mock-steady", "max_tokens": 500, "messages": [{"role": "user", "content": words}], "stream": True}),
        "responses-stream": ("/openai/v1/responses", {"model": "mock-steady", "input": words, "stream": True}),
    }
    replies: dict[str, httpx.Response] = {}

    def send(name: str) -> None:
        path, body = requests[name]
        replies[name] = httpx.post(server.base_url + path, headers={"Authorization": f"Bearer {key}"}, json=body, timeout=30)

    threads = [threading.Thread(target=send, args=(name,)) for name in requests]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert server.stop(signal.SIGTERM) == 0
    for t in threads:
        t.join(15)

    # Each ends the way its format ends a failed reply, not with a cut connection.
    assert replies["chat"].status_code == 503 and replies["chat"].json()["error"]["code"] == "overloaded"
    chat = replies["chat-stream"].text
    assert '"code":"overloaded"' in chat and chat.rstrip().endswith("data: [DONE]")
    assert "event: error" in replies["anthropic-stream"].text and "overloaded_error" in replies["anthropic-stream"].text
    assert "event: response.failed" in replies["responses-stream"].text

    db = sqlite3.connect(server.data_dir / "longcat.db")
    rows = db.execute("select stream, status, input_tokens, output_tokens, billed_tokens from usage_records").fetchall()
    assert len(rows) == 4 and {r[1] for r in rows} == {"shutdown"}
    for stream, _, inp, out, billed in rows:
        # Streams are billed for what they delivered; the non-streaming reply delivered nothing.
        assert billed == (inp + out if stream else 0)
        assert 0 < out < 200
    assert db.execute("select sum(used) from quota_days").fetchone()[0] == sum(r[4] for r in rows)


def test_shutdown_also_ends_requests_still_being_admitted(tmp_path):
    catalog = CONFIG + """
[[models]]
id = "mock-slow-count"
engine = "mock"
context_window = 100000
max_output = 100000
count_delay = 2.5
"""
    config = write_config(tmp_path / "config.toml", "shutdown_grace = 1\n" + catalog)
    server = Server(tmp_path / "data", config, free_port()).start()
    key = server.new_key("admitting@example.com")
    replies = []

    def send() -> None:
        replies.append(
            httpx.post(
                server.base_url + "/openai/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "mock-slow-count", "messages": [{"role": "user", "content": "hello"}], "stream": True},
                timeout=30,
            )
        )

    t = threading.Thread(target=send)
    t.start()
    time.sleep(0.3)
    # The grace period (1 s) ends while the request is still being counted (2.5 s).
    assert server.stop(signal.SIGTERM) == 0
    t.join(15)
    assert replies and replies[0].status_code == 503 and replies[0].json()["error"]["code"] == "overloaded"
    db = sqlite3.connect(server.data_dir / "longcat.db")
    assert db.execute("select status, billed_tokens from usage_records").fetchall() == [("shutdown", 0)]

