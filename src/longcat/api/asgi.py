"""ASGI plumbing the routes share: JSON bodies, SSE streams, and noticing a client that left.

Engines must stop working for a client that has gone, even while they are silent (queued, or
reading a long prompt), so we watch the connection for `http.disconnect` ourselves instead of
waiting for the next write to fail.

Bodies are read with a bound on their size, on the silence between their chunks and on their
whole time; large ones are read a few at a time (one per account), and parsed and decoded off
the event loop, so a handful of huge or slow uploads can neither fill the memory nor stall
everyone else's requests.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from longcat import jsonutil
from longcat.canonical import ApiError
from longcat.engines.scheduler import FairScheduler
from longcat.protocols.fields import MAX_DEPTH, parse_json_object

MAX_BODY_BYTES = 32 * 1024 * 1024  # the default of the `max_body_mb` setting
LARGE_BODY_BYTES = 1024 * 1024  # bodies above this take one of few "large body" slots
PARSE_OFF_LOOP_BYTES = 256 * 1024  # bodies above this are parsed on a worker thread

def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to trim


_malloc_trim = _load_malloc_trim()

T = TypeVar("T")
_END = object()


def dumps(obj: Any) -> bytes:
    # A lone surrogate that slipped through (e.g. from an upstream) must not fail a reply.
    return jsonutil.dumps(obj)


# The one security header the wire API's answers carry (see httpkit.SecurityHeaders): set here,
# where the response is made, so the hot path has no middleware in the way.
NOSNIFF = (b"x-content-type-options", b"nosniff")


class JSONBody(Response):
    media_type = "application/json"

    def init_headers(self, headers: Any = None) -> None:
        super().init_headers(headers)
        self.raw_headers.append(NOSNIFF)

    def render(self, content: Any) -> bytes:
        return dumps(content)


@dataclass(slots=True, frozen=True)
class ParsedBody:
    data: dict[str, Any]
    size: int  # bytes on the wire: what decides whether decoding it moves off the event loop


class BodyReader:
    """Reads and parses JSON request bodies for the routes (one per app, on `app.state`).

    A body may go `idle_timeout` seconds without a byte, and take six times that in all; it may
    hold at most `max_bytes` (else 413) and nest at most `max_depth` levels (else 400)."""

    def __init__(
        self,
        idle_timeout: float = 10.0,
        large_at_once: int = 4,
        max_bytes: int = MAX_BODY_BYTES,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.total_timeout = 6 * idle_timeout
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        # Memory for bodies in flight stays near `large_at_once` x `max_bytes`, whatever the load.
        self.large = FairScheduler(
            slots=large_at_once, max_waiting=64, per_tenant=1, per_tenant_waiting=1, what="reading large request bodies"
        )
        self._trim: asyncio.TimerHandle | None = None
        self._parsing = asyncio.Lock()

    def _too_large(self) -> ApiError:
        return ApiError(
            "invalid_request",
            "request_too_large",
            f"The request body is larger than {self.max_bytes / 2**20:g} MiB.",
            status=413,
        )

    async def json(self, request: Request, tenant: str) -> ParsedBody:
        """The body as a JSON object; `tenant` (the account) waits its turn for a large one."""
        declared = request.headers.get("content-length")
        size = int(declared) if declared and declared.isdigit() else 0
        if size > self.max_bytes:
            raise self._too_large()
        deadline = asyncio.get_running_loop().time() + self.total_timeout
        held = False
        try:
            if size > LARGE_BODY_BYTES:
                await self._take_large(tenant)
                held = True
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await self._receive(request, deadline)
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    raise self._too_large()
                if size > LARGE_BODY_BYTES and not held:
                    await self._take_large(tenant)
                    held = True
                chunks.append(chunk)
                more = message.get("more_body", False)
            raw = b"".join(chunks)
            del chunks
            if len(raw) > PARSE_OFF_LOOP_BYTES:
                # One at a time: the parser holds the interpreter's lock while it runs, so two
                # parses at once would keep the event loop waiting for both.
                async with self._parsing:
                    return ParsedBody(await asyncio.to_thread(parse_json_object, raw, self.max_depth), len(raw))
            return ParsedBody(parse_json_object(raw, self.max_depth), len(raw))
        finally:
            if held:
                self.large.release(tenant)
                self._trim_soon()

    async def _take_large(self, tenant: str) -> None:
        """One of the few places for a large body, waiting no longer than a body may be silent."""
        try:
            await asyncio.wait_for(self.large.acquire(tenant), self.idle_timeout)
        except TimeoutError:
            raise ApiError(
                "overloaded", "overloaded", "The server is busy receiving other large requests; retry shortly.",
                headers={"Retry-After": "2"},
            ) from None

    def _trim_soon(self) -> None:
        """Once no large body has been in flight for a moment, hand the freed memory back to the
        system: glibc keeps the arenas of big parses otherwise, and the process stays bloated."""
        if self._trim is not None or _malloc_trim is None:
            return

        def trim() -> None:
            self._trim = None
            if self.large.busy:
                self._trim_soon()
            else:
                asyncio.get_running_loop().run_in_executor(None, _malloc_trim, 0)

        # Long enough for a refused request to have let go of its body and what was made from it.
        self._trim = asyncio.get_running_loop().call_later(2.0, trim)

    async def _receive(self, request: Request, deadline: float) -> dict[str, Any]:
        left = deadline - asyncio.get_running_loop().time()
        try:
            message = await asyncio.wait_for(request.receive(), max(0.0, min(self.idle_timeout, left)))
        except TimeoutError:
            why = (
                f"nothing came for {self.idle_timeout:g} seconds"
                if left > self.idle_timeout
                else f"it took more than {self.total_timeout:g} seconds"
            )
            raise ApiError(
                "invalid_request",
                "request_timeout",
                f"The request body stopped arriving: {why}.",
                status=408,
                headers={"Connection": "close"},
            ) from None
        if message["type"] == "http.disconnect":
            # The client left mid-upload: answered like any bad request (to nobody), not as a crash.
            raise ApiError("invalid_request", "invalid_json", "The client disconnected before the request body was complete.")
        return message


async def read_json(request: Request, tenant: str) -> ParsedBody:
    """The request's JSON object body, through the app's `BodyReader`."""
    reader: BodyReader = request.app.state.bodies
    return await reader.json(request, tenant)


async def decode_body(body: ParsedBody, decode: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`decode(*args)`, on a worker thread when the body was large: decoding a hundred thousand
    messages takes long enough to stall every other request on the event loop."""
    if body.size > PARSE_OFF_LOOP_BYTES:
        return await asyncio.to_thread(decode, *args, **kwargs)
    return decode(*args, **kwargs)


