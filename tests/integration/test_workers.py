"""`longcat serve --workers 3` on PostgreSQL + Redis: one port, three processes, and the same
exactness as one process. Concurrent load from the official `openai` SDK stays within one rate
limit and spends the daily quota to the token; requests are served by more than one worker; a
worker killed outright is replaced; SIGTERM drains every worker (a stream in flight completes,
new connections are refused) and the parent exits 0.

Which worker served a request is read from the log: with several workers each line names its
process (`"pid"` in the JSON access lines)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter

import httpx
import openai
import pytest

from longcat.store.migrations import LATEST
from tests.support.server import Server, cli, free_port, scale_out_backend, usage_lines, write_config

CONFIG = """
daily_quota = 100000
shutdown_grace = 20

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

WORKER = re.compile(r"worker (\d+) starting \(pid (\d+)\)")


def psql(env: dict[str, str], sql: str) -> list[list[str]]:
    database = env["LONGCAT_DATABASE_URL"].rsplit("/", 1)[1]
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-At", "-F", "\t", "-c", sql],
                         check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def backend():
    with scale_out_backend("workers") as env:
        yield env


@pytest.fixture(scope="module")
def server(tmp_path_factory, backend):
    data = tmp_path_factory.mktemp("workers")
    config = write_config(data / "config.toml", CONFIG)
    srv = Server(data, config, free_port(), env={**backend, "LONGCAT_WORKERS": "3"}).start(timeout=120)
    deadline = time.monotonic() + 120  # /health answers as soon as the first worker does
    while "3 workers serving http://127.0.0.1:" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    yield srv
    srv.stop()


def usage(server: Server, account_id: int | None = None) -> list[tuple[int, str, int, int, str]]:
    """(pid, request id, account, billed, outcome) of every usage line in the server's log."""
    rows = [(a["pid"], a.get("internal_id", a["request_id"]), a["account_id"], a["billed_tokens"], a["outcome"])
            for a in usage_lines(server)]
    return [row for row in rows if account_id is None or row[2] == account_id]


def workers(server: Server) -> dict[int, int]:
    """worker number -> its current pid, from the parent's log."""
    return {int(n): int(pid) for n, pid in WORKER.findall(server.log())}


def new_account(server: Server, **limits: int) -> tuple[str, str, int]:
    email = f"w{uuid.uuid4().hex[:10]}@example.com"
    key = server.new_key(email, **limits)
    [[account_id]] = psql(server.env, f"SELECT id FROM accounts WHERE email = '{email}'")
    return email, key, int(account_id)


def sdk(server: Server, key: str) -> openai.AsyncOpenAI:
    # No keep-alive: every request opens its own connection, so each is one more accept() for
    # the workers to share, as from many separate clients.
    http = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=60)
    return openai.AsyncOpenAI(api_key=key, base_url=server.base_url + "/openai/v1", max_retries=0, http_client=http)


# ------------------------------------------------------------------------------------ refusals


def test_refused_in_one_line_without_redis_or_with_the_embedded_engine(tmp_path):
    mock = write_config(tmp_path / "mock.toml", CONFIG)
    embedded = write_config(tmp_path / "embedded.toml", '[[models]]\nid = "LongCat-2.0-Preview"\nengine = "embedded"\n')
    port = str(free_port())
    cases = (
        (mock, {}, "2", "error: workers = 2 needs redis_url: without Redis each process counts rate limits"),
        (embedded, {"LONGCAT_REDIS_URL": "redis://127.0.0.1:6379/0"}, "2",
         "error: workers = 2 cannot serve the embedded model 'LongCat-2.0-Preview'"),
        (mock, {}, "0", "error: workers = 0: must be an integer from 1 to 256"),
    )
    for config, env, n, words in cases:
        result = cli(tmp_path / "data", "serve", "--workers", n, "--port", port, config=config, check=False, env=env)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith(words) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "data" / "longcat.db").exists()  # refused before touching anything


