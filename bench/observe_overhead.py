"""What the access middleware costs per request: a request id, the route's template, the metrics
and one JSON access line, measured in process (ASGI calls, no sockets) on a trivial route, with
and without the middleware, in one run.

    .venv/bin/python bench/observe_overhead.py [--requests 20000] [--rounds 5]

Prints microseconds per request for both and the difference (the middleware's own cost).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from longcat.observe.logs import configure
from longcat.observe.middleware import AccessMiddleware, tag_routes


async def hello(request):
    return JSONResponse({"ok": True})


def build(observed: bool):
    routes = [Route("/openai/v1/models", hello, methods=["GET"])]
    if observed:
        tag_routes(routes)
    app = Starlette(routes=routes)
    return AccessMiddleware(app) if observed else app


async def run(app, n: int) -> float:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/openai/v1/models", "raw_path": b"/openai/v1/models", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer x"), (b"x-request-id", b"bench-1")],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
    }

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    for _ in range(500):  # warm-up
        await app(dict(scope), receive, send)
    started = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    devnull = open(os.devnull, "w")
    configure("info", "json", devnull)  # the access line is formatted and written, to nowhere
    logging.getLogger("longcat.access").setLevel(logging.INFO)
    plain, observed = build(False), build(True)
    base = with_mw = float("inf")
    for _ in range(args.rounds):  # interleaved, best of each: the machine is shared
        base = min(base, asyncio.run(run(plain, args.requests)))
        with_mw = min(with_mw, asyncio.run(run(observed, args.requests)))
    print(f"without middleware: {base:7.1f} us/request")
    print(f"with middleware   : {with_mw:7.1f} us/request ({with_mw / base:.2f}x)")
    print(f"middleware's cost : {with_mw - base:7.1f} us/request")


if __name__ == "__main__":
    main()
