"""The production layout, for real: nginx (deploy/nginx/, as shipped) in front of two platform
processes on one PostgreSQL database and one Redis.

Limits and quotas hold across replicas behind the proxy, a key disabled on one replica is refused
by both, a replica killed with -9 mid-load costs only what it had in flight (nginx moves on,
nothing completed is lost, the books balance once its leases are given back), streams arrive as
they are produced, and the TLS server, its redirect and the forwarded headers work.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.support.console import ApiUser, admin_password
from tests.support.load import keep_in_flight
from tests.support.nginx import SERVER_NAME, Nginx, nginx_binary
from tests.support.server import Server, free_port, pg_query, scale_out_backend, usage_lines, write_config

pytestmark = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (Debian: apt-get install nginx): the tests behind it are skipped"
)

CONFIG = """
key_rpm = 0
key_tpm = 0
key_concurrency = 0
account_rpm = 0
account_tpm = 0
account_concurrency = 0
daily_quota = 100000000
login_rpm_ip = 10000
login_rpm_account = 1000

[[models]]
id = "mock-echo"
engine = "mock"
context_window = 100000
max_output = 100000

[[models]]
id = "mock-steady"
engine = "mock"
context_window = 100000
max_output = 100000
token_delay = 0.02

[[models]]
id = "mock-sse"
engine = "mock"
context_window = 100000
max_output = 100000
token_delay = 0.25
"""


@dataclass
class Fleet:
    replicas: list[Server]
    nginx: Nginx
    env: dict[str, str]
    admin: ApiUser

    def db(self, sql: str) -> list[list[str]]:
        return pg_query(self.env["LONGCAT_DATABASE_URL"], sql)

    def set_limits(self, account_id: int, **fields: int) -> None:
        r = self.admin.call("PATCH", f"/api/v1/admin/users/{account_id}", fields)
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with scale_out_backend("nginx") as backend:
        env = {
            **backend,
            "LONGCAT_SECRET_KEY": uuid.uuid4().hex,
            "LONGCAT_TRUSTED_PROXIES": "127.0.0.1",
            # A replica silent this long is dead: its slots and reservations are given back.
            "LONGCAT_REPLICA_TIMEOUT": "3",
        }
        replicas: list[Server] = []
        proxy = None
        try:
            for i in range(2):
                data = tmp_path_factory.mktemp(f"replica{i}")
                replicas.append(Server(data, write_config(data / "config.toml", CONFIG), free_port(), env=dict(env)).start())
            proxy = Nginx(tmp_path_factory.mktemp("nginx"), [s.port for s in replicas]).start()
            admin = ApiUser.login(replicas[0].base_url, "admin@localhost", admin_password(replicas[0]))
            yield Fleet(replicas, proxy, env, admin)
        finally:
            if proxy is not None:
                proxy.stop()
            for s in replicas:
                s.stop()


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def served_by(server: Server, account_id: int) -> int:
    """Requests of `account_id` this replica settled (its usage log lines)."""
    return sum(1 for line in usage_lines(server) if line.get("account_id") == account_id)


def usage_of(user: ApiUser, base_url: str) -> dict:
    r = user.client.get(base_url + "/api/v1/usage", params={"limit": 1})
    assert r.status_code == 200, r.text
    return r.json()


def books(fleet: Fleet, account_id: int) -> tuple[int, int, int]:
    """(sum of the usage records' billed tokens, quota_days.used, the ledger's grants) today."""
    billed = fleet.db(f"select coalesce(sum(billed_tokens), 0) from usage_records where account_id = {account_id}")[0][0]
    used = fleet.db(f"select coalesce(sum(used), 0) from quota_days where account_id = {account_id}")[0][0]
    granted = fleet.db(f"select coalesce(sum(tokens), 0) from quota_ledger where account_id = {account_id}")[0][0]
    return int(billed), int(used), int(granted)


# ------------------------------------------------------------------------------------ the config


def test_nginx_accepts_the_shipped_config(tmp_path):
    proxy = Nginx(tmp_path, [free_port(), free_port()])
    result = proxy.check()
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_with_no_replica_up_clients_get_a_503_they_can_read(tmp_path):
    proxy = Nginx(tmp_path, [free_port(), free_port()]).start()  # nothing listens there
    try:
        client = openai.OpenAI(api_key="ak_none", base_url=proxy.plain_url + "/openai/v1", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "anyone?"}])
        assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"] == "1"
        assert caught.value.body["code"] == "overloaded" and "No platform replica" in caught.value.body["message"]
    finally:
        proxy.stop()


# ------------------------------------------------------------------------------------ limits through nginx


def test_one_rate_limit_holds_for_requests_spread_over_both_replicas(fleet):
    rpm = 30
    user = ApiUser.register(fleet.nginx.plain_url)
    _, key = user.create_key()
    fleet.set_limits(user.account_id, rpm=rpm)
    outcomes: list[str] = []

    async def main() -> float:
        client = openai.AsyncOpenAI(api_key=key, base_url=fleet.nginx.plain_url + "/openai/v1", max_retries=0, timeout=30)
        gate = asyncio.Semaphore(12)

        async def one(i: int) -> None:
            async with gate:
                try:
                    await client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": words(5)}])
                    outcomes.append("ok")
                except openai.RateLimitError as e:
                    assert e.body["code"] == "rate_limit_exceeded" and "Request rate limit exceeded" in e.body["message"], e.body
                    outcomes.append("429")

        start = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(3 * rpm)))
        await client.close()
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    ok = outcomes.count("ok")
    # A GCRA limit of L a minute holds L at once and refills L/60 a second: never more, whichever
    # replica nginx chose for each request.
    assert rpm <= ok <= rpm + int(elapsed * rpm / 60) + 1, (ok, elapsed)
    assert outcomes.count("429") == 3 * rpm - ok
    a, b = fleet.replicas
    deadline = time.monotonic() + 5
    while served_by(a, user.account_id) + served_by(b, user.account_id) < ok and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served_by(a, user.account_id) > 0 and served_by(b, user.account_id) > 0, "nginx used one replica only"
    assert served_by(a, user.account_id) + served_by(b, user.account_id) == ok


def test_the_daily_quota_is_exact_through_nginx(fleet):
    quota = 3000
    user = ApiUser.register(fleet.nginx.plain_url)
    _, key = user.create_key()
    fleet.set_limits(user.account_id, daily_quota=quota)
    seen: list[int] = []  # total tokens of each reply, as its client was told
    refused = []

    async def main() -> None:
        client = openai.AsyncOpenAI(api_key=key, base_url=fleet.nginx.plain_url + "/openai/v1", max_retries=0, timeout=30)
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            body = {"model": "mock-echo", "max_tokens": 40, "messages": [{"role": "user", "content": words(40, f"q{i}x")}]}
            async with gate:
                try:
                    if i % 2:
                        r = await client.chat.completions.create(**body)
                        seen.append(r.usage.total_tokens)
                    else:
                        stream = await client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
                        total = None
                        async for chunk in stream:
                            if chunk.usage:
                                total = chunk.usage.total_tokens
                        assert total is not None
                        seen.append(total)
                except openai.PermissionDeniedError as e:
                    assert e.body["code"] == "insufficient_quota", e.body
                    refused.append(i)

        await asyncio.gather(*(one(i) for i in range(60)))
        await client.close()

    asyncio.run(main())
    spent = sum(seen)
    assert refused and len(seen) + len(refused) == 60
    # Never past the quota, and at most one prompt's worth (43 tokens + 1) left unusable.
    assert quota - 44 < spent <= quota
    for base in [s.base_url for s in fleet.replicas] + [fleet.nginx.plain_url]:
        report = usage_of(user, base)
        assert report["quota"]["used"] == spent == report["totals"]["billed_tokens"], report["quota"]
        assert report["quota"]["in_flight"] == 0 and report["quota"]["allowance"] == quota
        assert sum(e["tokens"] for e in report["ledger"]) == quota
    assert books(fleet, user.account_id) == (spent, spent, quota)


# ------------------------------------------------------------------------------------ revocation


def test_a_key_disabled_on_one_replica_is_refused_by_both_within_a_second(fleet):
    a, b = fleet.replicas
    user = ApiUser.register(a.base_url)  # the console of replica a, directly
    key_id, key = user.create_key("to disable")
    targets = {"a": a.base_url, "b": b.base_url, "nginx": fleet.nginx.plain_url}

    def models(base: str) -> httpx.Response:
        return httpx.get(base + "/openai/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)

    for _ in range(3):  # cached everywhere
        assert {name: models(base).status_code for name, base in targets.items()} == dict.fromkeys(targets, 200)
    r = user.call("PATCH", f"/api/v1/keys/{key_id}", {"status": "disabled"})
    assert r.status_code == 200 and r.json()["status"] == "disabled", r.text
    changed = time.monotonic()
    refused_at: dict[str, float] = {}
    while len(refused_at) < len(targets) and time.monotonic() - changed < 1.0:
        for name, base in targets.items():
            if name not in refused_at:
                reply = models(base)
                if reply.status_code == 401:
                    assert reply.json()["error"]["code"] == "invalid_api_key"
                    refused_at[name] = time.monotonic() - changed
    assert set(refused_at) == set(targets), f"still accepted after 1 s by {set(targets) - set(refused_at)}"
    # And it stays refused.
    assert {name: models(base).status_code for name, base in targets.items()} == dict.fromkeys(targets, 401)


# ------------------------------------------------------------------------------------ streaming


def test_a_stream_arrives_through_nginx_as_it_is_produced(fleet):
    user = ApiUser.register(fleet.nginx.plain_url)
    _, key = user.create_key()
    client = openai.OpenAI(api_key=key, base_url=fleet.nginx.plain_url + "/openai/v1", max_retries=0, timeout=30)
    start = time.monotonic()
    arrivals = []
    # 12 tokens, one every 0.25 s: ~3 s from the first to the last.
    for chunk in client.chat.completions.create(model="mock-sse", messages=[{"role": "user", "content": words(12)}], stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
    client.close()
    assert len(arrivals) == 12
    # The first token is read while the engine has most of the reply still to produce.
    assert arrivals[0] < 1.5, arrivals
    assert arrivals[-1] - arrivals[0] > 1.5, arrivals


# ------------------------------------------------------------------------------------ TLS, redirect, forwarded headers


def test_tls_redirect_and_forwarded_headers(fleet):
    proxy = fleet.nginx
    verified = ssl.create_default_context(cafile=str(proxy.cert))

    # Plain HTTP on the public port only redirects, path and query kept.
    r = httpx.get(f"http://127.0.0.1:{proxy.http_port}/openai/v1/models?x=1", headers={"Host": SERVER_NAME})
    assert r.status_code == 301 and r.headers["location"] == f"https://{SERVER_NAME}/openai/v1/models?x=1"

    # HTTPS, verified against the test's certificate, reaches the replicas.
    with httpx.Client(base_url=proxy.https_url, verify=verified, headers={"Host": SERVER_NAME}, timeout=30) as https:
        health = https.get("/health")
        assert health.status_code == 200 and "mock-echo" in health.text
        assert health.headers["strict-transport-security"].startswith("max-age=")

        # The docs site builds its URLs from X-Forwarded-Proto / -Host (the replicas trust nginx).
        page = https.get("/docs/quick-start.md")
        assert page.status_code == 200 and f"https://{SERVER_NAME}/openai" in page.text

        # A client's own X-Forwarded-For is replaced by its real address; the console's cookie is
        # Secure because nginx says the request came over HTTPS.
        email = f"tls-{uuid.uuid4().hex[:8]}@example.com"
        r = https.post("/api/v1/auth/register", json={"email": email, "password": "correct horse battery"},
                       headers={"X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 201, r.text
        assert "secure" in r.headers["set-cookie"].lower()
        sessions = https.get("/api/v1/account/sessions").json()["data"]
        assert [s["ip"] for s in sessions] == ["127.0.0.1"]

        # The real SDK over TLS.
        key = https.post("/api/v1/keys", json={"name": "tls"}, headers={"X-CSRF-Token": r.json()["csrf_token"]}).json()["secret"]
    with httpx.Client(verify=verified) as transport:
        client = openai.OpenAI(api_key=key, base_url=proxy.https_url + "/openai/v1", http_client=transport, max_retries=0)
        reply = client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "over TLS"}])
        assert reply.choices[0].message.content == "over TLS"

    # Over plain HTTP (the load tests' server) the cookie is not Secure.
    r = httpx.post(proxy.plain_url + "/api/v1/auth/register", json={"email": "plain-" + email, "password": "correct horse battery"})
    assert r.status_code == 201 and "secure" not in r.headers["set-cookie"].lower()


def test_bodies_over_the_platforms_limit_are_refused_by_nginx_in_json(fleet):
    user = ApiUser.register(fleet.nginx.plain_url)
    _, key = user.create_key()
    # Well under the limit but larger than nginx's memory buffer: spooled to disk, then passed on.
    big = {"model": "mock-echo", "messages": [{"role": "user", "content": "x " * 1_000_000}]}
    r = httpx.post(fleet.nginx.plain_url + "/anthropic/v1/messages/count_tokens", json=big,
                   headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200 and r.json()["input_tokens"] > 900_000, r.text
    # Over 32 MiB: refused from the headers alone, in a body the SDKs can read.
    with socket.create_connection(("127.0.0.1", fleet.nginx.plain_port), timeout=10) as s:
        s.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 40000000\r\n\r\n")
        reply = s.recv(65536).decode()
    head, _, body = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413")
    assert json.loads(body)["error"]["message"] == "The request body is larger than 32 MiB."


# ------------------------------------------------------------------------------------ kill -9


def test_kill_9_of_one_replica_mid_load(fleet):
    a, b = fleet.replicas
    concurrency = 12  # requests kept in flight
    # Room for the load twice over: what the dead replica held does not block the requests that
    # follow while it is given back; the burst at the end takes every slot again.
    limit = 2 * concurrency
    user = ApiUser.register(fleet.nginx.plain_url)
    _, key = user.create_key()
    fleet.set_limits(user.account_id, concurrency=limit)
    completed: dict[str, int] = {}  # request id -> total tokens its client was told
    results: list[tuple[float, str]] = []  # (start, "ok" for a complete reply, else what came back)
    killed_at: list[float] = []
    stop = threading.Event()

    async def one(client: httpx.AsyncClient, i: int) -> None:
        body = {
            "model": "mock-steady",
            "messages": [{"role": "user", "content": words(10 + i % 15, f"k{i}x")}],
            "stream": i % 2 == 0,
            "stream_options": {"include_usage": True},
        }
        start = time.monotonic()
        outcome = "no reply"
        try:
            if body["stream"]:
                async with client.stream("POST", "/openai/v1/chat/completions", json=body) as r:
                    outcome = f"stream {r.status_code}, cut"
                    total = None
                    async for line in r.aiter_lines():
                        if line.startswith("data: {") and '"usage":{' in line:
                            total = json.loads(line[6:])["usage"]["total_tokens"]
                        if line == "data: [DONE]" and total is not None and r.status_code == 200:
                            completed[r.headers["x-request-id"]] = total
                            outcome = "ok"
            else:
                r = await client.post("/openai/v1/chat/completions", json=body)
                outcome = str(r.status_code)
                if r.status_code == 200:
                    completed[r.headers["x-request-id"]] = r.json()["usage"]["total_tokens"]
                    outcome = "ok"
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            outcome += f" ({type(e).__name__})"  # the replica died under this request
        results.append((start, outcome))

    async def load() -> None:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=fleet.nginx.plain_url, headers={"Authorization": f"Bearer {key}"},
                                     limits=limits, timeout=30) as client:
            await keep_in_flight(one, client, concurrency, stop, 30)

    loader = threading.Thread(target=lambda: asyncio.run(load()))
    loader.start()
    try:
        deadline = time.monotonic() + 20
        while not (len(completed) >= 30 and served_by(a, user.account_id) >= 5) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served_by(a, user.account_id) >= 5, "the load never reached replica a"
        error_log = fleet.nginx.prefix / "logs" / "error.log"
        mark = error_log.stat().st_size
        a.stop(signal.SIGKILL)  # with streaming and non-streaming requests in flight on it
        killed_at.append(time.monotonic())
        time.sleep(3)
    finally:
        stop.set()
        loader.join(40)
    assert not loader.is_alive()

    # nginx moved on: everything sent once the dead replica was noticed got its whole reply.
    after = [outcome for start, outcome in results if start > killed_at[0] + 0.5]
    failed = Counter(o for o in after if o != "ok")
    assert len(after) >= 10 and not failed, f"of {len(after)} requests sent after the kill: {dict(failed)}"

    # What was in flight on the killed replica was cut short, not run a second time on the other:
    # nginx never re-sends a POST a replica had received. Each request the replica took and
    # dropped before its reply began is one line in nginx's log and one 503 for its client.
    dropped = len(re.findall(r"\[error\].* while reading response header from upstream", error_log.read_bytes()[mark:].decode()))
    refused = sum(1 for _, outcome in results if outcome.startswith(("503", "stream 503")))
    assert dropped and refused == dropped, (dropped, Counter(outcome for _, outcome in results if outcome != "ok"))

    # Nothing completed is lost: every reply a client saw complete has its usage record.
    records = dict(fleet.db(f"select request_id, billed_tokens from usage_records where account_id = {user.account_id}"))
    missing = [rid for rid in completed if rid not in records]
    assert not missing, f"{len(missing)} of {len(completed)} completed replies have no usage record"
    assert all(int(records[rid]) == total for rid, total in completed.items())

    # The dead replica's slots and reservations are given back, and the books balance.
    a.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        report = usage_of(user, fleet.nginx.plain_url)
        if report["quota"]["in_flight"] == 0:
            break
        time.sleep(0.2)
    billed, used, granted = books(fleet, user.account_id)
    for base in (a.base_url, b.base_url):
        quota = usage_of(user, base)["quota"]
        assert quota["in_flight"] == 0, quota
        assert quota["used"] == billed == used, (quota, billed, used)
        assert quota["remaining"] == granted - used
    # Every concurrency slot is free again: a full burst is admitted, on both replicas.

    async def burst() -> list[int]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            body = {"model": "mock-steady", "messages": [{"role": "user", "content": words(20)}]}
            replies = await asyncio.gather(*(
                client.post((a, b)[i % 2].base_url + "/openai/v1/chat/completions", json=body) for i in range(limit)
            ))
            return [r.status_code for r in replies]

    assert asyncio.run(burst()) == [200] * limit
