"""Anthropic-format routes: /anthropic/v1/messages, token counting and the model list.

Same path as the OpenAI routes: decode -> gateway.admit -> gateway.events -> encode. Clients
append `/v1/...` to a base URL ending in `/anthropic` (Claude Code adds `?beta=true`, which means
nothing here) and warm the connection up with `HEAD /anthropic`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from longcat.api.asgi import (
    Disconnected,
    EventStream,
    JSONBody,
    decode_body,
    read_json,
    sse,
    until_disconnect,
    with_keepalive,
)
from longcat.api.models import model_detail
from longcat.canonical import ApiError, Event, invalid, shown
from longcat.config import ModelConfig
from longcat.gateway.pipeline import Gateway
from longcat.gateway.signing import Signer
from longcat.observe.access import note_error, visible_request_id
from longcat.protocols import anthropic
from longcat.protocols.anthropic_errors import anthropic_error_body


def anthropic_error(err: ApiError) -> Response:
    note_error(err.code)
    return JSONBody(anthropic_error_body(err), status_code=err.status, headers=err.headers)


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _signer(request: Request) -> Signer:
    return request.app.state.signer


async def messages(request: Request) -> Response:
    gateway = _gateway(request)
    signer = _signer(request)
    try:
        owner = await gateway.authenticate(request.headers)
        body = await read_json(request, str(owner.account_id))
        verify = partial(signer.verify_thinking, account=owner.account_id)
        chat = await decode_body(body, anthropic.decode, body.data, verify_thinking=verify, limits=gateway.limits)
        if chat.stream:
            call = await until_disconnect(request.receive, gateway.admit(owner, chat, endpoint="messages"))
        else:  # admitted and collected under one watch of the connection
            call, done = await until_disconnect(request.receive, gateway.admit_and_collect(owner, chat, "messages"))
    except ApiError as err:
        return anthropic_error(err)
    except Disconnected:
        return Response(status_code=499)

    # Anthropic's own header, the same id as x-request-id (which the access middleware adds).
    headers = {"request-id": visible_request_id(call.ctx.request_id)}
    if chat.stream:
        encoder = anthropic.MessageStreamEncoder(
            model=chat.model,
            input_tokens=call.ctx.prompt_tokens or 0,
            sign_thinking=partial(signer.sign_thinking, account=owner.account_id),
            live_usage=call.ctx.usage,
        )
        frames = message_frames(gateway.events(call), encoder, gateway.settings.stream_ping_interval)
        return EventStream(frames, anthropic_error, headers)  # type: ignore[return-value]

    message = anthropic.encode_message(
        done, model=chat.model, message_id=anthropic.new_message_id(), sign_thinking=partial(signer.sign_thinking, account=owner.account_id)
    )
    return JSONBody(message, headers=headers)


def _frame(frame: anthropic.Frame) -> bytes:
    name, data = frame
    return sse(data, event=name)


async def message_frames(
    events: AsyncIterator[Event], encoder: anthropic.MessageStreamEncoder, ping_interval: float
) -> AsyncIterator[bytes]:
    """The SSE frames of one reply.

    The stream starts with the first engine event, or after `ping_interval` seconds without one
    (a long queue or prefill), so the client has bytes to read; pings then fill the silences.
    An `ApiError` before the stream starts still becomes a plain HTTP error (see `EventStream`).
    """
    ticks = with_keepalive(events, ping_interval)
    started = False
    try:
        try:
            async for event in ticks:
                if not started:
                    started = True
                    for frame in encoder.start():
                        yield _frame(frame)
                for frame in [encoder.ping()] if event is None else encoder.encode(event):
                    yield _frame(frame)
        except ApiError as err:
            if not started:
                raise
            yield _frame(encoder.error(err))
            return
        if not started:
            for frame in encoder.start():
                yield _frame(frame)
        for frame in encoder.finish():
            yield _frame(frame)
    finally:
        await ticks.aclose()  # type: ignore[attr-defined]


async def count_tokens(request: Request) -> Response:
    """The prompt size with the serving engine's own tokenizer: what a request would be billed."""
    gateway = _gateway(request)
    try:
        owner = await gateway.authenticate(request.headers)
        body = await read_json(request, str(owner.account_id))
        verify = partial(_signer(request).verify_thinking, account=owner.account_id)
        chat = await decode_body(
            body, anthropic.decode, body.data, verify_thinking=verify, count_only=True, limits=gateway.limits
        )
        tokens = await until_disconnect(request.receive, gateway.count_tokens(owner, chat))
    except ApiError as err:
        return anthropic_error(err)
    except Disconnected:
        return Response(status_code=499)
    return JSONBody({"input_tokens": tokens})


# ---------------------------------------------------------------------------------------- models


def rfc3339(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_info(model: ModelConfig) -> dict[str, Any]:
    """Anthropic's model object, with the limits clients use to size their requests."""
    return {
        "type": "model",
        "id": model.id,
        "display_name": model.display_name,
        "created_at": rfc3339(model.created),
        "lifecycle": "active",
        "max_input_tokens": model.context_window,
        "max_tokens": model.max_output,
    }


async def list_models(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        await gateway.authenticate(request.headers)
        page = _page([model_info(m) for m in gateway.catalog.models.values()], request.query_params)
    except ApiError as err:
        return anthropic_error(err)
    return JSONBody(page)


def _page(items: list[dict[str, Any]], query: Any) -> dict[str, Any]:
    """Cursor pagination as Anthropic does it: `limit`, then `after_id` or `before_id`."""
    raw_limit = query.get("limit") or "20"
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise invalid("'limit' must be an integer from 1 to 1000.", param="limit")
    limit = int(raw_limit)
    ids = [m["id"] for m in items]
    after, before = query.get("after_id"), query.get("before_id")
    for name, value in (("after_id", after), ("before_id", before)):
        if value and value not in ids:
            raise invalid(f"'{name}' {shown(value)} is not a model id.", param=name)
    if before:
        end = ids.index(before)
        chosen, has_more = items[max(0, end - limit) : end], end - limit > 0
    else:
        start = ids.index(after) + 1 if after else 0
        chosen, has_more = items[start : start + limit], start + limit < len(items)
    return {
        "data": chosen,
        "has_more": has_more,
        "first_id": chosen[0]["id"] if chosen else None,
        "last_id": chosen[-1]["id"] if chosen else None,
    }


async def get_model(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        owner = await gateway.authenticate(request.headers)
        model, engine = gateway.catalog.lookup(request.path_params["model_id"])
    except ApiError as err:
        return anthropic_error(err)
    detail = model_detail(model, engine, operator=owner.is_admin)
    extra = {k: v for k, v in detail.items() if k not in ("id", "object", "created", "name")}
    return JSONBody({**model_info(model), **extra})


async def root(request: Request) -> Response:
    """Claude Code's warm-up `HEAD /anthropic`; a GET says what is here."""
    return JSONBody({"status": "ok", "format": "anthropic", "messages": "/anthropic/v1/messages"})


def routes() -> list[BaseRoute]:
    prefix = "/anthropic/v1"
    return [
        Route("/anthropic", root, methods=["GET", "HEAD"]),
        Route("/anthropic/", root, methods=["GET", "HEAD"]),
        Route(prefix + "/messages", messages, methods=["POST"]),
        Route(prefix + "/messages/count_tokens", count_tokens, methods=["POST"]),
        Route(prefix + "/models", list_models, methods=["GET"]),
        Route(prefix + "/models/{model_id:path}", get_model, methods=["GET"]),
    ]
