"""Counting what each request cost, however it ended.

Engines keep `CallContext.usage` current while tokens flow; `Meter.settle` runs exactly once per
admitted request (from a `finally`), so a finished, failed, cut-off or shut-down request is
counted the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from longcat.canonical import Usage
from longcat.config import ModelConfig
from longcat.engines.base import CallContext
from longcat.store.accounts import KeyOwner

log = logging.getLogger("longcat.usage")

# How a request ended, as recorded.
OUTCOMES = ("ok", "length", "client_closed", "engine_error", "cancelled")


@dataclass(slots=True)
class Settled:
    request_id: str
    account_id: int
    key_id: int
    model: str
    endpoint: str
    stream: bool
    usage: Usage
    outcome: str
    latency_ms: int


class Meter:
    """Settles usage. Later layers (quota, usage records) subscribe through `listeners`."""

    def __init__(self) -> None:
        self.listeners: list = []

    def settle(
        self,
        *,
        owner: KeyOwner,
        model: ModelConfig,
        ctx: CallContext,
        endpoint: str,
        stream: bool,
        outcome: str,
        started: float,
    ) -> Settled:
        record = Settled(
            request_id=ctx.request_id,
            account_id=owner.account_id,
            key_id=owner.key_id,
            model=model.id,
            endpoint=endpoint,
            stream=stream,
            usage=Usage(ctx.usage.input_tokens, ctx.usage.output_tokens, ctx.usage.cached_tokens),
            outcome=outcome,
            latency_ms=int((time.perf_counter() - started) * 1000),
        )
        log.info(
            "usage request=%s account=%d key=%d model=%s endpoint=%s stream=%s in=%d out=%d cached=%d outcome=%s ms=%d",
            record.request_id,
            record.account_id,
            record.key_id,
            record.model,
            record.endpoint,
            record.stream,
            record.usage.input_tokens,
            record.usage.output_tokens,
            record.usage.cached_tokens,
            record.outcome,
            record.latency_ms,
        )
        for listener in self.listeners:
            listener(record)
        return record
