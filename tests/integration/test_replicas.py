"""Scale-out: two gateway processes on one PostgreSQL and one Redis share keys, rate limits,
concurrency limits and quotas exactly, as if they were one; account changes and the upstream's
thinking signatures reach both."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import uuid

import anthropic
import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tests.support.server import Server, free_port, write_config
from tests.support.upstreams import serve_app

CONFIG = """
daily_quota = 100000

[[models]]
id = "ac-thinking"
engine = "anthropic_compat"
base_url = "{thinking_upstream}"
context_window = 100000
max_output = 8000

[[models]]
id = "mock-echo"
engine = "mock"
context_window = 100000
max_output = 100000

[[models]]
id = "mock-slow"
engine = "mock"
context_window = 100000
max_output = 100000
token_delay = 0.05
"""


def psql(sql: str) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c", sql], check=True, capture_output=True)


class ThinkingUpstream:
    """An Anthropic-compatible upstream (outside the project) that signs its thinking and
    records what it is sent back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict] = []
        self.app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> StreamingResponse:
        body = await request.json()
        self.bodies.append(body)
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return StreamingResponse(self.frames(turn), media_type="text/event-stream")

    @staticmethod
    async def frames(turn: int):
        def sse(data: dict) -> bytes:
            return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()

        usage = {"input_tokens": 7, "output_tokens": 1}
        yield sse({"type": "message_start", "message": {"id": f"msg_{turn}", "type": "message", "role": "assistant",
                                                         "model": "up", "content": [], "stop_reason": None, "usage": usage}})
        yield sse({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
        yield sse({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": f"Plan {turn}."}})
        yield sse({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": f"UPSTREAM-SIG-{turn}"}})
        yield sse({"type": "content_block_stop", "index": 0})
        yield sse({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}})
        yield sse({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": f"Answer {turn}."}})
        yield sse({"type": "content_block_stop", "index": 1})
        yield sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 6}})
        yield sse({"type": "message_stop"})


@pytest.fixture(scope="module")
def thinking_upstream():
    upstream = ThinkingUpstream()
    with serve_app(upstream.app, upstream.port):
        yield upstream


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, thinking_upstream):
    name = f"lc_test_{uuid.uuid4().hex[:12]}"
    psql(f"CREATE DATABASE {name}")
    env = {
        "LONGCAT_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
        "LONGCAT_REDIS_URL": "redis://127.0.0.1:6379/0",
        "LONGCAT_REDIS_PREFIX": f"test:{name}:",
        "LONGCAT_SECRET_KEY": uuid.uuid4().hex,
    }
    servers = []
    try:
        for i in range(2):
            data = tmp_path_factory.mktemp(f"replica{i}")
            config = write_config(data / "config.toml", CONFIG.format(thinking_upstream=f"http://127.0.0.1:{thinking_upstream.port}"))
            servers.append(Server(data, config, free_port(), env=dict(env)).start())
        yield servers
    finally:
        for s in servers:
            s.stop()
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        r = redis.Redis.from_url(env["LONGCAT_REDIS_URL"])
        for k in r.scan_iter(f"test:{name}:*"):
            r.delete(k)
        r.close()


def new_account(server: Server, **limits) -> tuple[str, str]:
    email = f"r{uuid.uuid4().hex[:10]}@example.com"
    return email, server.new_key(email, **limits)


def chat(server: Server, key: str, text: str = "hello there", model: str = "mock-echo") -> httpx.Response:
    return httpx.post(
        server.base_url + "/openai/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        timeout=30,
    )


def test_a_key_made_on_one_replica_works_on_the_other(replicas):
    a, b = replicas
    _, key = new_account(a)
    assert chat(a, key).status_code == 200 and chat(b, key).status_code == 200


def test_rate_limit_is_shared(replicas):
    a, b = replicas
    _, key = new_account(a, rpm=6)
    codes = [chat(replicas[i % 2], key).status_code for i in range(12)]
    assert codes.count(200) == 6 and codes.count(429) == 6
    assert codes[:6] == [200] * 6


def test_concurrency_limit_is_shared(replicas):
    a, b = replicas
    _, key = new_account(a, concurrency=1)
    started = threading.Event()

    def slow():
        with httpx.stream(
            "POST",
            a.base_url + "/openai/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "mock-slow", "messages": [{"role": "user", "content": "a b c d e f g h"}], "stream": True},
            timeout=30,
        ) as r:
            for _ in r.iter_lines():
                started.set()

    t = threading.Thread(target=slow)
    t.start()
    assert started.wait(10)
    assert chat(b, key).status_code == 429
    t.join(30)
    assert chat(b, key).status_code == 200


def test_quota_is_exact_across_replicas(replicas):
    a, b = replicas
    email, key = new_account(a, concurrency=0)
    a.cli("users", "set-quota", email, "2000")
    a.cli("users", "set-limits", email, "--concurrency", "0")

    async def hammer() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            jobs = [
                client.post(
                    replicas[i % 2].base_url + "/openai/v1/chat/completions",
                    # Each reserves its prompt (43) and max_tokens (50) while in flight.
                    json={"model": "mock-echo", "max_tokens": 50, "messages": [{"role": "user", "content": " ".join(["w"] * 40)}]},
                )
                for i in range(60)
            ]
            return await asyncio.gather(*jobs)

    responses = asyncio.run(hammer())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 403]
    assert len(ok) + len(refused) == 60 and refused
    spent = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert spent <= 2000  # never more than the quota, however many were in flight at once
    # While requests are in flight their whole budget is held, so some were refused with room
    # that their settlements later gave back: one at a time, that room is used up too, and only a
    # prompt's worth (43 + 1 tokens) can be left unusable.
    for i in range(60):
        r = httpx.post(replicas[i % 2].base_url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "mock-echo", "max_tokens": 50, "messages": [{"role": "user", "content": " ".join(["w"] * 40)}]},
                       timeout=60)
        if r.status_code != 200:
            assert r.status_code == 403, r.text
            break
        spent += r.json()["usage"]["total_tokens"]
    assert 2000 - 44 < spent <= 2000
    for server in (a, b):
        report = httpx.get(server.base_url + "/api/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
        assert report["quota"]["used"] == spent == report["totals"]["billed_tokens"]


def test_a_feedback_refresh_on_one_replica_counts_on_the_other(replicas):
    a, b = replicas
    email, key = new_account(a)
    a.cli("users", "set-quota", email, "300")
    while chat(a, key, " ".join(["w"] * 50)).status_code == 200:
        pass
    assert chat(b, key, " ".join(["w"] * 50)).status_code == 403
    granted = 0
    for i in range(10):  # refreshes are a coin toss (p = 0.5 by default)
        r = httpx.post(
            b.base_url + "/api/v1/feedback",
            headers={"Authorization": f"Bearer {key}"},
            json={"rating": 5, "category": "quality", "text": f"Useful feedback number {i} about answers."},
        ).json()
        granted += r["granted"]
        if r["refreshed"]:
            break
    if granted:
        assert chat(a, key, " ".join(["w"] * 50)).status_code == 200


def test_the_same_feedback_sent_to_two_replicas_at_once_counts_once(replicas):
    a, b = replicas
    _, key = new_account(a)

    async def both() -> list[dict]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            body = {"rating": 4, "category": "quality", "text": "Identical words sent twice at once."}
            replies = await asyncio.gather(*(client.post(s.base_url + "/api/v1/feedback", json=body) for s in (a, b, a, b)))
            return [r.json() for r in replies]

    results = asyncio.run(both())
    assert sum(r["valid"] for r in results) == 1
    assert all("repeats" in r["reason"] for r in results if not r["valid"])


def test_the_daily_feedback_limit_holds_exactly_on_two_replicas(replicas):
    """Five accounts each send 20 different valid texts at once, spread over both replicas: each
    gets exactly the daily limit (10) counted, never one more."""
    a, b = replicas
    keys = [new_account(a)[1] for _ in range(5)]

    async def flood(key: str) -> list[dict]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            posts = [
                client.post(
                    (a, b)[i % 2].base_url + "/api/v1/feedback",
                    json={"rating": 4, "category": "quality", "text": f"Distinct remark number {i} on the answers."},
                )
                for i in range(20)
            ]
            return [r.json() for r in await asyncio.gather(*posts)]

    async def main() -> list[list[dict]]:
        return await asyncio.gather(*(flood(k) for k in keys))

    for results in asyncio.run(main()):
        assert sum(r["valid"] for r in results) == 10
        assert all("the most that count" in r["reason"] for r in results if not r["valid"])
        assert min(r["valid_remaining_today"] for r in results) == 0


def test_account_changes_reach_the_other_replica_within_a_second(replicas):
    """Quota, limits and disabling, changed through one replica's admin API, are in force on the
    other within a second, although it had just trusted the key (store/keycache.py)."""
    a, b = replicas
    admin_email = f"admin{uuid.uuid4().hex[:8]}@example.com"
    a.cli("users", "create", admin_email, "--admin")
    admin = {"Authorization": f"Bearer {a.new_key(admin_email)}"}
    email, key = new_account(a)
    [user] = httpx.get(a.base_url + "/api/v1/admin/users", params={"q": email}, headers=admin).json()["data"]

    def change(body: dict) -> None:
        r = httpx.patch(a.base_url + f"/api/v1/admin/users/{user['id']}", json=body, headers=admin)
        assert r.status_code == 200, r.text

    def on_b_within_a_second(status: int) -> None:
        done = time.monotonic()
        code = None
        while time.monotonic() - done < 1.0 and code != status:
            code = chat(b, key).status_code
        assert code == status and time.monotonic() - done < 1.0, code

    for change_made, status, undo in (
        ({"daily_quota": 10}, 403, {"daily_quota": None}),  # too little for any prompt
        ({"rpm": 1}, 429, {"rpm": None}),  # this minute's request is spent already
        ({"disabled": True}, 401, {"disabled": False}),
    ):
        assert chat(b, key).status_code == 200  # b trusts the key and its account now
        change(change_made)
        on_b_within_a_second(status)
        change(undo)
        on_b_within_a_second(200)


def test_thinking_signatures_are_shared_by_the_replicas(replicas, thinking_upstream):
    """A thinking turn answered by one replica and continued on the other goes back upstream
    with the upstream's own signature (kept in Redis), not dropped."""
    a, b = replicas
    _, key = new_account(a)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    messages = [{"role": "user", "content": "Plan something."}]
    first = anthropic.Anthropic(api_key=key, base_url=a.base_url + "/anthropic", max_retries=0).messages.create(
        model="ac-thinking", max_tokens=2000, thinking=thinking, messages=messages)
    assert [block.type for block in first.content] == ["thinking", "text"]
    assert first.content[0].signature.startswith("lc2.")  # the platform's own, never the upstream's
    messages += [{"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
                 {"role": "user", "content": "And then?"}]
    second = anthropic.Anthropic(api_key=key, base_url=b.base_url + "/anthropic", max_retries=0).messages.create(
        model="ac-thinking", max_tokens=2000, thinking=thinking, messages=messages)
    assert second.content[-1].text == "Answer 1."
    replayed = thinking_upstream.bodies[-1]["messages"][1]["content"]
    assert replayed == [{"type": "thinking", "thinking": "Plan 0.", "signature": "UPSTREAM-SIG-0"},
                        {"type": "text", "text": "Answer 0."}]


def test_a_long_request_keeps_its_leases(tmp_path):
    """Leases only expire for a dead replica: a live request renews them, however long it runs."""
    env = {
        "LONGCAT_REDIS_URL": "redis://127.0.0.1:6379/0",
        "LONGCAT_REDIS_PREFIX": f"test:lease{uuid.uuid4().hex[:8]}:",
        "LONGCAT_LEASE_SECONDS": "2",
    }
    config = CONFIG.format(thinking_upstream=f"http://127.0.0.1:{free_port()}")  # not asked here
    server = Server(tmp_path, write_config(tmp_path / "config.toml", config), free_port(), env=env).start()
    try:
        _, key = new_account(server, concurrency=1)
        done = []

        def slow():  # 60 tokens at 0.05 s: 3 s, longer than the 2 s lease
            r = httpx.post(
                server.base_url + "/openai/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "mock-slow", "messages": [{"role": "user", "content": " ".join(["w"] * 60)}]},
                timeout=30,
            )
            done.append(r.status_code)

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(2.5)
        assert not done
        assert chat(server, key).status_code == 429
        t.join(30)
        assert done == [200]
    finally:
        server.stop()
        r = redis.Redis.from_url(env["LONGCAT_REDIS_URL"])
        for k in r.scan_iter(env["LONGCAT_REDIS_PREFIX"] + "*"):
            r.delete(k)
        r.close()
