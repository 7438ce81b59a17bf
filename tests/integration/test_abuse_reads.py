"""Reads are cheap whatever the account's history: /api/v1/usage takes its totals from the daily
aggregate, not by summing the day's raw records on every call."""

from __future__ import annotations

import sqlite3
import statistics
import time
import uuid

import httpx

from longcat.gateway.clock import beijing_day
from tests.support.server import MOCK_CATALOG, Server, free_port, write_config

RECORDS = 200_000


def test_usage_totals_come_from_the_daily_aggregate(tmp_path):
    server = Server(tmp_path, write_config(tmp_path / "config.toml", MOCK_CATALOG), free_port()).start()
    try:
        email = f"busy{uuid.uuid4().hex[:8]}@example.com"
        key = server.new_key(email)
        day = beijing_day(time.time())
        with sqlite3.connect(server.data_dir / "longcat.db") as db:
            account_id, key_id = db.execute(
                "SELECT a.id, k.id FROM accounts a JOIN api_keys k ON k.account_id = a.id WHERE a.email = ?", (email,)
            ).fetchone()
            db.executemany(
                "INSERT INTO usage_records (request_id, account_id, key_id, model, endpoint, stream, input_tokens,"
                " output_tokens, cached_tokens, billed_tokens, status, latency_ms, day, created_at)"
                " VALUES (?, ?, ?, 'mock-echo', 'chat.completions', 0, 10, 5, 0, 15, 'ok', 3, ?, ?)",
                ((f"req_{i:024x}", account_id, key_id, day, time.time()) for i in range(RECORDS)),
            )
            # The aggregate the writer keeps in step with the records (here: set by hand, to tell them apart).
            db.execute(
                "INSERT INTO usage_daily (account_id, day, model, requests, input_tokens, output_tokens, cached_tokens,"
                " billed_tokens) VALUES (?, ?, 'mock-echo', ?, ?, ?, 0, ?)",
                (account_id, day, RECORDS + 1, RECORDS * 10, RECORDS * 5, RECORDS * 15),
            )
        times = []
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}) as client:
            for _ in range(5):
                started = time.perf_counter()
                report = client.get("/api/v1/usage")
                times.append(time.perf_counter() - started)
                assert report.status_code == 200
        totals = report.json()["totals"]
        assert totals["requests"] == RECORDS + 1 and totals["billed_tokens"] == RECORDS * 15
        assert len(report.json()["recent"]) == 50
        assert statistics.median(times) < 0.1, times
    finally:
        server.stop()


def test_stored_conversations_keep_only_what_means_something(tmp_path):
    """Unknown fields in input items (padding) are neither stored nor carried along a chain."""
    server = Server(tmp_path, write_config(tmp_path / "config.toml", MOCK_CATALOG), free_port()).start()
    try:
        key = server.new_key(f"pad{uuid.uuid4().hex[:8]}@example.com")
        pad = "x" * 2_000_000
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello", "junk": pad}], "pad": pad}
        previous = None
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            for _ in range(3):
                body = {"model": "mock-echo", "input": [item], "store": True}
                if previous:
                    body["previous_response_id"] = previous
                r = client.post("/openai/v1/responses", json=body)
                assert r.status_code == 200, r.text[:300]
                previous = r.json()["id"]
        with sqlite3.connect(server.data_dir / "longcat.db") as db:
            stored = db.execute("SELECT sum(length(items)) + sum(length(body)) FROM responses").fetchone()[0]
        assert stored < 20_000, stored  # three turns of "hello", not 12 MB of padding
    finally:
        server.stop()
