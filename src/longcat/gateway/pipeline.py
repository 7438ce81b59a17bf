"""One request through the gateway: admit it, stream the engine's events, settle its usage."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from longcat.canonical import ApiError, ChatRequest, Error, Event, Finish
from longcat.config import ModelConfig, Settings
from longcat.engines.base import CallContext, Engine, context_exceeded
from longcat.engines.catalog import Catalog
from longcat.gateway.auth import authenticate
from longcat.gateway.metering import Meter
from longcat.store.accounts import AccountStore, KeyOwner

log = logging.getLogger("longcat.gateway")


@dataclass(slots=True)
class Call:
    """An admitted request: who, which model and engine, and its live usage."""

    owner: KeyOwner
    model: ModelConfig
    engine: Engine
    request: ChatRequest
    ctx: CallContext
    endpoint: str
    started: float


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class Gateway:
    def __init__(self, settings: Settings, accounts: AccountStore, catalog: Catalog, meter: Meter | None = None) -> None:
        self.settings = settings
        self.accounts = accounts
        self.catalog = catalog
        self.meter = meter or Meter()

    async def authenticate(self, headers: Mapping[str, str]) -> KeyOwner:
        return await authenticate(self.accounts, headers)

    async def admit(self, owner: KeyOwner, request: ChatRequest, endpoint: str) -> Call:
        """Check the request against the model's real limits; raises `ApiError` (never billed)."""
        model, engine = self.catalog.route(request.model)
        if request.max_tokens is None:
            request.max_tokens = min(self.settings.default_max_tokens, model.max_output)
        if request.has_images() and not model.vision:
            raise ApiError(
                "invalid_request",
                "invalid_parameter",
                f"The model {model.id!r} does not accept images; send text only.",
                param="messages",
            )
        ctx = CallContext(request_id=new_request_id(), tenant=str(owner.account_id))
        await engine.measure(request, ctx)
        # A prompt that does not fit is the error to report first: a smaller max_tokens cannot fix it.
        if ctx.prompt_tokens >= model.context_window:
            raise context_exceeded(model, ctx.prompt_tokens)
        if request.max_tokens > model.max_output:
            raise ApiError(
                "invalid_request",
                "invalid_parameter",
                f"max_tokens is {request.max_tokens:,}, but the model {model.id!r} can write at most "
                f"{model.max_output:,} tokens per reply.",
                param="max_tokens",
            )
        return Call(owner, model, engine, request, ctx, endpoint, time.perf_counter())

    async def events(self, call: Call) -> AsyncIterator[Event]:
        """The engine's events, metered. An `ApiError` before the first event propagates (a
        plain HTTP error, not billed); a failure after it becomes an `Error` event."""
        outcome = "cancelled"
        started_output = False
        try:
            async for event in call.engine.stream(call.request, call.ctx):
                started_output = True
                if isinstance(event, Finish):
                    outcome = "length" if event.reason == "length" else "ok"
                elif isinstance(event, Error):
                    outcome = "engine_error"
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "client_closed"
            raise
        except ApiError as err:
            outcome = "engine_error"
            if not started_output:
                raise
            yield Error(err)
        except Exception:
            outcome = "engine_error"
            log.exception("engine %s failed on request %s", call.model.id, call.ctx.request_id)
            err = ApiError("server", "internal_error", f"The engine serving {call.model.id!r} failed; please retry.")
            if not started_output:
                raise err from None
            yield Error(err)
        finally:
            self.meter.settle(
                owner=call.owner,
                model=call.model,
                ctx=call.ctx,
                endpoint=call.endpoint,
                stream=call.request.stream,
                outcome=outcome,
                started=call.started,
            )
