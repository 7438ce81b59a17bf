"""Gateway overhead: requests per second and latency through the whole platform (auth, rate
limits, quota reservation, mock engine, group-committed usage record) against a bare Starlette
app on the same uvicorn answering a canned completion, in the same run.

    .venv/bin/python bench/gateway.py [--requests 2000] [--concurrency 32]

Prints both and their ratio. The load generator shares the machine's cores with the server, the
same for both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.server import Server, free_port, write_config  # noqa: E402

CONFIG = """
key_rpm = 0
key_tpm = 0
key_concurrency = 0
account_rpm = 0
account_tpm = 0
account_concurrency = 0

[[models]]
id = "mock-echo"
engine = "mock"
"""

TEXT = "the quick brown fox jumps over the lazy dog again and again and again"


async def load(base: str, key: str | None, n: int, concurrency: int, stream: bool) -> tuple[float, list[float]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": "mock-echo", "messages": [{"role": "user", "content": TEXT}], "stream": stream}
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            t = time.perf_counter()
            if stream:
                async with client.stream("POST", "/openai/v1/chat/completions", json=body, headers=headers) as r:
                    async for _ in r.aiter_bytes():
                        pass
                    assert r.status_code == 200
            else:
                r = await client.post("/openai/v1/chat/completions", json=body, headers=headers)
                assert r.status_code == 200, r.text
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(min(concurrency, 8))))  # warm-up connections
        for i in range(n):
            queue.put_nowait(i)
        started = time.perf_counter()
        latencies.clear()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return n / elapsed, latencies


def summary(rps: float, lat: list[float]) -> str:
    lat = sorted(lat)
    return f"{rps:8.0f} req/s   p50 {statistics.median(lat) * 1000:6.1f} ms   p99 {lat[int(len(lat) * 0.99) - 1] * 1000:6.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data", write_config(Path(tmp) / "config.toml", CONFIG), free_port()).start()
        base_port = free_port()
        baseline = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--port", str(base_port), "--log-level", "warning"],
            cwd=ROOT,
        )
        try:
            server.key = server.new_key("bench@example.com")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    httpx.get(f"http://127.0.0.1:{base_port}/", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            rows = []
            for stream in (False, True):
                n = args.requests if not stream else args.requests // 2
                base = asyncio.run(load(f"http://127.0.0.1:{base_port}", None, n, args.concurrency, stream))
                ours = asyncio.run(load(server.base_url, server.key, n, args.concurrency, stream))
                rows.append((stream, n, base, ours))
        finally:
            server.stop()
            baseline.terminate()
            baseline.wait(10)

    print(f"gateway benchmark: mock engine, {args.concurrency} concurrent clients, SQLite, in-process counters")
    for stream, n, base, ours in rows:
        kind = "streaming (14 tokens)" if stream else "non-streaming"
        print(f"  {kind}, {n} requests")
        print(f"    bare Starlette baseline : {summary(*base)}")
        print(f"    LongCat gateway         : {summary(*ours)}")
        print(f"    ratio (gateway / bare)  : {ours[0] / base[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
