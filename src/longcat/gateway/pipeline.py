"""One request through the gateway: admit it, stream the engine's events, settle its usage.

`authenticate` finds the key's owner and charges the request to its requests-per-minute limits
at once, before the body is read, parsed or tokenized: a refused or malformed request costs its
sender a request like any other, and flooding the server with them meets 429 early. `admit`
checks the request against the model: a prompt whose length alone cannot fit is refused before
it is tokenized, and tokenizing waits its turn at a fair gate (per engine and per account).
`events` takes the rest of the rate-limit permit and the quota reservation as its first step,
runs the engine, and settles exactly once however the stream ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from longcat.canonical import (
    ApiError,
    ChatRequest,
    Error,
    Event,
    Finish,
    Limits,
    TextDelta,
    ThinkingDelta,
    ToolCallStart,
    collect,
)
from longcat.config import ModelConfig, Settings
from longcat.engines.base import CallContext, Engine, context_exceeded
from longcat.engines.catalog import Catalog
from longcat.engines.scheduler import FairScheduler
from longcat.gateway.auth import authenticate
from longcat.gateway.clock import SystemClock, beijing_day
from longcat.gateway.counters import Counters, MemoryCounters, RedisCounters
from longcat.gateway.limits import Permit, RateLimiter
from longcat.gateway.metering import UsageWriter, billed_tokens, make_record
from longcat.gateway.provenance import ReasoningMemory, keep_verified_reasoning
from longcat.gateway.quota import QuotaKeeper, Reservation
from longcat.gateway.replicas import ReplicaWatch
from longcat.observe import metrics
from longcat.observe.access import current as current_access
from longcat.observe.access import new_request_id
from longcat.store.accounts import AccountStore, KeyOwner
from longcat.store.usage import UsageRecord, UsageStore

log = logging.getLogger("longcat.gateway")

# What counts as the first token, for the time to first token.
_TOKEN_EVENTS = (TextDelta, ThinkingDelta, ToolCallStart)


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
    permit: Permit | None = None
    reservation: Reservation | None = None
    settled: bool = False
    task: asyncio.Task | None = None
    awaiting: bool = False  # the task is waiting for the engine's next event
    draining: bool = False
    first_token_at: float = 0.0  # time.perf_counter() of the engine's first token
    outcome: str = ""  # how it ended, once it has (see `events`)
    billed: int = 0  # what the quota was charged, once settled
    on_settled: Callable[[], None] | None = None  # called once settled (the access line)


class _ShuttingDown(Exception):
    """Raised inside `events` when the shutdown's grace period is over."""


def _count(n: int) -> str:
    """A count for a message: 1e308 as a client may send it is 309 digits long."""
    return f"{n:,}" if n < 10**15 else f"a number of {len(str(n))} digits"


