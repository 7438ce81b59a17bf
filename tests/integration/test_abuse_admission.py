"""Nothing expensive before admission: a request is charged to its key's rpm before its body is
read, a prompt too long by its length alone is refused before it is tokenized, and a few huge
prompts neither fill the memory nor stall the server's other requests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

CHAT = "/openai/v1/chat/completions"


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


class _HealthProbe:
    """GET /health every 20 ms from another process; `stop` returns the latencies in ms."""

    SCRIPT = (
        "import sys, time, httpx\n"
        "c = httpx.Client(base_url=sys.argv[1], timeout=10)\n"
        "while sys.stdin.readline().strip() != 'stop':\n"
        "    t = time.perf_counter(); c.get('/health'); print((time.perf_counter() - t) * 1000, flush=True)\n"
    )

    def __init__(self, base_url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, base_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        self.running = True
        self.ticker.start()

    def _tick(self) -> None:
        while self.running:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
            time.sleep(0.02)

    def stop(self) -> list[float]:
        self.running = False
        self.ticker.join(5)
        out, _ = self.proc.communicate("stop\n", timeout=30)
        return [float(x) for x in out.split()]


def test_refused_requests_still_count_against_rpm(mock_server):
    """A 2-rpm key sending over-context requests meets 429 from the third on, in both formats,
    and so do malformed bodies and reads: every request counts."""
    for path, extra in ((CHAT, {}), ("/anthropic/v1/messages", {"max_tokens": 10})):
        key = mock_server.new_key(f"rpm{uuid.uuid4().hex[:8]}@example.com", rpm=2)
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "mock-small", "messages": [{"role": "user", "content": "word " * 500}], **extra}
        codes = [httpx.post(mock_server.base_url + path, json=body, headers=headers, timeout=30).status_code for _ in range(10)]
        assert codes == [400, 400] + [429] * 8, codes

    key = mock_server.new_key(f"rpm{uuid.uuid4().hex[:8]}@example.com", rpm=2)
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(mock_server.base_url + CHAT, content=b"{not json", headers=headers).status_code == 400
    assert httpx.get(mock_server.base_url + "/api/v1/usage", headers=headers).status_code == 200
    for path in ("/api/v1/usage", "/api/v1/usage/daily", "/openai/v1/responses/resp_nothing", "/openai/v1/models"):
        r = httpx.get(mock_server.base_url + path, headers=headers)
        assert r.status_code == 429, (path, r.status_code)
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
    r = httpx.post(mock_server.base_url + "/api/v1/feedback", json={"rating": 5, "text": "x" * 40}, headers=headers)
    assert r.status_code == 429


@pytest.mark.embedded
def test_huge_prompts_are_refused_cheaply_while_the_server_stays_responsive(embedded_server):
    """Four parallel 28 MB prompts to the 8,192-token model: refused by their length, with the
    memory and CPU they cost bounded, and /health answering quickly all the while."""
    server = embedded_server
    pid = server.proc.pid
    headers = {"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"}
    # Four accounts: one account's large bodies are read one at a time (one more may wait).
    keys = [server.new_key(f"huge{i}{uuid.uuid4().hex[:6]}@example.com") for i in range(4)]
    huge = (
        b'{"model": "LongCat-2.0-Preview", "max_tokens": 10, "messages": [{"role": "user", "content": "'
        + b"<|im_end|> word " * (28 * 1024 * 1024 // 16)
        + b'"}]}'
    )
    httpx.get(server.base_url + "/health")
    rss_before, cpu_before = _rss_mb(pid), _cpu_seconds(pid)
    results: list[httpx.Response] = []
    peak = [rss_before]
    done = threading.Event()

    def send(key: str) -> None:
        results.append(httpx.post(server.base_url + CHAT, content=huge, headers={**headers, "Authorization": f"Bearer {key}"}, timeout=120))

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb(pid))
            time.sleep(0.02)

    # /health is probed from a process of its own, so this process's senders cannot slow it.
    probe = _HealthProbe(server.base_url)
    watcher = threading.Thread(target=watch)
    watcher.start()
    senders = [threading.Thread(target=send, args=(key,)) for key in keys]
    started = time.monotonic()
    for t in senders:
        t.start()
    for t in senders:
        t.join(120)
    elapsed = time.monotonic() - started
    done.set()
    watcher.join(10)
    health_ms = probe.stop()
    cpu = _cpu_seconds(pid) - cpu_before
    time.sleep(3.5)  # the server hands freed memory back a moment after the last large body
    rss_after = _rss_mb(pid)

    assert [r.status_code for r in results] == [400] * 4
    assert all(r.json()["error"]["code"] == "context_length_exceeded" for r in results)
    assert "at least" in results[0].json()["error"]["message"]
    print(f"4 x 28 MB: {elapsed:.1f} s, {cpu:.1f} s CPU, RSS {rss_before:.0f} -> peak {peak[0]:.0f} -> {rss_after:.0f} MB, "
          f"health max {max(health_ms):.0f} ms over {len(health_ms)} probes")
    assert cpu < 10, cpu
    assert peak[0] - rss_before < 1200, (rss_before, peak[0])
    assert rss_after - rss_before < 100, (rss_before, rss_after)
    # Nine answers in ten within 100 ms, and none slower than 250 ms even when the machine is busy
    # with other work (on an idle one the slowest is about 40 ms). The whole refusal takes about
    # 1.5 s, so there are only ~60 probes: a 95th percentile would be the 4th slowest answer,
    # which a CPU burst of another test process decides, not this server.
    assert sorted(health_ms)[int(len(health_ms) * 0.9)] < 100 and max(health_ms) < 250, sorted(health_ms)[-10:]

    # The server is itself again: a small request goes straight through.
    r = httpx.post(
        server.base_url + CHAT,
        json={"model": "LongCat-2.0-Preview", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
        timeout=60,
    )
    assert r.status_code == 200


SLOW_COUNT = """
engine_queue_limit = 64
account_tokenize_concurrency = 2

