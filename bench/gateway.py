"""Gateway overhead, measured with `wrk`: requests per second and p50 / p99 latency at several
concurrencies, streaming and not, against three targets on the same stub upstream, in one run:

- the stub upstream asked directly (the baseline: what the network and the client cost);
- the platform, a model on `openai_compat` in front of the stub, with everything on (API-key
  authentication, rate limits, quota reservation and settlement, a usage record committed before
  each reply ends; SQLite and in-process counters, the default deployment);
- LiteLLM's proxy (one worker, master key only) on the same stub, installed by this script into
  its own cached venv (`~/.cache/longcat-bench/litellm-venv`); skipped with a message if it
  cannot be installed.

    .venv/bin/python bench/gateway.py [--seconds 8] [--concurrency 1,32,128] [--tokens 16] [--no-litellm]

Pinning (2 cores): the platform or LiteLLM on CPU 0, the stub and `wrk` on CPU 1 (bench/common.py).
Every figure is printed with its ratio against the baseline of the same run; the platform is
also compared with LiteLLM. Each run is bounded by `--seconds`; warm-up runs precede each target.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    MODEL,
    PROMPT,
    LiteLLM,
    Platform,
    Stub,
    WrkResult,
    have_wrk,
    litellm_venv,
    litellm_version,
    lua_script,
    machine,
    tmpdir,
    wrk,
)


def body(tokens: int, stream: bool) -> str:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens, "stream": stream})


def measure(name: str, url: str, key: str | None, tmp: Path, args, out: dict) -> None:
    for stream in (False, True):
        script = lua_script(tmp, f"{name}-{stream}", body(args.tokens, stream), key)
        wrk(url, script, 8, min(2.0, args.seconds))  # warm-up: connections, caches, JIT-free Python's first calls
        for c in args.concurrency:
            r = wrk(url, script, c, args.seconds)
            out[(name, stream, c)] = r
            flag = f"  ({r.errors} errors!)" if r.errors else ""
            print(f"  {name:<9} {'stream' if stream else 'json  '} c={c:<4} {r.cell()}{flag}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each wrk run")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32, 128])
    parser.add_argument("--tokens", type=int, default=16, help="tokens (SSE chunks) in each reply")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy")
    args = parser.parse_args()
    if not have_wrk():
        print("gateway benchmark skipped: `wrk` is not installed (Debian: apt-get install wrk)")
        return 0

    print(f"gateway benchmark: {machine()}; {args.tokens}-token replies; {args.seconds:g} s per run")
    results: dict[tuple[str, bool, int], WrkResult] = {}
    litellm_note = ""
    with tmpdir() as t:
        tmp = Path(t)
        stub = Stub(chunks=args.tokens)
        try:
            measure("direct", stub.base_url + "/chat/completions", None, tmp, args, results)
            platform = Platform(stub.base_url, tmp)
            try:
                measure("platform", platform.base_url + "/openai/v1/chat/completions", platform.key, tmp, args, results)
            finally:
                platform.stop()
            if args.no_litellm:
                litellm_note = "LiteLLM skipped (--no-litellm)"
            else:
                exe, why = litellm_venv()
                if exe is None:
                    litellm_note = f"LiteLLM skipped: it could not be installed ({why})"
                else:
                    try:
                        proxy = LiteLLM(exe, stub.base_url, tmp)
                    except RuntimeError as exc:
                        proxy, litellm_note = None, f"LiteLLM skipped: its proxy did not start ({exc})"
                    if proxy is not None:
                        litellm_note = f"LiteLLM {litellm_version(exe)} proxy, one worker, master key"
                        try:
                            measure("litellm", proxy.base_url + "/v1/chat/completions", proxy.key, tmp, args, results)
                        finally:
                            proxy.stop()
        finally:
            stub.stop()

    print()
    print(litellm_note)
    print_table(results, args)
    return 0


def print_table(results: dict, args) -> None:
    has_litellm = any(k[0] == "litellm" for k in results)
    head = "| | c | stub direct | platform (everything on) | platform / direct | added p50 |"
    sep = "|---|---|---|---|---|---|"
    if has_litellm:
        head += " LiteLLM proxy | platform / LiteLLM |"
        sep += "---|---|"
    print(head)
    print(sep)
    for stream in (False, True):
        for c in args.concurrency:
            d, p = results.get(("direct", stream, c)), results.get(("platform", stream, c))
            if d is None or p is None:
                continue
            row = (
                f"| {'stream' if stream else 'JSON'} | {c} | {d.rps:,.0f} req/s, p50 {d.p50_ms:.2f} / p99 {d.p99_ms:.2f} ms "
                f"| {p.rps:,.0f} req/s, p50 {p.p50_ms:.2f} / p99 {p.p99_ms:.2f} ms | {p.rps / d.rps:.3f} "
                f"| {p.p50_ms - d.p50_ms:+.2f} ms |"
            )
            if has_litellm:
                lite = results.get(("litellm", stream, c))
                row += (
                    f" {lite.rps:,.0f} req/s, p50 {lite.p50_ms:.2f} / p99 {lite.p99_ms:.2f} ms | **{p.rps / lite.rps:.1f}×** |"
                    if lite else " – | – |"
                )
            print(row)
    errors = {k: v.errors for k, v in results.items() if v.errors}
    if errors:
        print(f"errors (non-2xx or socket) in: {errors}")


if __name__ == "__main__":
    sys.exit(main())
