"""Memory over a soak: the platform's RSS at the start and after `--minutes` of steady traffic
(default 10 minutes at 50 requests/s), with everything on, in front of the stub upstream.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 50]      # make soak ARGS="--minutes 1"

The traffic mixes the formats a deployment sees: OpenAI Chat Completions and Anthropic Messages,
streaming and not, one key. Requests are paced (open loop: one every 1/rate s, whatever the
previous ones did), at most 64 in flight. RSS is read from /proc every 10 s; "start" is after a
warm-up of 500 requests (imports, caches and pools filled), so the ratio shows growth, not
start-up. Goal: end within ±10 % of start. Not part of CI (it takes minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODEL, PROMPT, Platform, Stub, machine, rss_kib, tmpdir  # noqa: E402

KINDS = [
    ("/openai/v1/chat/completions", False),
    ("/openai/v1/chat/completions", True),
    ("/anthropic/v1/messages", False),
    ("/anthropic/v1/messages", True),
]


async def one(client: httpx.AsyncClient, i: int, counts: dict[str, int]) -> None:
    path, stream = KINDS[i % len(KINDS)]
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"{PROMPT} #{i}"}], "max_tokens": 16, "stream": stream}
    try:
        async with client.stream("POST", path, json=body) as r:
            async for _ in r.aiter_bytes():
                pass
            counts["ok" if r.status_code == 200 else f"http {r.status_code}"] = counts.get("ok" if r.status_code == 200 else f"http {r.status_code}", 0) + 1
    except httpx.HTTPError as exc:
        counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1


async def drive(base: str, key: str, pid: int, seconds: float, rate: float, warmup: int) -> tuple[list[tuple[float, int]], dict[str, int]]:
    counts: dict[str, int] = {}
    samples: list[tuple[float, int]] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {key}", "x-api-key": key}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:
        gate = asyncio.Semaphore(64)

        async def paced(i: int) -> None:
            async with gate:
                await one(client, i, counts)

        for start in range(0, warmup, 64):
            await asyncio.gather(*(one(client, i, counts) for i in range(start, min(warmup, start + 64))))
        counts.clear()
        t0 = time.monotonic()
        samples.append((0.0, rss_kib(pid)))
        next_sample = 10.0
        tasks: set[asyncio.Task] = set()
        i = 0
        while (now := time.monotonic() - t0) < seconds:
            due = i / rate
            if due > now:
                await asyncio.sleep(min(due - now, 0.05))
            else:
                task = asyncio.create_task(paced(warmup + i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if now >= next_sample:
                samples.append((now, rss_kib(pid)))
                next_sample += 10.0
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        samples.append((time.monotonic() - t0, rss_kib(pid)))
    return samples, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args()
    print(f"soak: {machine()}; {args.rate:g} requests/s for {args.minutes:g} min (after {args.warmup} warm-up requests)")
    with tmpdir() as t:
        stub = Stub()
        platform = None
        try:
            platform = Platform(stub.base_url, Path(t))
            samples, counts = asyncio.run(drive(platform.base_url, platform.key, platform.proc.pid, args.minutes * 60, args.rate, args.warmup))
        finally:
            if platform is not None:
                platform.stop()
            stub.stop()
    start, end = samples[0][1], samples[-1][1]
    peak = max(kib for _, kib in samples)
    sent = sum(counts.values())
    print(f"  requests: {sent:,} ({counts})")
    print(f"  RSS every ~60 s (MiB): {', '.join(f'{kib / 1024:.1f}' for s, kib in samples if int(s) % 60 < 10)}")
    print()
    print("| | RSS |")
    print("|---|---|")
    print(f"| after warm-up (start) | {start / 1024:.1f} MiB |")
    print(f"| after {args.minutes:g} min at {args.rate:g} req/s | {end / 1024:.1f} MiB |")
    print(f"| peak | {peak / 1024:.1f} MiB |")
    print(f"| end / start (goal 0.90–1.10) | **{end / start:.3f}** |")
    return 0 if counts.get("ok", 0) == sent else 1


if __name__ == "__main__":
    sys.exit(main())
