"""Nothing expensive before admission: a request is charged to its key's rpm before its body is
read, a prompt too long by its length alone is refused before it is tokenized, and a few huge
prompts neither fill the memory nor stall the server's other requests."""

from __future__ import annotations

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
    huge = (
        b'{"model": "LongCat-2.0-Preview", "max_tokens": 10, "messages": [{"role": "user", "content": "'
        + b"<|im_end|> word " * (28 * 1024 * 1024 // 16)
        + b'"}]}'
    )
    httpx.get(server.base_url + "/health")
    rss_before, cpu_before = _rss_mb(pid), _cpu_seconds(pid)
    results: list[httpx.Response] = []
    peak = [rss_before]
    health_ms: list[float] = []
    done = threading.Event()

    def send() -> None:
        results.append(httpx.post(server.base_url + CHAT, content=huge, headers=headers, timeout=120))

    def watch() -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            while not done.is_set():
                started = time.perf_counter()
                assert client.get("/health").status_code == 200
                health_ms.append((time.perf_counter() - started) * 1000)
                peak[0] = max(peak[0], _rss_mb(pid))
                time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    senders = [threading.Thread(target=send) for _ in range(4)]
    started = time.monotonic()
    for t in senders:
        t.start()
    for t in senders:
        t.join(120)
    elapsed = time.monotonic() - started
    done.set()
    watcher.join(10)
    cpu = _cpu_seconds(pid) - cpu_before
    time.sleep(2.5)  # the server hands freed memory back a moment after the last large body
    rss_after = _rss_mb(pid)

    assert [r.status_code for r in results] == [400] * 4
    assert all(r.json()["error"]["code"] == "context_length_exceeded" for r in results)
    assert "at least" in results[0].json()["error"]["message"]
    print(f"4 x 28 MB: {elapsed:.1f} s, {cpu:.1f} s CPU, RSS {rss_before:.0f} -> peak {peak[0]:.0f} -> {rss_after:.0f} MB, "
          f"health max {max(health_ms):.0f} ms over {len(health_ms)} probes")
    assert cpu < 10, cpu
    assert peak[0] - rss_before < 1200, (rss_before, peak[0])
    assert rss_after - rss_before < 100, (rss_before, rss_after)
    assert sorted(health_ms)[int(len(health_ms) * 0.95)] < 100, sorted(health_ms)[-10:]

    # The server is itself again: a small request goes straight through.
    r = httpx.post(
        server.base_url + CHAT,
        json={"model": "LongCat-2.0-Preview", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
        timeout=60,
    )
    assert r.status_code == 200
