"""One access record per HTTP request: what the access log line and the request metrics say.

The middleware (`observe.middleware`) opens the record when a request arrives and makes it the
current one (a context variable, so the gateway can fill it in without being handed anything);
the gateway adds who asked (account and key ids, never the key), the model and the admitted call;
the record is closed when the response has ended. A request whose usage is settled after its
response (the client left mid-stream) is closed when that settlement runs, so its line carries
the final token counts and outcome.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from longcat.observe import metrics

log = logging.getLogger("longcat.access")

# An incoming x-request-id is kept when it is this: short, and nothing a log or header could trip on.
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Health checks and scrapes: counted in the metrics, logged only at DEBUG (they come every few seconds).
PROBES = frozenset({"/health", "/healthz", "/readyz", "/metrics"})


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def request_id_from(incoming: bytes | None) -> str | None:
    """The client's own request id, if it is sane (at most 128 of [A-Za-z0-9._:-])."""
    if incoming and _SANE_ID.fullmatch(incoming):
        return incoming.decode("ascii")
    return None


@dataclass(slots=True)
class Access:
    """What one request did, filled in as it goes."""

    request_id: str  # what the client got in x-request-id
    internal_id: str  # the id of the gateway's records (leases, usage): always the server's own
    method: str
    client: str
    started: float  # time.perf_counter() at arrival
    endpoint: str = metrics.UNMATCHED  # the route template
    status: int = 0
    account_id: int | None = None
    key_id: int | None = None
    model: str = metrics.NO_MODEL
    stream: bool | None = None
    error: str = ""  # the error code a refusal carried
    limit: str = ""  # which limit a 429 came from
    call: Any = None  # the gateway's admitted call (tokens, outcome), if any
    ended: float = 0.0
    _closed: bool = False

    def take_internal_id(self) -> str:
        """The id for one admitted call; a second call in the same request gets a fresh one."""
        rid, self.internal_id = self.internal_id, ""
        return rid or new_request_id()

    def response_ended(self) -> None:
        """The response is over: close now, or once the admitted call has settled."""
        self.ended = time.perf_counter()
        call = self.call
        if call is not None and call.permit is not None and not call.settled:
            call.on_settled = self.close
            return
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        call = self.call
        seconds = (self.ended or time.perf_counter()) - self.started
        ttft = tokens = None
        if call is not None:
            if call.first_token_at:
                ttft = call.first_token_at - self.started
            u = call.ctx.usage
            tokens = (u.input_tokens, u.output_tokens, u.cached_tokens)
        if self.status == 429:
            metrics.rate_limited(self.limit or "other")
        metrics.request_done(self.endpoint, self.model, self.status, seconds, ttft, tokens)
        level = logging.DEBUG if self.endpoint in PROBES else logging.INFO
        if log.isEnabledFor(level):
            # Made directly: `log.info` would also look up the caller's source line, a third of the cost.
            record = log.makeRecord(log.name, level, "", 0, f"{self.method} {self.endpoint} {self.status}", (), None,
                                    extra={"fields": self.fields(seconds, ttft)})
            log.handle(record)

    def fields(self, seconds: float, ttft: float | None) -> dict[str, Any]:
        """The access line's fields (what is unknown is left out)."""
        out: dict[str, Any] = {"request_id": self.request_id}
        call = self.call
        if call is not None and call.ctx.request_id != self.request_id:
            out["internal_id"] = call.ctx.request_id  # the usage record's id (the client chose its own)
        out["method"] = self.method
        out["endpoint"] = self.endpoint
        out["status"] = self.status
        if self.account_id is not None:
            out["account_id"] = self.account_id
            out["key_id"] = self.key_id
        if self.model != metrics.NO_MODEL:
            out["model"] = self.model
        if self.stream is not None:
            out["stream"] = self.stream
        if call is not None and call.outcome:  # an engine ran (a call refused by a limit did not)
            u = call.ctx.usage
            out["outcome"] = call.outcome
            out["input_tokens"] = u.input_tokens
            out["output_tokens"] = u.output_tokens
            out["cached_tokens"] = u.cached_tokens
            out["billed_tokens"] = call.billed
        if self.error:
            out["error"] = self.error
        if ttft is not None:
            out["ttft_ms"] = round(ttft * 1000, 1)
        out["latency_ms"] = round(seconds * 1000, 1)
        out["client"] = self.client
        return out


current: ContextVar[Access | None] = ContextVar("longcat_access", default=None)


def note(**fields: Any) -> None:
    """Set fields of the current request's record (nothing outside a request)."""
    acc = current.get()
    if acc is not None:
        for name, value in fields.items():
            setattr(acc, name, value)


def note_error(code: str) -> None:
    """The error code of the answer being sent (a refusal, a bad request)."""
    acc = current.get()
    if acc is not None:
        acc.error = code


def visible_request_id(fallback: str) -> str:
    """The id the client gets in x-request-id (for routes that repeat it in another header)."""
    acc = current.get()
    return acc.request_id if acc is not None else fallback
