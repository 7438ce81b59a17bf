"""Translation cost: an upstream stream of 1,000 chunks (OpenAI Chat Completions SSE, from the stub)
re-encoded to Anthropic Messages, against passthrough (the same stream re-encoded to OpenAI Chat
Completions), in the same run:

1. end to end, through the platform with everything on (`wrk`, one connection, so each figure is
   the time of one whole 1,000-chunk stream): `POST /anthropic/v1/messages` against
   `POST /openai/v1/chat/completions`, interleaved, `--rounds` times, medians;
2. in process, the translation alone: the upstream bytes parsed into canonical events and
   encoded into SSE frames of each format (no network, no gateway), best of `--repeat`.

    .venv/bin/python bench/translation.py [--chunks 1000] [--seconds 5] [--rounds 3]

Goal: Anthropic at most 1.1x passthrough.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODEL, PROMPT, Platform, Stub, have_wrk, lua_script, machine, tmpdir, wrk  # noqa: E402


def in_process(chunks: int, repeat: int) -> tuple[float, float]:
    """Seconds to translate one stream: (to Anthropic, to OpenAI chat), best of `repeat`."""
    import stub as stub_module

    from longcat.api.anthropic import message_frames
    from longcat.api.openai import _chat_frames
    from longcat.canonical import ChatRequest, Message, TextBlock
    from longcat.engines.openai_compat import ChunkTranslator, StreamReader
    from longcat.gateway.signing import Signer
    from longcat.protocols import anthropic, openai_chat

    raw = [stub_module._FIRST] + [stub_module._TOKEN] * chunks + [stub_module._LAST, stub_module._usage(chunks), b"data: [DONE]\n\n"]
    _ = ChatRequest, Message, TextBlock

    async def events():
        reader = StreamReader(ChunkTranslator(model_id=MODEL))
        for piece in raw:
            for event in reader.feed(piece):
                yield event
        tail, finish = reader.end()
        for event in tail:
            yield event
        yield finish

    async def to_anthropic() -> int:
        encoder = anthropic.MessageStreamEncoder(model=MODEL, input_tokens=12, sign_thinking=Signer(b"k").sign_thinking)
        return sum([len(f) async for f in message_frames(events(), encoder, 10.0)])

    async def to_openai() -> int:
        encoder = openai_chat.ChatStreamEncoder(model=MODEL, include_usage=True)
        return sum([len(f) async for f in _chat_frames(events(), encoder)])

    async def best(fn) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            await fn()
            times.append(time.perf_counter() - t)
        return min(times)

    async def main() -> tuple[float, float]:
        a = o = float("inf")
        for _ in range(3):  # interleaved
            a = min(a, await best(to_anthropic))
            o = min(o, await best(to_openai))
        return a, o

    return asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"translation benchmark: {machine()}; {args.chunks}-chunk upstream streams")

    a_cpu, o_cpu = in_process(args.chunks, args.repeat)
    rows = [("in process (parse + encode only)", o_cpu * 1000, a_cpu * 1000)]

    if not have_wrk():
        print("end-to-end part skipped: `wrk` is not installed (Debian: apt-get install wrk)")
    else:
        with tmpdir() as t:
            tmp = Path(t)
            stub = Stub(chunks=args.chunks)
            platform = None
            try:
                platform = Platform(stub.base_url, tmp)
                msgs = [{"role": "user", "content": PROMPT}]
                chat = lua_script(tmp, "chat", json.dumps({"model": MODEL, "messages": msgs, "max_tokens": args.chunks, "stream": True}), platform.key)
                msg = lua_script(tmp, "messages", json.dumps({"model": MODEL, "messages": msgs, "max_tokens": args.chunks, "stream": True}),
                                 platform.key, header="x-api-key")
                chat_url = platform.base_url + "/openai/v1/chat/completions"
                msg_url = platform.base_url + "/anthropic/v1/messages"
                wrk(chat_url, chat, 1, 1.0)
                wrk(msg_url, msg, 1, 1.0)
                o_ms, a_ms, o_rps, a_rps = [], [], [], []
                for _ in range(args.rounds):
                    o = wrk(chat_url, chat, 1, args.seconds)
                    a = wrk(msg_url, msg, 1, args.seconds)
                    if o.errors or a.errors:
                        print(f"  errors: chat {o.errors}, messages {a.errors}")
                    o_ms.append(o.p50_ms)
                    a_ms.append(a.p50_ms)
                    o_rps.append(o.rps)
                    a_rps.append(a.rps)
                    print(f"  round: chat p50 {o.p50_ms:.2f} ms ({o.rps:.1f} streams/s), messages p50 {a.p50_ms:.2f} ms ({a.rps:.1f} streams/s)", flush=True)
                rows.append(("end to end through the platform, p50 of one stream", statistics.median(o_ms), statistics.median(a_ms)))
            finally:
                if platform is not None:
                    platform.stop()
                stub.stop()

    print()
    print(f"| {args.chunks:,} upstream chunks | passthrough (OpenAI chat) | re-encoded to Anthropic | ratio (goal ≤ 1.10) |")
    print("|---|---|---|---|")
    for name, o, a in rows:
        print(f"| {name} | {o:.2f} ms | {a:.2f} ms | **{a / o:.2f}×** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