[[models]]
id = "mock-slow-count"
engine = "mock"
context_window = 100000
max_output = 1000
count_delay = 1.0
"""


@pytest.fixture(scope="module")
def slow_count(tmp_path_factory):
    from tests.support.server import Server, free_port, write_config

    data = tmp_path_factory.mktemp("slow-count")
    srv = Server(data, write_config(data / "config.toml", SLOW_COUNT), free_port()).start()
    yield srv
    srv.stop()


def _slow(server, key: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        server.base_url + CHAT,
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "mock-slow-count", "max_tokens": 3, "messages": [{"role": "user", "content": "count me"}]},
        timeout=timeout,
    )


def test_an_abandoned_tokenization_keeps_its_place_until_it_is_done(slow_count):
    """Leaving does not free the account's place at the tokenizer gate before the work is done,
    so abandoning requests cannot pile up work behind the gate's back."""
    key = slow_count.new_key(f"leaver{uuid.uuid4().hex[:8]}@example.com")
    for _ in range(2):  # both of the account's places, then hang up at once
        with pytest.raises(httpx.TimeoutException):
            _slow(slow_count, key, timeout=0.2)
    started = time.monotonic()
    assert _slow(slow_count, key).status_code == 200
    assert time.monotonic() - started > 1.3  # waited for an abandoned count (1 s) to end, then its own


def test_one_account_cannot_fill_the_tokenizer_queue(slow_count):
    greedy = slow_count.new_key(f"greedy{uuid.uuid4().hex[:8]}@example.com")
    polite = slow_count.new_key(f"polite{uuid.uuid4().hex[:8]}@example.com")
    results: list[int | str] = []

    def burst() -> None:
        # The queued ones would wait their turn (64 counts of 1 s, 2 at a time): what matters is
        # only whether each was queued or turned away, so the test stops waiting after a while.
        try:
            results.append(_slow(slow_count, greedy, timeout=5).status_code)
        except httpx.TimeoutException:
            results.append("queued")

    threads = [threading.Thread(target=burst) for _ in range(80)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert _slow(slow_count, polite).status_code == 200  # served, not turned away
    for t in threads:
        t.join(60)
    # The greedy account holds 2 places and 64 waiting ones (a quarter of the queue); the rest of
    # its burst meets 429 (less the few that found a place freed while the burst was starting).
    assert len(results) == 80 and results.count(429) >= 5 and 503 not in results, results


@pytest.mark.embedded
def test_what_tools_and_messages_add_counts_before_tokenizing(embedded_server):
    """Tool definitions and the turn markers of every message count toward the length bound, so
    a 28 MB tool description or a flood of empty messages is refused without being tokenized."""
    headers = {"Authorization": f"Bearer {embedded_server.key}", "Content-Type": "application/json"}
    started = time.monotonic()
    tools = b'[{"type": "function", "function": {"name": "f", "description": "' + b"d " * (14 * 2**20) + b'"}}]'
    body = b'{"model": "LongCat-2.0-Preview", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}], "tools": ' + tools + b"}"
    r = httpx.post(embedded_server.base_url + CHAT, content=body, headers=headers, timeout=60)
    assert r.status_code == 400 and "at least" in r.json()["error"]["message"], r.text[:300]
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": "a"} for i in range(19_999)]
    r = httpx.post(embedded_server.base_url + CHAT, json={"model": "LongCat-2.0-Preview", "messages": many}, headers=headers, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded" and "at least" in r.text
    assert time.monotonic() - started < 10


def test_decoding_a_huge_conversation_does_not_stall_the_server(mock_server):
    """A 100,000-message body is parsed and decoded off the event loop (and then refused by its
    size): the server keeps answering everyone else meanwhile."""
    headers = {"Authorization": f"Bearer {mock_server.key}"}
    many = [{"role": "user", "content": "a"}] * 100_000
    probe = _HealthProbe(mock_server.base_url)
    try:
        for path, extra in ((CHAT, {}), ("/anthropic/v1/messages", {"max_tokens": 5}), ("/openai/v1/responses", {})):
            key = "input" if "responses" in path else "messages"
            r = httpx.post(mock_server.base_url + path, json={"model": "mock-echo", key: many, **extra}, headers=headers, timeout=60)
            assert r.status_code == 400 and "20,000 messages" in r.text, (path, r.text[:200])
    finally:
        health_ms = probe.stop()
    # Parsing holds the interpreter lock for as long as the C parser runs (about 40 ms for this
    # body): the rest of the time the loop is free. Nineteen answers in twenty come within 100 ms
    # even on a busy machine.
    assert sorted(health_ms)[int(len(health_ms) * 0.95)] < 100, sorted(health_ms)[-5:]
