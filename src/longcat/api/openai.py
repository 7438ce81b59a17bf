"""OpenAI-format routes: /openai/v1/chat/completions and the model list (also without /v1)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from longcat.api.asgi import (
    Disconnected,
    EventStream,
    JSONBody,
    decode_body,
    read_json,
    sse,
    until_disconnect,
)
from longcat.api.models import model_detail, model_summary
from longcat.canonical import ApiError, Event
from longcat.gateway.pipeline import Gateway
from longcat.observe.access import note_error
from longcat.protocols import openai_chat
from longcat.protocols.openai_errors import openai_error_body

DONE = b"data: [DONE]\n\n"


def openai_error(err: ApiError) -> Response:
    note_error(err.code)
    return JSONBody(openai_error_body(err), status_code=err.status, headers=err.headers)


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def chat_completions(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        owner = await gateway.authenticate(request.headers)
        body = await read_json(request, str(owner.account_id))
        chat = await decode_body(body, openai_chat.decode, body.data, limits=gateway.limits)
        if chat.stream:
            call = await until_disconnect(request.receive, gateway.admit(owner, chat, endpoint="chat.completions"))
        else:  # admitted and collected under one watch of the connection
            call, done = await until_disconnect(request.receive, gateway.admit_and_collect(owner, chat, "chat.completions"))
    except ApiError as err:
        return openai_error(err)
    except Disconnected:
        return Response(status_code=499)

    # x-request-id is added to every response by the access middleware (observe/middleware.py).
    if chat.stream:
        encoder = openai_chat.ChatStreamEncoder(model=chat.model, include_usage=chat.extras["include_usage"])
        return EventStream(_chat_frames(gateway.events(call), encoder), openai_error)  # type: ignore[return-value]

    body = openai_chat.encode_completion(
        done, model=chat.model, completion_id=openai_chat.new_completion_id(), created=int(time.time())
    )
    return JSONBody(body)


async def _chat_frames(events: AsyncIterator[Event], encoder: openai_chat.ChatStreamEncoder) -> AsyncIterator[bytes]:
    it = aiter(events)
    try:
        first = await anext(it, None)  # an ApiError here still becomes a plain HTTP error
        for chunk in encoder.start():
            yield sse(chunk)
        if first is not None:
            for chunk in encoder.encode(first):
                yield sse(chunk)
            async for event in it:
                for chunk in encoder.encode(event):
                    yield sse(chunk)
        yield DONE
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def list_models(request: Request) -> Response:
    try:
        await _gateway(request).authenticate(request.headers)
    except ApiError as err:
        return openai_error(err)
    catalog = _gateway(request).catalog
    return JSONBody({"object": "list", "data": [model_summary(m) for m in catalog.models.values()]})


async def get_model(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        owner = await gateway.authenticate(request.headers)
        model, engine = gateway.catalog.lookup(request.path_params["model_id"])
    except ApiError as err:
        return openai_error(err)
    return JSONBody(model_detail(model, engine, operator=owner.is_admin))


def routes() -> list[Route]:
    out = []
    for prefix in ("/openai/v1", "/openai"):
        out += [
            Route(prefix + "/chat/completions", chat_completions, methods=["POST"]),
            Route(prefix + "/models", list_models, methods=["GET"]),
            Route(prefix + "/models/{model_id:path}", get_model, methods=["GET"]),
        ]
    return out
