"""Exact metering under load: 200 concurrent requests over both formats, streaming and not, a
fifth of them cut off by the client mid-stream. Usage records, the quota and what the clients
saw must agree to the token."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time

import httpx
import pytest

from tests.support.server import Server, free_port, write_config

CONFIG = """
key_rpm = 0
key_tpm = 0
key_concurrency = 0
account_rpm = 0
account_tpm = 0
account_concurrency = 0
daily_quota = 100000000

[[models]]
id = "mock-fast"
engine = "mock"
context_window = 100000
max_output = 100000

[[models]]
id = "mock-cut"
engine = "mock"
context_window = 100000
max_output = 100000
token_delay = 0.25
"""

TOTAL = 200
CUT = TOTAL // 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("exact-server")
    config = write_config(data / "config.toml", CONFIG)
    srv = Server(data, config, free_port()).start()
    srv.key = srv.new_key("load@example.com")
    yield srv
    srv.stop()


def text_for(i: int) -> str:
    return " ".join(f"w{i}x{j}" for j in range(5 + i % 17))


async def prompt_tokens(client: httpx.AsyncClient, text: str) -> int:
    r = await client.post("/anthropic/v1/messages/count_tokens", json={"model": "mock-fast", "messages": [{"role": "user", "content": text}]})
    return r.json()["input_tokens"]


async def openai_call(client: httpx.AsyncClient, text: str, stream: bool) -> int:
    body = {"model": "mock-fast", "messages": [{"role": "user", "content": text}], "stream": stream}
    if not stream:
        r = await client.post("/openai/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["total_tokens"]
    body["stream_options"] = {"include_usage": True}
    total = None
    async with client.stream("POST", "/openai/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    total = chunk["usage"]["total_tokens"]
    assert total is not None
    return total


async def anthropic_call(client: httpx.AsyncClient, text: str, stream: bool) -> int:
    body = {"model": "mock-fast", "max_tokens": 1000, "messages": [{"role": "user", "content": text}], "stream": stream}
    if not stream:
        r = await client.post("/anthropic/v1/messages", json=body)
        assert r.status_code == 200, r.text
        u = r.json()["usage"]
        return u["input_tokens"] + u.get("cache_read_input_tokens", 0) + u["output_tokens"]
    inp = out = None
    async with client.stream("POST", "/anthropic/v1/messages", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "message_start":
                u = event["message"]["usage"]
                inp = u["input_tokens"] + u.get("cache_read_input_tokens", 0)
            elif event["type"] == "message_delta":
                out = event["usage"]["output_tokens"]
    return inp + out


async def cut_call(client: httpx.AsyncClient, text: str, fmt: str, keep: int) -> int:
    """Read `keep` tokens of a slow stream, then hang up. Returns what the client received
    (the prompt, which the server read, plus the tokens that arrived)."""
    if fmt == "openai":
        path, body = "/openai/v1/chat/completions", {"model": "mock-cut", "messages": [{"role": "user", "content": text}], "stream": True}
    else:
        path, body = "/anthropic/v1/messages", {"model": "mock-cut", "max_tokens": 1000, "messages": [{"role": "user", "content": text}], "stream": True}
    got = 0
    async with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if fmt == "openai":
                got += bool(event["choices"] and event["choices"][0]["delta"].get("content"))
            else:
                got += event["type"] == "content_block_delta"
            if got >= keep:
                break  # leaving the block closes the connection mid-stream
    return await prompt_tokens(client, text) + got


def test_200_concurrent_requests_are_metered_exactly(server):
    rng = random.Random(7)
    kinds = ["cut"] * CUT + ["openai", "openai-stream", "anthropic", "anthropic-stream"] * ((TOTAL - CUT) // 4)
    rng.shuffle(kinds)

    async def main() -> list[int]:
        limits = httpx.Limits(max_connections=TOTAL + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {server.key}"}, limits=limits, timeout=120
        ) as client:
            jobs = []
            for i, kind in enumerate(kinds):
                text = text_for(i)
                if kind == "cut":
                    jobs.append(cut_call(client, text, rng.choice(["openai", "anthropic"]), rng.randint(1, 3)))
                elif kind.startswith("openai"):
                    jobs.append(openai_call(client, text, kind.endswith("stream")))
                else:
                    jobs.append(anthropic_call(client, text, kind.endswith("stream")))
            return await asyncio.gather(*jobs)

    seen = asyncio.run(main())
    expected = sum(seen)

    # Cut streams settle as soon as the server notices; give the last ones a moment to be written.
    headers = {"Authorization": f"Bearer {server.key}"}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        report = httpx.get(server.base_url + "/api/v1/usage?limit=1", headers=headers).json()
        if report["totals"]["requests"] >= TOTAL and report["quota"]["in_flight"] == 0:
            break
        time.sleep(0.1)
    assert report["totals"]["requests"] == TOTAL, report["totals"]
    statuses = sqlite3.connect(server.data_dir / "longcat.db").execute(
        "select status, count(*) from usage_records group by status"
    ).fetchall()
    assert dict(statuses) == {"ok": TOTAL - CUT, "client_closed": CUT}

    # The three books agree, to the token: records, the live quota, the stored quota and the clients.
    db = sqlite3.connect(server.data_dir / "longcat.db")
    records = db.execute("select sum(billed_tokens), sum(input_tokens + output_tokens) from usage_records").fetchone()
    stored_used = db.execute("select sum(used) from quota_days").fetchone()[0]
    daily = db.execute("select sum(billed_tokens), sum(requests) from usage_daily").fetchone()
    ledger = db.execute("select kind, tokens from quota_ledger").fetchall()
    assert records[0] == records[1] == expected
    assert report["quota"]["used"] == stored_used == expected
    assert daily == (expected, TOTAL)
    assert ledger == [("daily_allowance", 100_000_000)]
    assert report["quota"]["remaining"] == 100_000_000 - expected
