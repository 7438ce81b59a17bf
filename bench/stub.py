"""A fast OpenAI-compatible stub upstream: raw asyncio, HTTP/1.1 keep-alive, no framework.

    python bench/stub.py --port 9100 [--chunks 16]

`POST …/chat/completions` answers a canned completion: as JSON, or, when the body asks for
`"stream": true`, as an SSE stream of `max_tokens` one-word chunks (else `--chunks`), then a
usage chunk and `data: [DONE]`, in the chunked transfer encoding, one write per chunk (as a
model server sends them). `GET …/models` lists one model. Anything else is a 404.

It exists so that a benchmark measures the gateway, not the upstream: one core of this machine
answers well over 10,000 requests a second with it. It parses only what it needs (the request
line, `content-length`, and two fields of the body), and never logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re

_MAX_TOKENS = re.compile(rb'"max_(?:completion_)?tokens"\s*:\s*(\d+)')
_STREAM = re.compile(rb'"stream"\s*:\s*true')

_MODELS = b'{"object":"list","data":[{"id":"stub","object":"model","owned_by":"bench"}]}'


def _head(status: bytes, ctype: bytes, length: int | None) -> bytes:
    out = b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype + b"\r\n"
    if length is None:
        return out + b"transfer-encoding: chunked\r\n\r\n"
    return out + b"content-length: " + str(length).encode() + b"\r\n\r\n"


def _completion(n: int) -> bytes:
    body = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(["tok"] * n)}, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n},
    }
    return json.dumps(body, separators=(",", ":")).encode()


_FIRST = b'data: {"id":"chatcmpl-stub","object":"chat.completion.chunk","created":1700000000,"model":"stub","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
_TOKEN = b'data: {"id":"chatcmpl-stub","object":"chat.completion.chunk","created":1700000000,"model":"stub","choices":[{"index":0,"delta":{"content":" tok"},"finish_reason":null}]}\n\n'
_LAST = b'data: {"id":"chatcmpl-stub","object":"chat.completion.chunk","created":1700000000,"model":"stub","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'


def _usage(n: int) -> bytes:
    return (
        b'data: {"id":"chatcmpl-stub","object":"chat.completion.chunk","created":1700000000,"model":"stub","choices":[],'
        b'"usage":{"prompt_tokens":12,"completion_tokens":' + str(n).encode() + b',"total_tokens":' + str(12 + n).encode() + b"}}\n\n"
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Stub(asyncio.Protocol):
    default_chunks = 16
    _cache: dict[tuple[bool, int], list[bytes]] = {}

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop > 0 else None].strip())
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.answer(head.split(b" ", 2), body)

    def answer(self, line: list[bytes], body: bytes) -> None:
        method, path = line[0], line[1] if len(line) > 1 else b"/"
        write = self.transport.write
        if method == b"POST" and path.endswith(b"/chat/completions"):
            m = _MAX_TOKENS.search(body)
            n = min(int(m.group(1)), 100_000) if m else self.default_chunks
            stream = bool(_STREAM.search(body))
            parts = self._cache.get((stream, n))
            if parts is None:
                if stream:
                    frames = [_FIRST] + [_TOKEN] * n + [_LAST, _usage(n), b"data: [DONE]\n\n"]
                    parts = [_head(b"200 OK", b"text/event-stream", None) + _chunk(frames[0])]
                    parts += [_chunk(f) for f in frames[1:]] + [b"0\r\n\r\n"]
                else:
                    payload = _completion(n)
                    parts = [_head(b"200 OK", b"application/json", len(payload)) + payload]
                if len(self._cache) < 64:
                    self._cache[(stream, n)] = parts
            for part in parts:
                write(part)
        elif method == b"GET" and path.endswith(b"/models"):
            write(_head(b"200 OK", b"application/json", len(_MODELS)) + _MODELS)
        else:
            write(_head(b"404 Not Found", b"text/plain", 9) + b"not found")


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Stub, "127.0.0.1", port, backlog=1024, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=16, help="tokens streamed when the request gives no max_tokens")
    args = parser.parse_args()
    Stub.default_chunks = args.chunks
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    if os.environ.get("STUB_CPU"):
        os.sched_setaffinity(0, {int(c) for c in os.environ["STUB_CPU"].split(",")})
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
