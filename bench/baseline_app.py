"""The floor a gateway is measured against: the same web stack (Starlette on uvicorn) answering a
canned chat completion with no authentication, limits, quota, engine or usage records."""

from __future__ import annotations

import json
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def _completion(text: str) -> dict:
    return {
        "id": "chatcmpl-baseline",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "mock-echo",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


async def chat(request: Request) -> Response:
    body = json.loads(await request.body())
    text = body["messages"][-1]["content"]
    if not body.get("stream"):
        return Response(json.dumps(_completion(text)), media_type="application/json")

    async def frames():
        for word in text.split(" "):
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "mock-echo",
                     "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(frames(), media_type="text/event-stream")


app = Starlette(routes=[Route("/openai/v1/chat/completions", chat, methods=["POST"])])
