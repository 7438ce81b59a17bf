"""A replica that fails on request, for the balancing tests: a raw asyncio HTTP/1.1 server on a
loopback port, in a thread of the test process, speaking just enough of OpenAI Chat Completions
(`POST /v1/chat/completions`) and Anthropic Messages (`POST /v1/messages`), always streamed, and
answering `GET /health` and `GET /v1/models`.

    with FaultUpstream("alpha") as up:
        up.mode = "500"     # ok | 500 | 429 (with Retry-After) | hang | cut (mid-stream) | slow (first byte)
        up.refuse()         # stop listening (and drop idle connections): connections are refused
        up.accept()         # listen again on the same port
        up.health = "fail"  # the probes' routes: ok | fail (503) | hang

Every reply is `tokens` pieces of one token each: the replica's name, then " tok" (so a client
can tell who answered), capped by the request's `max_tokens`, and the usage says `PROMPT_TOKENS`
in, the pieces out. `hits` lists the generation requests read, `probes` counts health checks,
`active` is the requests being answered now and `left` the replies their client walked out of.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

PROMPT_TOKENS = 21
REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}


class FaultUpstream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.health = "ok"
        self.tokens = 6
        self.retry_after = 2
        self.delay = 0.5  # "slow": seconds before the first byte
        self.cut_after = 3  # "cut": pieces sent before the connection is dropped
        self.piece_delay = 0.0  # seconds between pieces, in any mode
        self.hits: list[str] = []
        self.probes = 0
        self.active = 0
        self.left = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fault-{name}", daemon=True)

    # ------------------------------------------------------------------ control (from the test's thread)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Back to a healthy replica with the default reply."""
        self.mode, self.health, self.tokens, self.retry_after = "ok", "ok", 6, 2
        self.delay, self.cut_after, self.piece_delay = 0.5, 3, 0.0

    def start(self) -> FaultUpstream:
        self._thread.start()
        self.accept()
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.refuse()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def refuse(self) -> None:
        self._call(self._close())

    def accept(self) -> None:
        self._call(self._listen())

    def __enter__(self) -> FaultUpstream:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port, reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if server is not None:
            await server.wait_closed()

    # ------------------------------------------------------------------ HTTP

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, path, headers = _parse(head)
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                if not await self._answer(method, path, body, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _answer(self, method: str, path: str, body: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to end."""
        if method == "GET" and path in ("/health", "/v1/models"):
            self.probes += 1
            if self.health == "hang":
                await reader.read()  # until the prober gives up
                return False
            if self.health == "fail":
                return await _json(writer, 503, {"error": {"message": "not ready", "type": "unavailable"}})
            return await _json(writer, 200, {"status": "ok"} if path == "/health" else {"object": "list", "data": []})
        anthropic = path == "/v1/messages"
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/messages"):
            return await _json(writer, 404, {"error": {"message": f"no route {path}", "type": "not_found"}})
        self.hits.append(path)
        request = json.loads(body or b"{}")
        mode = self.mode
        if mode == "500":
            return await _json(writer, 500, _error(anthropic, "api_error", "the replica is broken"))
        if mode == "429":
            return await _json(writer, 429, _error(anthropic, "rate_limit_error", "slow down"),
                               {"Retry-After": str(self.retry_after)})
        if mode == "hang":
            await reader.read()  # silent until the front gives up and closes
            return False
        self.active += 1
        try:
            if mode == "slow":
                await asyncio.sleep(self.delay)
            return await self._stream(writer, request, anthropic, cut=self.cut_after if mode == "cut" else None)
        finally:
            self.active -= 1

    async def _stream(self, writer: asyncio.StreamWriter, request: dict[str, Any], anthropic: bool, cut: int | None) -> bool:
        count = min(self.tokens, int(request.get("max_tokens") or self.tokens))
        pieces = [self.name] + [" tok"] * (count - 1)
        frames = (_anthropic_frames if anthropic else _openai_frames)(str(request.get("model", "")), pieces,
                                                                         count == request.get("max_tokens"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        sent = 0
        try:
            for frame, is_piece in frames:
                if cut is not None and sent >= cut:
                    await writer.drain()
                    writer.transport.abort()  # the connection drops mid-reply, no last chunk
                    return False
                data = frame.encode()
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
                if is_piece:
                    sent += 1
                    if self.piece_delay:
                        await asyncio.sleep(self.piece_delay)
                if writer.transport.is_closing():
                    raise ConnectionResetError
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            self.left += 1
            return False
        return True


def _parse(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return method, path, headers


async def _json(writer: asyncio.StreamWriter, status: int, body: Any, headers: dict[str, str] | None = None) -> bool:
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(data)}\r\n{extra}\r\n".encode() + data)
    await writer.drain()
    return True


def _error(anthropic: bool, kind: str, message: str) -> dict[str, Any]:
    if anthropic:
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind}}


def _openai_frames(model: str, pieces: list[str], at_limit: bool):
    def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
        out: dict[str, Any] = {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 1, "model": model,
                               "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            out["usage"] = usage
        return f"data: {json.dumps(out)}\n\n"

    yield chunk({"role": "assistant", "content": ""}), False
    for piece in pieces:
        yield chunk({"content": piece}), True
    yield chunk({}, "length" if at_limit else "stop"), False
    n = len(pieces)
    yield chunk(None, usage={"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n, "total_tokens": PROMPT_TOKENS + n}), False
    yield "data: [DONE]\n\n", False


def _anthropic_frames(model: str, pieces: list[str], at_limit: bool):
    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

    yield event("message_start", {"message": {
        "id": "msg_fault", "type": "message", "role": "assistant", "content": [], "model": model, "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}}), False
    yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}), False
    for piece in pieces:
        yield event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}}), True
    yield event("content_block_stop", {"index": 0}), False
    yield event("message_delta", {"delta": {"stop_reason": "max_tokens" if at_limit else "end_turn", "stop_sequence": None},
                                  "usage": {"output_tokens": len(pieces)}}), False
    yield event("message_stop", {}), False