# ------------------------------------------------------------------------------------ exactness


def test_migrated_once_and_three_workers_serve_one_port(server):
    assert len(workers(server)) == 3
    assert "3 workers serving http://127.0.0.1:" in server.log()
    assert psql(server.env, "SELECT max(version), count(DISTINCT version) FROM schema_version") == [[str(LATEST)] * 2]
    assert server.log().count("First start: created the admin account") == 1


def test_the_rate_limit_is_one_limit_for_all_workers(server):
    """60 requests at once against 20 a minute: 20 pass (plus what the bucket refills meanwhile,
    one every 3 s), not 20 per worker."""
    email, key, _ = new_account(server, rpm=20, concurrency=0)
    server.cli("users", "set-limits", email, "--concurrency", "0")  # only the minute's limit is measured

    async def burst() -> tuple[list[str], float]:
        client = sdk(server, key)
        start = time.monotonic()

        async def one() -> str:
            try:
                await client.chat.completions.create(model="mock-echo", max_tokens=20, messages=[{"role": "user", "content": "hi there"}])
                return "ok"
            except openai.RateLimitError as exc:
                assert exc.body["code"] == "rate_limit_exceeded"
                return "limited"

        results = await asyncio.gather(*(one() for _ in range(60)))
        await client.close()
        return results, time.monotonic() - start

    results, elapsed = asyncio.run(burst())
    ok = results.count("ok")
    assert 20 <= ok <= 20 + int(elapsed / 3), (ok, elapsed)
    assert results.count("limited") == 60 - ok


def test_the_daily_quota_is_exact_across_workers_and_requests_spread(server):
    """80 requests at once, half of them streamed, against a quota of 3,000 tokens: what the
    clients were billed, the usage records, the stored quota and the usage API agree to the token,
    never past the quota; and more than one worker served them."""
    email, key, account = new_account(server, concurrency=0)
    server.cli("users", "set-quota", email, "3000")
    server.cli("users", "set-limits", email, "--concurrency", "0")
    prompt = " ".join(["w"] * 40)

    async def load() -> tuple[list[int], int]:
        client = sdk(server, key)

        async def one(i: int) -> int:
            messages = [{"role": "user", "content": prompt}]
            try:
                if i % 2:
                    reply = await client.chat.completions.create(model="mock-echo", max_tokens=50, messages=messages)
                    return reply.usage.total_tokens
                stream = await client.chat.completions.create(model="mock-echo", max_tokens=50, messages=messages, stream=True,
                                                              stream_options={"include_usage": True})
                total = None
                async for chunk in stream:
                    if chunk.usage is not None:
                        total = chunk.usage.total_tokens
                assert total is not None
                return total
            except openai.PermissionDeniedError as exc:
                assert exc.body["code"] == "insufficient_quota"
                return -1

        spent = list(await asyncio.gather(*(one(i) for i in range(80))))
        assert spent.count(-1) and sum(s for s in spent if s >= 0) <= 3000
        # Requests refused while others held their budgets in flight could have fitted in what
        # those left unused: one at a time, the rest of the quota is spent too.
        for i in range(40):
            spent.append(await one(i))
            if spent[-1] < 0:
                break
        await client.close()
        return [s for s in spent if s >= 0], spent.count(-1)

    billed, refused = asyncio.run(load())
    spent = sum(billed)
    assert refused and len(billed) + refused <= 120
    # Never past the quota; at most one prompt's worth (43 + 1 tokens) left unusable.
    assert 3000 - 44 < spent <= 3000, spent

    deadline = time.monotonic() + 10
    while len(usage(server, account)) < len(billed) and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = usage(server, account)
    assert len(lines) == len(billed) and sum(b for _, _, _, b, _ in lines) == spent
    records = psql(server.env, f"SELECT count(*), sum(billed_tokens), sum(input_tokens + output_tokens) FROM usage_records "
                               f"WHERE account_id = {account}")[0]
    used = psql(server.env, f"SELECT sum(used) FROM quota_days WHERE account_id = {account}")[0][0]
    assert [int(x) for x in records] == [len(billed), spent, spent] and int(used) == spent
    report = httpx.get(server.base_url + "/api/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
    assert report["quota"]["used"] == spent == report["totals"]["billed_tokens"] and report["quota"]["in_flight"] == 0

    per_worker = Counter(pid for pid, *_ in lines)
    assert len(per_worker) >= 2, per_worker
    assert set(per_worker) <= set(workers(server).values())


def test_feedback_daily_limit_is_exact_across_workers(server):
    """20 different valid texts at once through one port: exactly the daily limit (10) counts."""
    _, key, _ = new_account(server)

    async def flood() -> list[dict]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60,
                                     limits=httpx.Limits(max_keepalive_connections=0)) as client:
            posts = [client.post(server.base_url + "/api/v1/feedback",
                                 json={"rating": 4, "category": "quality", "text": f"Distinct remark number {i} on the answers."})
                     for i in range(20)]
            return [r.json() for r in await asyncio.gather(*posts)]

    results = asyncio.run(flood())
    assert sum(r["valid"] for r in results) == 10
    assert min(r["valid_remaining_today"] for r in results) == 0


