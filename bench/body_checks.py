"""What the body checks cost per request: parsing a real agent request with everything the API does
to it (`parse_json_object`: orjson, the nesting-depth check, the surrogate scan) and the shape
check of the decoders (`count_blocks`), against orjson's parse alone, in the same run.

The requests are the recorded ones in shared/fixtures/clients, with each redacted text put back
at its recorded length (so a Claude Code request is its real ~70 KB, tools and all).

    .venv/bin/python bench/body_checks.py [--repeat 2000]

Goal: the checks add well under 100 us to a 50 KB request.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import timeit
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.support.server import shared_file  # noqa: E402

from longcat.protocols.fields import _within_depth, count_blocks, parse_json_object  # noqa: E402

REDACTED = re.compile(r"<(\d+) characters of client text>")


def restore(node):
    """The request as sent: each redacted text back at its length ({, [ and quotes included)."""
    if isinstance(node, dict):
        return {k: restore(v) for k, v in node.items()}
    if isinstance(node, list):
        return [restore(v) for v in node]
    if isinstance(node, str) and (m := REDACTED.fullmatch(node)):
        n = int(m.group(1))
        return ('Run `ls {src}` and read "notes [1]" first. ' * (n // 40 + 1))[:n]
    return node


def largest(client: str) -> bytes:
    lines = shared_file("fixtures", "clients", f"{client}.jsonl").read_text().splitlines()
    bodies = [restore(json.loads(line)["body"]) for line in lines]
    return max((orjson.dumps(b) for b in bodies if isinstance(b, dict)), key=len)


def best(fn, repeat: int) -> float:
    """Microseconds per call, best of five batches."""
    return min(timeit.repeat(fn, number=repeat, repeat=5)) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'request':<12} {'size':>7} {'orjson':>8} {'parse_json_object':>18} {'depth':>7} {'blocks':>7} {'ratio':>6}")
    for client in ("opencode", "codex", "claude-code"):
        raw = largest(client)
        body = orjson.loads(raw)
        items = body.get("messages") or body.get("input") or []
        base = best(lambda raw=raw: orjson.loads(raw), args.repeat)
        full = best(lambda raw=raw: parse_json_object(raw), args.repeat)
        depth = best(lambda body=body: _within_depth(body, 128), args.repeat)
        blocks = best(lambda items=items: count_blocks(items, 50_000), args.repeat)
        print(f"{client:<12} {len(raw) / 1024:>5.0f} KB {base:>6.0f} us {full:>15.0f} us {depth:>4.0f} us {blocks:>4.0f} us "
              f"{(full + blocks) / base:>5.2f}x")


if __name__ == "__main__":
    main()
