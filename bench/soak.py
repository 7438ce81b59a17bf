"""Memory over a soak: the platform's RSS at the start and after `--minutes` of steady traffic
(default 10 minutes at 50 requests/s), with everything on, in front of the stub upstream.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 50]      # make soak ARGS="--minutes 1"

The traffic mixes the formats a deployment sees: OpenAI Chat Completions and Anthropic Messages,
streaming and not, one key. Requests are paced (open loop: one every 1/rate s, whatever the
previous ones did), on 64 keep-alive connections of a raw asyncio client. RSS is read from /proc every 10 s; "start" is after a
warm-up of 500 requests (imports, caches and pools filled), so the ratio shows growth, not
start-up. Goal: end within ±10 % of start. Not part of CI (it takes minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODEL, PROMPT, Platform, Stub, machine, rss_kib, tmpdir  # noqa: E402

KINDS = [
    ("/openai/v1/chat/completions", False),
    ("/openai/v1/chat/completions", True),
    ("/anthropic/v1/messages", False),
    ("/anthropic/v1/messages", True),
]


def request_bytes(port: int, key: str, path: str, stream: bool, i: int) -> bytes:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": f"{PROMPT} #{i}"}], "max_tokens": 16,
                       "stream": stream}).encode()
    head = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """One HTTP/1.1 response (content-length or chunked); returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return status
    at = lower.find(b"content-length:")
    length = int(lower[at + 15 : lower.find(b"\r\n", at)].strip()) if at >= 0 else 0
    await reader.readexactly(length)
    return status


async def drive(port: int, key: str, pid: int, seconds: float, rate: float, warmup: int) -> tuple[list[tuple[float, int]], dict[str, int]]:
    """Open-loop load from a raw asyncio client (an httpx client could not itself keep up with
    50 requests/s on a busy 2-core machine): tickets at `rate`, served by 64 keep-alive connections."""
    counts: dict[str, int] = {}
    samples: list[tuple[float, int]] = []
    tickets: asyncio.Queue[int | None] = asyncio.Queue()

    def bump(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1

    async def connection() -> None:
        reader = writer = None
        while True:
            i = await tickets.get()
            if i is None:
                break
            path, stream = KINDS[i % len(KINDS)]
            for attempt in range(2):  # a keep-alive connection the server just closed: once more on a new one
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(request_bytes(port, key, path, stream, i))
                    status = await asyncio.wait_for(read_response(reader), 30)
                    bump("ok" if status == 200 else f"http {status}")
                    break
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    if attempt == 1:
                        bump(type(exc).__name__)
        if writer is not None:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(64)]
    for i in range(warmup):
        tickets.put_nowait(i)
    while not tickets.empty():
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    counts.clear()
    t0 = time.monotonic()
    samples.append((0.0, rss_kib(pid)))
    next_sample = 10.0
    i = 0
    while (now := time.monotonic() - t0) < seconds:
        due = i / rate
        if due > now:
            await asyncio.sleep(min(due - now, 0.05))
            continue
        tickets.put_nowait(warmup + i)
        i += 1
        if now >= next_sample:
            samples.append((now, rss_kib(pid)))
            next_sample += 10.0
            if int(now) % 60 < 10:
                print(f"  {now:5.0f} s: RSS {samples[-1][1] / 1024:.1f} MiB, {i:,} sent, {tickets.qsize()} queued, {counts}", flush=True)
    for _ in workers:
        tickets.put_nowait(None)
    _, late = await asyncio.wait(workers, timeout=60)  # bounded
    for task in late:
        task.cancel()
    if late:
        counts["unfinished connections"] = len(late)
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
            samples, counts = asyncio.run(drive(platform.port, platform.key, platform.proc.pid, args.minutes * 60, args.rate, args.warmup))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