# ------------------------------------------------------------------------------------ faults


def test_a_worker_killed_outright_is_replaced(server):
    _, key, _ = new_account(server)
    number, victim = sorted(workers(server).items())[1]
    os.kill(victim, signal.SIGKILL)  # one of this test's own server's workers
    # The others carry on at once: the shared socket loses no connection.
    for _ in range(10):
        assert httpx.post(server.base_url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "mock-echo", "messages": [{"role": "user", "content": "still there?"}]},
                          timeout=30).status_code == 200
    again = re.compile(rf"worker {number} \(pid (\d+)\) is serving again")
    deadline = time.monotonic() + 60
    while not again.search(server.log()) and time.monotonic() < deadline:
        time.sleep(0.2)
    log = server.log()
    assert re.search(rf"worker {number} \(pid {victim}\) was killed by signal 9 after [\d.]+ s; restarting it in 0\.5 s", log)
    replacement = int(again.search(log).group(1))
    assert replacement != victim and workers(server)[number] == replacement


# ------------------------------------------------------------------------------------ drain (last: stops the server)


def test_sigterm_drains_every_worker(server):
    """A stream in flight when SIGTERM arrives completes; new connections are refused meanwhile;
    the parent exits 0 once every worker has finished."""
    _, key, account = new_account(server)
    client = openai.OpenAI(api_key=key, base_url=server.base_url + "/openai/v1", max_retries=0, timeout=60)
    words = [f"w{i}" for i in range(80)]  # 80 tokens at 0.05 s: about 4 s
    first_chunk = threading.Event()
    got: dict = {"text": [], "finish": None}

    def stream() -> None:
        for chunk in client.chat.completions.create(model="mock-slow", stream=True, messages=[{"role": "user", "content": " ".join(words)}]):
            if chunk.choices and chunk.choices[0].delta.content:
                got["text"].append(chunk.choices[0].delta.content)
                first_chunk.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                got["finish"] = chunk.choices[0].finish_reason

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_chunk.wait(30)
    server.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()

    refused = False
    while not refused and time.monotonic() - stopped < 3:
        try:
            httpx.get(server.base_url + "/health", timeout=1)
        except httpx.ConnectError:
            refused = True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    assert refused, "new connections were still accepted 3 s into the drain"
    assert reader.is_alive(), "the stream ended before new connections were refused"

    reader.join(60)
    assert "".join(got["text"]).split() == words and got["finish"] == "stop"
    assert server.proc.wait(60) == 0
    log = server.log()
    assert "received SIGTERM: draining 3 worker(s)" in log and "all workers stopped" in log
    [(_, _, _, billed, outcome)] = usage(server, account)
    assert outcome == "ok" and billed > 80