class Gateway:
    def __init__(
        self,
        settings: Settings,
        accounts: AccountStore,
        catalog: Catalog,
        usage: UsageStore,
        counters: Counters | None = None,
        clock=None,
        secret: bytes = b"",
    ) -> None:
        self.settings = settings
        # The shape a request may have (decoders check it before building anything, admission again).
        self.limits = Limits(settings.max_messages, settings.max_tools, settings.max_content_blocks)
        self.accounts = accounts
        self.catalog = catalog
        self.usage = usage
        self.clock = clock or SystemClock()
        self.counters = counters or MemoryCounters()
        self.limiter = RateLimiter(settings, self.counters)
        self.quota = QuotaKeeper(settings, self.counters, usage)
        self.writer = UsageWriter(usage, on_committed=self._recorded)
        secret = secret or settings.resolved_secret_key()
        self.reasoning = ReasoningMemory(secret, getattr(self.counters, "redis", None), settings.redis_prefix)
        self._tag_key = hmac.new(secret, b"longcat account tag v1", hashlib.sha256).digest()
        self._background: set[asyncio.Task] = set()
        self._active: dict[str, Call] = {}  # admitted requests holding a permit, not yet settled
        self._heartbeat: asyncio.Task | None = None
        self._replica_watch: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False  # a shutdown was asked for
        self._ending = False  # its grace period is over: requests still running are ended
        self._drainer: asyncio.Task | None = None
        self._gates: dict[str, FairScheduler] = {}  # per model: prompts being tokenized

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.writer.start()
        self._heartbeat = asyncio.create_task(self._renew_leases(), name="lease-heartbeat")
        if isinstance(self.counters, RedisCounters):
            watch = ReplicaWatch(self.counters, self.usage, self.settings.replica_timeout)
            await watch.beat()
            self._replica_watch = asyncio.create_task(watch.run(), name="replica-watch")

    async def _renew_leases(self) -> None:
        """Keep the leases of live requests from expiring (they only expire when a replica dies),
        and let the in-process counters forget what has expired."""
        interval = max(1.0, self.settings.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            now = self.clock.now()
            for call in list(self._active.values()):
                try:
                    slots = self.limiter.slot_keys(call.permit) if call.permit else []
                    quota_key = self.quota.key_of(call.reservation) if call.reservation else None
                    await self.counters.renew(slots, quota_key, call.ctx.request_id, now, self.settings.lease_seconds)
                except Exception:
                    log.exception("renewing the leases of %s failed", call.ctx.request_id)
            if isinstance(self.counters, MemoryCounters):
                recent = {beijing_day(now), beijing_day(now - 86400)}
                self.counters.prune(now, lambda key, days=recent: key.rsplit(":", 1)[-1] in days)

    async def close(self, wait: float = 5.0) -> None:
        """Let requests that are still ending settle, write what is queued, then stop.

        At shutdown the server cancels requests that outlive the grace period; their settlement
        runs a moment later, so wait for every admitted request to be settled first."""
        deadline = asyncio.get_running_loop().time() + wait
        while self._active and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for task in (self._heartbeat, self._replica_watch, self._drainer):
            if task is not None:
                task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.writer.close()
        await self.counters.close()

    async def authenticate(self, headers: Mapping[str, str]) -> KeyOwner:
        """The key's owner, with this request already charged to its request limits (429 if
        over them): every authenticated request counts, whatever becomes of it later."""
        owner = await authenticate(self.accounts, headers)
        acc = current_access.get()
        if acc is not None:
            acc.account_id, acc.key_id = owner.account_id, owner.key_id
        try:
            await self.limiter.charge_request(owner, self.clock.now())
        except ApiError:
            _note_limit("rpm")
            raise
        return owner

    @property
    def draining(self) -> bool:
        """A shutdown was asked for: this process should get no new requests."""
        return self._draining

    def mark_draining(self) -> None:
        """The server is stopping (its lifespan is ending) without a signal having said so."""
        self._draining = True

    def account_tag(self, account_id: int) -> str:
        """A stable, opaque name of the account for upstreams (`send_user`, `cache_salt`): the
        same on every replica sharing the secret, and it tells nothing of the account."""
        return "lc-" + hmac.new(self._tag_key, str(account_id).encode(), hashlib.sha256).hexdigest()[:24]

    async def count_tokens(self, owner: KeyOwner, request: ChatRequest) -> int:
        """The prompt's tokens with the serving engine's tokenizer, through the same gate."""
        self._note_model(request.model)
        model, engine = self.catalog.route(request.model)
        return await self._tokenize(model, engine, request, str(owner.account_id), lambda: engine.count_tokens(request))

    async def _tokenize(self, model: ModelConfig, engine: Engine, request: ChatRequest, tenant: str, count):
        """Run `count()` (a tokenization) for `tenant`: refused at once if the prompt's size
        alone cannot fit the context, else when the engine's tokenizer gate lets it in.

        A tokenization in progress cannot be interrupted, so when the client leaves it runs on,
        holding its place at the gate until it is really done: abandoning requests cannot pile
        up work behind the gate's back."""
        self.limits.check_counts(len(request.messages), len(request.tools))
        at_least = engine.min_prompt_tokens(request)
        if at_least >= model.context_window:
            raise context_exceeded(model, at_least, at_least=True)
        if engine.measure_is_estimate:
            return await count()  # arithmetic on the request: nothing to wait for
        gate = self._gate(model, engine)
        try:
            await gate.acquire(tenant)
        except ApiError as err:
            if err.status == 429:
                _note_limit("queue")
            raise
        work = asyncio.ensure_future(count())
        work.add_done_callback(lambda _done: gate.release(tenant))
        return await asyncio.shield(work)

    def _gate(self, model: ModelConfig, engine: Engine) -> FairScheduler:
        gate = self._gates.get(model.id)
        if gate is None:
            # Waiting to be counted is cheap (no prompt is held twice), so the queue is longer
            # than the engine's; one account may take a quarter of it.
            limit = 4 * self.settings.engine_queue_limit
            gate = self._gates[model.id] = FairScheduler(
                slots=max(1, engine.measure_slots),
                max_waiting=limit,
                per_tenant=self.settings.account_tokenize_concurrency,
                per_tenant_waiting=max(1, limit // 4),
                what=f"the tokenizer of {model.id!r}",
            )
        return gate

    async def admit(self, owner: KeyOwner, request: ChatRequest, endpoint: str) -> Call:
        """Check the request against the model's real limits; raises `ApiError` (never billed)."""
        acc = self._note_model(request.model)
        if acc is not None:
            acc.stream = request.stream
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
        rid = acc.take_internal_id() if acc is not None else new_request_id()
        ctx = CallContext(request_id=rid, tenant=str(owner.account_id), account_tag=self.account_tag(owner.account_id))
        # Only reasoning the platform knows a model wrote for this account reaches the engine.
        await keep_verified_reasoning(request, owner.account_id, self.reasoning)
        await self._tokenize(model, engine, request, ctx.tenant, lambda: engine.measure(request, ctx))
        # A prompt that does not fit is the error to report first: a smaller max_tokens cannot fix it.
        if ctx.prompt_tokens >= model.context_window:
            raise context_exceeded(model, ctx.prompt_tokens)
        if request.max_tokens > model.max_output:
            raise ApiError(
                "invalid_request",
                "invalid_parameter",
                f"max_tokens is {_count(request.max_tokens)}, but the model {model.id!r} can write at most "
                f"{model.max_output:,} tokens per reply.",
                param="max_tokens",
            )
        call = Call(owner, model, engine, request, ctx, endpoint, time.perf_counter())
        if acc is not None:
            acc.call = call
        return call

    def _note_model(self, model_id: str):
        """Name the request's model in its access record: a catalog id, or `unknown`."""
        acc = current_access.get()
        if acc is not None:
            acc.model = model_id if model_id in self.catalog.models else metrics.UNKNOWN_MODEL
        return acc

    async def admit_and_collect(self, owner: KeyOwner, request: ChatRequest, endpoint: str):
        """`admit`, then the whole reply collected (non-streaming): (the call, the reply). One
        awaitable, so a route watches the client's connection once for both."""
        call = await self.admit(owner, request, endpoint)
        return call, await collect(self.events(call))

    async def _acquire(self, call: Call) -> None:
        """Rate limits, then the quota. Raises 429 / 403 `ApiError`s, holding nothing if it does.

        The permit and reservation are named before anything is taken, so that whatever stops
        this half-way (a refusal, or a cancellation arriving after a counter already took its
        share) gives back, by lease, all that might be held: giving back what was never taken is
        harmless."""
        now = self.clock.now()
        prompt = call.ctx.prompt_tokens or 0
        rid = call.ctx.request_id
        call.permit = self.limiter.permit(call.owner, rid)
        call.reservation = self.quota.pending(call.owner, rid, now)
        self._active[rid] = call
        step = "tpm_concurrency"
        try:
            await self.limiter.take(call.permit, prompt, now)
            step = "quota"
            await self.quota.reserve(call.reservation, prompt, call.request.max_tokens or 1, now)
        except BaseException as exc:
            if isinstance(exc, ApiError):
                if step == "quota":
                    metrics.quota_refused()
                else:
                    _note_limit(step)
            self._active.pop(rid, None)
            self._in_background(self._give_back(call.permit, call.reservation, now))
            call.permit = call.reservation = None
            raise
        # The output budget never exceeds what the quota can still pay for.
        call.request.max_tokens = call.reservation.out_budget
        metrics.inflight(call.model.id, 1)

    async def _give_back(self, permit: Permit, reservation: Reservation, now: float) -> None:
        try:
            await self.quota.settle(reservation, 0)
            await self.limiter.release(permit, 0, now)
        except Exception:
            log.exception("giving back the limits of %s failed", permit.lease)

    def _in_background(self, coro) -> asyncio.Task:
        """Run `coro` to the end even if the request that started it is cancelled."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def events(self, call: Call) -> AsyncIterator[Event]:
        """The engine's events, metered. An `ApiError` before the first event propagates (a
        plain HTTP error, not billed); a failure after it becomes an `Error` event."""
        await self._acquire(call)
        outcome = "cancelled"
        delivered = False
        first_token = False
        thinking: list[str] = []  # remembered when the reply is complete (see gateway.provenance)
        stream = call.engine.stream(call.request, call.ctx)
        try:
            while True:
                if self._ending:
                    raise _ShuttingDown
                # While the engine is awaited, a shutdown may interrupt it (see `_drain`).
                call.task = asyncio.current_task()
                call.awaiting = True
                try:
                    event = await anext(stream)
                except StopAsyncIteration:
                    break
                finally:
                    call.awaiting = False
                if not first_token and isinstance(event, _TOKEN_EVENTS):
                    first_token = True
                    call.first_token_at = time.perf_counter()
                if isinstance(event, ThinkingDelta):
                    thinking.append(event.text)
                elif isinstance(event, Finish):
                    outcome = "length" if event.reason == "length" else "ok"
                    if thinking:
                        await self._remember(call, "".join(thinking))
                    # Commit the usage before the client learns the response is complete.
                    await self._settle(call, outcome, delivered=True, durable=True)
                elif isinstance(event, Error):
                    # Nothing follows an error, and a consumer may stop reading at it: settle now.
                    outcome = "engine_error"
                    await self._settle(call, outcome, delivered=delivered and call.request.stream, durable=True)
                yield event
                delivered = True
        except (asyncio.CancelledError, _ShuttingDown) as exc:
            if isinstance(exc, asyncio.CancelledError) and not call.draining:
                outcome = "client_closed"
                raise
            if isinstance(exc, asyncio.CancelledError):
                task = asyncio.current_task()
                while task is not None and task.cancelling():
                    task.uncancel()
            # The server is stopping and this request outlived the grace period: end it properly,
            # with the format's error, instead of cutting the connection.
            outcome = "shutdown"
            err = ApiError("overloaded", "overloaded", "The server is shutting down; please retry the request.", headers={"Retry-After": "1"})
            await self._settle(call, outcome, delivered=delivered and call.request.stream, durable=True)
            if not delivered:
                raise err from None
            yield Error(err)
        except GeneratorExit:
            outcome = "client_closed"
            raise
        except ApiError as err:
            outcome = "engine_error"
            if err.status == 429:
                _note_limit("queue")  # one account's share of the engine's queue
            if not delivered:
                raise
            yield Error(err)
        except Exception:
            outcome = "engine_error"
            log.exception("engine %s failed on request %s", call.model.id, call.ctx.request_id)
            err = ApiError("server", "internal_error", f"The engine serving {call.model.id!r} failed; please retry.")
            if not delivered:
                raise err from None
            yield Error(err)
        finally:
            call.task = None
            call.outcome = call.outcome or outcome
            if not call.settled:
                # We may be inside a cancellation: settle on a task of its own.
                # A non-streaming client receives nothing until the end, so nothing was delivered.
                self._in_background(self._settle(call, outcome, delivered=delivered and call.request.stream, durable=False))

    async def _remember(self, call: Call, thinking: str) -> None:
        try:
            await self.reasoning.remember(call.owner.account_id, thinking)
        except Exception:  # the reply still stands; a replay of it will just not be recognised
            log.exception("remembering the reasoning of %s failed", call.ctx.request_id)

    def request_shutdown(self, grace: float) -> None:
        """Called from a signal handler: in `grace` seconds, end the requests still running."""
        if self._loop is not None and not self._draining:
            self._draining = True
            self._loop.call_soon_threadsafe(self._start_drain, grace)

    def _start_drain(self, grace: float) -> None:
        self._drainer = asyncio.get_running_loop().create_task(self._drain(grace), name="drain")

    async def _drain(self, grace: float) -> None:
        """After the grace period: requests end at their next event, and those waiting on their
        engine are interrupted there, until none is left."""
        await asyncio.sleep(grace)
        self._ending = True
        while self._active:
            for call in list(self._active.values()):
                if call.awaiting and call.task is not None and not call.task.done():
                    call.draining = True
                    call.task.cancel()
            await asyncio.sleep(0.1)

    async def _settle(self, call: Call, outcome: str, *, delivered: bool, durable: bool) -> None:
        """Bill the quota, charge the limiter, write the record; `durable` waits for the disk.

        Runs once per request. The booking itself runs on a task of its own, so that a
        cancellation of the request (the client leaving, a shutdown) cannot stop it half-way."""
        if call.settled:
            return
        call.settled = True
        self._active.pop(call.ctx.request_id, None)
        now = self.clock.now()
        billed = billed_tokens(call.ctx, outcome, delivered)
        if call.reservation is not None:
            # Never more output than the request allowed: an engine that ignores max_tokens is
            # the engine's fault, not the client's.
            billed = min(billed, call.ctx.usage.input_tokens + call.reservation.out_budget)
        record = make_record(
            ctx=call.ctx,
            account_id=call.owner.account_id,
            key_id=call.owner.key_id,
            model=call.model.id,
            endpoint=call.endpoint,
            stream=call.request.stream,
            outcome=outcome,
            billed=billed,
            latency_ms=int((time.perf_counter() - call.started) * 1000),
            day=call.reservation.day if call.reservation else None,
            now=now,
            base_quota=call.reservation.base if call.reservation else self.quota.base_for(call.owner.daily_quota),
        )
        call.outcome, call.billed = outcome, billed
        metrics.inflight(call.model.id, -1)
        if call.on_settled is not None:
            call.on_settled()  # the access line, deferred until now (see observe.access)
        booking = self._in_background(self._book(call, record, now, durable))
        if durable:
            await asyncio.shield(booking)

    async def _book(self, call: Call, record, now: float, durable: bool) -> None:
        try:
            if call.reservation is not None:
                await self.quota.settle(call.reservation, record.billed_tokens)
            if call.permit is not None:
                await self.limiter.release(call.permit, call.ctx.usage.output_tokens, now)
        except Exception:
            log.exception("settling counters for %s failed", call.ctx.request_id)
        finally:
            if durable:
                await self.writer.commit(record)
            else:
                self.writer.submit(record)

    async def _recorded(self, records: list[UsageRecord]) -> None:
        """A batch of records is on disk: their settlements need no undoing should this replica
        die now (see gateway/replicas.py)."""
        await self.counters.quota_recorded(
            [(self.quota.key_for(r.account_id, r.day), r.request_id, r.billed_tokens) for r in records if r.billed_tokens > 0]
        )


def _note_limit(scope: str) -> None:
    """Which limit refused the current request with a 429 (its access record and metrics)."""
    acc = current_access.get()
    if acc is not None:
        acc.limit = scope