class Disconnected(Exception):
    """The client closed the connection while we were working for it."""


class _Watch:
    """What `cancel_on_disconnect` yields: whether the client has gone."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    def check(self) -> None:
        """Raise `Disconnected` if the client has gone (for code between two awaits)."""
        if self.gone.is_set():
            raise Disconnected


@asynccontextmanager
async def cancel_on_disconnect(receive: Receive) -> AsyncIterator[_Watch]:
    """Run the body of the `async with`; if the client disconnects meanwhile, cancel it and
    raise `Disconnected` instead. The request body must already have been read.

    One `cancel()` is not always enough: a library awaiting with `asyncio.wait_for` can swallow a
    cancellation that arrives just as its own wait ends (Python 3.11). So the watcher cancels
    again until the body has really stopped."""
    task = asyncio.current_task()
    assert task is not None
    watch = _Watch()
    stopped = False

    async def watcher() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        watch.gone.set()
        while not stopped:
            task.cancel()
            await asyncio.sleep(0.05)

    watching = asyncio.create_task(watcher())
    try:
        yield watch
    except asyncio.CancelledError:
        if not watch.gone.is_set():
            raise
        stopped = True
        while task.cancelling():
            task.uncancel()
        raise Disconnected from None
    finally:
        stopped = True
        watching.cancel()


class EventStream:
    """An SSE response whose status is decided by the first frame.

    `frames` is an async iterator of ready-to-send byte frames. If it raises `ApiError` before
    its first frame (e.g. the engine is overloaded), the client gets a normal JSON error with the
    right status; after that, errors are the frame producer's business (an error event).
    """

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        on_error: Callable[[ApiError], Response],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.frames = frames
        self.on_error = on_error
        self.headers = headers or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with cancel_on_disconnect(receive) as watch:
                try:
                    first = await anext(self.frames, None)
                except ApiError as err:
                    await self.on_error(err)(scope, receive, send)
                    return
                watch.check()
                headers = [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    NOSNIFF,
                ] + [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                if first is not None:
                    await send({"type": "http.response.body", "body": first, "more_body": True})
                async for frame in self.frames:
                    watch.check()
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (Disconnected, OSError):
            return  # nobody is listening any more; the engine was cancelled with the frames
        finally:
            await self.frames.aclose()


async def until_disconnect(receive: Receive, work: Awaitable[Any]) -> Any:
    """Await `work`; if the client leaves first, cancel it and raise `Disconnected`."""
    async with cancel_on_disconnect(receive):
        return await work


_EVENT_LINES: dict[str, bytes] = {}  # "event: <name>\n" of the few event names the formats use


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, (bytes, str)) else dumps(data)
    if isinstance(payload, str):
        payload = payload.encode()
    if not event:
        return b"data: " + payload + b"\n\n"
    head = _EVENT_LINES.get(event)
    if head is None:
        head = f"event: {event}\n".encode()
        if len(_EVENT_LINES) < 64:
            _EVENT_LINES[event] = head
    return head + b"data: " + payload + b"\n\n"


async def with_keepalive(items: AsyncIterator[T], interval: float) -> AsyncIterator[T | None]:
    """`items`, plus a `None` each time `interval` seconds pass without one (0 turns that off).

    The items are pulled by one task of their own, which a timeout never cancels (cancelling a
    pending `anext` would abort the engine's generator mid-step), and handed over through a short
    queue: one task per stream, not one per item. That task is cancelled only when the consumer
    stops early, and the source is then closed.
    """
    if interval <= 0:
        async for item in items:
            yield item
        return
    it = aiter(items)
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=64)

    async def pump() -> None:
        try:
            async for item in it:
                await queue.put((0, item))
        except BaseException as exc:  # handed to the consumer, which raises it
            if isinstance(exc, asyncio.CancelledError):
                raise
            await queue.put((2, exc))
            return
        await queue.put((1, None))

    producer = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            try:
                kind, value = queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    async with asyncio.timeout(interval):
                        kind, value = await queue.get()
                except TimeoutError:
                    yield None
                    continue
            if kind == 1:
                return
            if kind == 2:
                raise value
            yield value
    finally:
        if not producer.done():
            producer.cancel()
        await asyncio.wait({producer})
        if not producer.cancelled():
            producer.exception()  # retrieved, so asyncio does not log it as lost
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
