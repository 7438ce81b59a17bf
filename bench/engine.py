"""Tokens per second for one stream: through the platform's HTTP API vs llama-cpp-python called
directly on the same model file, with the same prompt, sampling and seed, in the same run.

    .venv/bin/python bench/engine.py [--tokens 256] [--runs 3]

Prints both rates and their ratio (goal: >= 0.9). Decode rate is measured from the first to the
last token, so both sides pay the same prefill; time to first token is printed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.server import EMBEDDED_CATALOG, Server, free_port, write_config  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "repeat_penalty": 1.1}


def direct_run(llama, tokens: int, seed: int) -> tuple[int, float, float]:
    """(tokens, decode seconds, time to first token) calling llama-cpp-python directly."""
    started = time.perf_counter()
    first = last = None
    count = 0
    for chunk in llama.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=tokens,
        stream=True,
        seed=seed,
        temperature=SAMPLING["temperature"],
        top_p=SAMPLING["top_p"],
        top_k=SAMPLING["top_k"],
        repeat_penalty=SAMPLING["repeat_penalty"],
    ):
        if chunk["choices"][0]["delta"].get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            count += 1
    return count, (last - first), (first - started)


def http_run(server: Server, tokens: int, seed: int) -> tuple[int, float, float]:
    """(tokens, decode seconds, time to first token) through POST /openai/v1/chat/completions."""
    body = {
        "model": "LongCat-2.0-Preview",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": seed,
        "temperature": SAMPLING["temperature"],
        "top_p": SAMPLING["top_p"],
        "top_k": SAMPLING["top_k"],
    }
    started = time.perf_counter()
    first = last = None
    usage = None
    with httpx.Client(timeout=300) as client:
        with client.stream(
            "POST", server.base_url + "/openai/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {server.key}"}
        ) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
    # Every generated token but the first falls inside [first, last].
    return usage["completion_tokens"], (last - first), (first - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import llama_cpp

    from longcat.engines.embedded import bundled_model_path

    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp) / "config.toml", EMBEDDED_CATALOG)
        server = Server(Path(tmp) / "data", config, free_port()).start()
        try:
            server.key = server.new_key("bench@example.com")
            llama = llama_cpp.Llama(model_path=str(bundled_model_path()), n_ctx=8192, n_threads=threads, n_batch=512, verbose=False)
            http_run(server, 16, 0)  # warm both up
            direct_run(llama, 16, 0)
            direct, api = [], []
            for i in range(args.runs):
                seed = 1000 + i
                # llama.cpp's threads spin a while after work; let each side start on idle cores.
                time.sleep(0.5)
                direct.append(direct_run(llama, args.tokens, seed))
                time.sleep(0.5)
                api.append(http_run(server, args.tokens, seed))
        finally:
            server.stop()

    def rate(runs):
        return statistics.median((n - 1) / secs for n, secs, _ in runs if secs > 0)

    def ttft(runs):
        return statistics.median(t for _, _, t in runs) * 1000

    d, h = rate(direct), rate(api)
    print(f"engine benchmark: SmolLM2-135M-Instruct Q4_1, {threads} threads, up to {args.tokens} tokens, median of {args.runs} runs")
    print(f"  llama-cpp-python direct : {d:7.1f} tokens/s   first token {ttft(direct):6.0f} ms   tokens {[r[0] for r in direct]}")
    print(f"  HTTP API, SSE stream    : {h:7.1f} tokens/s   first token {ttft(api):6.0f} ms   tokens {[r[0] for r in api]}")
    print(f"  ratio (API / direct)    : {h / d:.2f}   (goal >= 0.90)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
