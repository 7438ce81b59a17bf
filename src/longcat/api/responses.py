"""OpenAI Responses API routes: POST /openai/v1/responses, GET and DELETE
/openai/v1/responses/{id}, each also without /v1.

Thin like the chat route (decode -> gateway.admit -> gateway.events -> encode), plus the store:
`store: true` keeps the finished response for retrieval and for `previous_response_id`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
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
)
from longcat.api.openai import openai_error
from longcat.canonical import ApiError, Error, Event, invalid, shown
from longcat.gateway.pipeline import Gateway
from longcat.gateway.signing import Signer
from longcat.observe.access import note_error
from longcat.protocols import openai_responses
from longcat.protocols.openai_responses import ResponseEncoder, ResponsesRequest
from longcat.store.accounts import KeyOwner
from longcat.store.responses import ResponseStore

CONTEXT_EXCEEDED = "context_length_exceeded"
# A stored conversation this long is not continued: each turn would carry (and store) it again.
MAX_HISTORY_CHARS = 32 * 2**20

Save = Callable[[dict[str, Any]], Awaitable[None]]


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _store(request: Request) -> ResponseStore:
    return request.app.state.responses


def _error(err: ApiError) -> Response:
    """The OpenAI error body, naming the request field as this format does."""
    return openai_error(openai_responses.in_responses_terms(err))


class _Seals:
    """The `encrypted_content` of reasoning items, sealed for (and opened only by) one account."""

    def __init__(self, signer: Signer, account_id: int) -> None:
        self.signer, self.account_id = signer, account_id

    def seal(self, text: str) -> str:
        return self.signer.seal("reasoning", text, self.account_id)

    def opener(self, value: object) -> str | None:
        return self.signer.open("reasoning", value, self.account_id)


async def create_response(request: Request) -> Response:
    gateway = _gateway(request)
    store = _store(request)
    decoded: ResponsesRequest | None = None
    try:
        owner = await gateway.authenticate(request.headers)
        seals = _Seals(request.app.state.signer, owner.account_id)
        body = await read_json(request, str(owner.account_id))
        history = await _history(store, owner, openai_responses.previous_response_id(body.data))
        decoded = await decode_body(
            body, openai_responses.decode, body.data, history, open_seal=seals.opener, limits=gateway.limits
        )
        call = await until_disconnect(request.receive, gateway.admit(owner, decoded.chat, endpoint="responses"))
        # The response object reports the sampling values the engine really uses.
        sampling = call.engine.sampling(call.request)
    except Disconnected:
        return Response(status_code=499)
    except ApiError as err:
        err = openai_responses.in_responses_terms(err)
        if decoded is not None and decoded.chat.stream and err.code == CONTEXT_EXCEEDED:
            note_error(err.code)  # refused inside a stream that opens with 200
            return EventStream(_refusal(ResponseEncoder(decoded), err), _error)  # type: ignore[return-value]
        return _error(err)

    encoder = ResponseEncoder(decoded, live_usage=call.ctx.usage, sampling=sampling, seal=seals.seal)
    save = _saver(store, owner, decoded) if decoded.store else None
    if decoded.chat.stream:
        return EventStream(_frames(gateway.events(call), encoder, save), _error)  # type: ignore[return-value]

    try:
        result = await until_disconnect(request.receive, _collect(gateway.events(call), encoder))
    except ApiError as err:
        return _error(err)
    except Disconnected:
        return Response(status_code=499)
    if save is not None:
        await save(result)
    return JSONBody(result)


async def _history(store: ResponseStore, owner: KeyOwner, response_id: str | None) -> list[dict[str, Any]]:
    if response_id is None:
        return []
    stored = await store.get(response_id, owner.account_id)
    if stored is None:
        raise ApiError(
            "invalid_request",
            "previous_response_not_found",
            f"Previous response with id {shown(response_id)} not found. Only responses created with store=true "
            f"by this account can be continued.",
            param="previous_response_id",
        )
    if stored.size > MAX_HISTORY_CHARS:
        raise invalid(
            f"The conversation of {shown(response_id)} is too long to continue with previous_response_id "
            f"({stored.size / 2**20:.0f} MB of {MAX_HISTORY_CHARS // 2**20} MB); send the input items yourself.",
            param="previous_response_id",
        )
    return stored.history()


def _saver(store: ResponseStore, owner: KeyOwner, decoded: ResponsesRequest) -> Save:
    async def save(body: dict[str, Any]) -> None:
        await store.save(body, decoded.items, account_id=owner.account_id, key_id=owner.key_id)

    return save


def _frame(event: dict[str, Any]) -> bytes:
    return sse(event, event=event["type"])


async def _frames(events: AsyncIterator[Event], encoder: ResponseEncoder, save: Save | None) -> AsyncIterator[bytes]:
    it = aiter(events)
    try:
        try:
            first = await anext(it, None)
        except ApiError as err:
            if err.code != CONTEXT_EXCEEDED:
                raise  # still before the first frame: a plain HTTP error
            for event in encoder.refuse(err):
                yield _frame(event)
            return
        for event in encoder.start():
            yield _frame(event)
        async for event in _prepend(first, it):
            batch = encoder.encode(event)
            if encoder.finished and save is not None:
                # Saved before the final event goes out, so a client that continues from it at
                # once always finds it.
                await save(encoder.response)
                save = None
            for out in batch:
                yield _frame(out)
        batch = encoder.close()
        if batch and save is not None:
            await save(encoder.response)
        for out in batch:
            yield _frame(out)
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def _prepend(first: Event | None, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    if first is not None:
        yield first
    async for event in rest:
        yield event


async def _refusal(encoder: ResponseEncoder, err: ApiError) -> AsyncIterator[bytes]:
    for event in encoder.refuse(err):
        yield _frame(event)


async def _collect(events: AsyncIterator[Event], encoder: ResponseEncoder) -> dict[str, Any]:
    """Non-streaming: the same events through the same encoder; a failure is an HTTP error."""
    try:
        async for event in events:
            if isinstance(event, Error):
                raise event.error
            encoder.encode(event)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    encoder.close()
    return encoder.response


async def get_response(request: Request) -> Response:
    try:
        owner = await _gateway(request).authenticate(request.headers)
        stored = await _store(request).get(request.path_params["response_id"], owner.account_id)
        if stored is None:
            raise _not_found(request.path_params["response_id"])
    except ApiError as err:
        return openai_error(err)
    return JSONBody(stored.body)


async def delete_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    try:
        owner = await _gateway(request).authenticate(request.headers)
        if not await _store(request).delete(response_id, owner.account_id):
            raise _not_found(response_id)
    except ApiError as err:
        return openai_error(err)
    return JSONBody({"id": response_id, "object": "response", "deleted": True})


def _not_found(response_id: str) -> ApiError:
    # The same answer whether the id never existed or belongs to another account.
    return ApiError("not_found", "not_found", f"No response found with id {shown(response_id)}.", param="response_id")


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for prefix in ("/openai/v1", "/openai"):
        out += [
            Route(prefix + "/responses", create_response, methods=["POST"]),
            Route(prefix + "/responses/{response_id}", get_response, methods=["GET"]),
            Route(prefix + "/responses/{response_id}", delete_response, methods=["DELETE"]),
        ]
    return out
