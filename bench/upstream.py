"""Tokens per second for one stream through the platform's HTTP API in front of an upstream
server (`openai_compat`), against the same upstream asked directly, in the same run.

The upstream is llama.cpp's own HTTP server (the code of `llama-server`, through xllamacpp:
`python -m tests.support.llamacpp_server`) serving the bundled SmolLM2-135M GGUF with `--jinja`;
the platform fronts it as an `openai_compat` model, once with `tokenize = "none"` and once with
`tokenize = "llamacpp"` (which counts each prompt with `/apply-template` + `/tokenize` first).
Same prompt, sampling and seed on every side, runs interleaved, medians.

    .venv/bin/python bench/upstream.py [--tokens 256] [--runs 5] [--threads 1]

Prints the rates and their ratio (goal: >= 0.9). Decode rate is measured from the first to the
last token, so every side pays the same prefill; time to first token is printed separately.
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

from tests.support.llamacpp_server import LlamaCppServer  # noqa: E402
from tests.support.server import Server, free_port, write_config  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "top_k": 40}


def start_llama(port: int, threads: int, log: Path) -> LlamaCppServer:
    return LlamaCppServer(log, port, "--jinja", "--alias", "smollm2", "--ctx", "8192", "--threads", str(threads)).start()


def stream_run(url: str, headers: dict[str, str], model: str, tokens: int, seed: int) -> tuple[int, float, float]:
    """(tokens, decode seconds, time to first token) of one streamed chat completion."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens, "stream": True,
            "seed": seed, **SAMPLING}
    started = time.perf_counter()
    first = last = None
    pieces = 0
    with httpx.Client(timeout=300) as client, client.stream("POST", url, json=body, headers=headers) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                pieces += 1  # this server streams one token a piece
    return pieces, (last - first), (first - started)


def xllamacpp_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("xllamacpp")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="llama.cpp threads of the upstream (default 1: the other core runs the platform and the client)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        llama = start_llama(port, args.threads, Path(tmp) / "llama.log")
        server = None
        try:
            def entry(id: str, tokenize: str) -> str:
                return (f'[[models]]\nid = "{id}"\nengine = "openai_compat"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
                        f'upstream_model = "smollm2"\ncontext_window = 8192\nmax_output = 4096\ntokenize = "{tokenize}"\n')

            config = write_config(Path(tmp) / "config.toml", entry("smol", "none") + "\n" + entry("smol-counted", "llamacpp"))
            server = Server(Path(tmp) / "data", config, free_port()).start()
            server.key = server.new_key("bench@example.com")
            sides = {
                "direct": (f"http://127.0.0.1:{port}/v1/chat/completions", {}, "smollm2"),
                "front": (server.base_url + "/openai/v1/chat/completions", {"Authorization": f"Bearer {server.key}"}, "smol"),
                "front, counted": (server.base_url + "/openai/v1/chat/completions",
                                   {"Authorization": f"Bearer {server.key}"}, "smol-counted"),
            }
            for url, headers, model in sides.values():  # warm up every path
                stream_run(url, headers, model, 16, 0)
            results: dict[str, list[tuple[int, float, float]]] = {name: [] for name in sides}
            for i in range(args.runs):
                for name, (url, headers, model) in sides.items():
                    time.sleep(0.5)  # llama.cpp's threads spin a while after work: start each run on idle cores
                    results[name].append(stream_run(url, headers, model, args.tokens, 1000 + i))
        finally:
            if server is not None:
                server.stop()
            llama.stop()

    def rate(runs):
        return statistics.median((n - 1) / secs for n, secs, _ in runs if secs > 0)

    def ttft(runs):
        return statistics.median(t for _, _, t in runs) * 1000

    direct = rate(results["direct"])
    print(f"upstream benchmark: llama.cpp server (xllamacpp {xllamacpp_version()}) with SmolLM2-135M-Instruct Q4_1, {args.threads} "
          f"thread(s), {os.cpu_count()} cores, up to {args.tokens} tokens, median of {args.runs} interleaved runs")
    for name, runs in results.items():
        label = {"direct": "llama.cpp server direct", "front": "LongCat front (tokenize none)",
                 "front, counted": "LongCat front (tokenize llamacpp)"}[name]
        print(f"  {label:34}: {rate(runs):7.1f} tokens/s   first token {ttft(runs):6.0f} ms   tokens {[r[0] for r in runs]}")
    for name, label in (("front", "ratio (front / direct)"), ("front, counted", "ratio (front, counted / direct)")):
        print(f"  {label:34}: {rate(results[name]) / direct:7.2f}   (goal >= 0.90)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
