"""The ASGI application: wires settings, storage, the catalog and the gateway to the routes."""

from __future__ import annotations

import asyncio
import hmac
import logging
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from longcat.api import anthropic as anthropic_routes
from longcat.api import openai as openai_routes
from longcat.api import platform as platform_routes
from longcat.api import responses as responses_routes
from longcat.api.asgi import BodyReader, JSONBody
from longcat.canonical import ApiError
from longcat.config import Settings
from longcat.console.routes import routes as console_routes
from longcat.console.state import Console
from longcat.docs.routes import routes as docs_routes
from longcat.engines.catalog import Catalog
from longcat.gateway.clock import make_clock
from longcat.gateway.counters import MemoryCounters, RedisCounters
from longcat.gateway.feedback import FeedbackDesk
from longcat.gateway.pipeline import Gateway
from longcat.gateway.signing import Signer
from longcat.httpkit import SecurityHeaders
from longcat.observe import metrics
from longcat.observe.access import note_error
from longcat.observe.health import readiness
from longcat.observe.middleware import AccessMiddleware, tag_routes
from longcat.protocols.envelope import error_body
from longcat.store.accounts import AccountStore
from longcat.store.db import create_engine, create_schema
from longcat.store.keycache import follow_changes, publish_change
from longcat.store.responses import ResponseStore
from longcat.store.usage import UsageStore

log = logging.getLogger("longcat.app")


def error_response(request: Request, err: ApiError) -> Response:
    """The error in the format the caller speaks, judged by the path it called."""
    note_error(err.code)
    return JSONBody(error_body(request.url.path, err), status_code=err.status, headers=err.headers)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err = ApiError("not_found", "not_found", f"There is no route {request.method} {request.url.path}.")
    elif exc.status_code == 405:
        err = ApiError(
            "invalid_request", "method_not_allowed", f"{request.method} is not allowed on {request.url.path}.", status=405
        )
    else:
        err = ApiError("invalid_request", "invalid_request", str(exc.detail), status=exc.status_code)
    return error_response(request, err)


async def _unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ClientDisconnect):
        # The client left while sending its body: nothing to answer, nothing worth a traceback.
        log.info("client left during the upload of %s %s", request.method, request.url.path)
        return Response(status_code=400)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(request, ApiError("server", "internal_error", "The server failed unexpectedly; please retry."))


async def health(request: Request) -> Response:
    catalog: Catalog = request.app.state.catalog
    return JSONBody({"status": "ok", "models": sorted(catalog.models)})


class App(Starlette):
    """The platform's Starlette app, with the access middleware and the security headers outside
    everything, so that even the answer of the last-resort error handler is counted, logged,
    carries its x-request-id and the security headers."""

    https = False
    trusted_proxies = ""

    def build_middleware_stack(self):
        return AccessMiddleware(SecurityHeaders(super().build_middleware_stack(), https=self.https), self.trusted_proxies)


async def healthz(request: Request) -> Response:
    """The process answers (liveness): nothing else is checked."""
    return JSONBody({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Whether this process should get traffic: 200, or 503 naming each check that failed."""
    state = request.app.state
    ready, body = await readiness(state.db, state.redis, state.catalog.engines, state.gateway.draining)
    return JSONBody(body, status_code=200 if ready else 503, headers={"Cache-Control": "no-store"})


async def metrics_page(request: Request) -> Response:
    """Prometheus metrics on the main port: only with `metrics_token`, as a Bearer token."""
    token: str = request.app.state.settings.metrics_token
    if not token:
        raise HTTPException(404)
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        err = ApiError("authentication", "invalid_api_key", "/metrics needs the metrics token: Authorization: Bearer <metrics_token>.")
        return error_response(request, err)
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)


def create_app(settings: Settings) -> Starlette:
    db = create_engine(settings.resolved_database_url)
    accounts = AccountStore(db)
    usage = UsageStore(db)
    catalog = Catalog(settings)
    counters = RedisCounters(settings.redis_url, settings.redis_prefix) if settings.redis_url else MemoryCounters()
    clock = make_clock(settings)
    stored = ResponseStore(db, ttl_days=settings.responses_ttl_days, now=clock.now)
    secret = settings.resolved_secret_key()
    gateway = Gateway(settings, accounts, catalog, usage, counters, clock, secret=secret)
    redis = getattr(counters, "redis", None)
    metrics.watch(catalog.engines)
    if redis is not None:
        # Every replica forgets the keys it trusts when one of them changes a key or an account.
        async def announce() -> None:
            await publish_change(redis, settings.redis_prefix)

        accounts.on_change = announce

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await create_schema(db)
        await catalog.start()
        await gateway.start()
        follower = asyncio.create_task(follow_changes(redis, settings.redis_prefix, accounts.keys)) if redis is not None else None
        sweeper = asyncio.create_task(stored.sweep_forever(), name="responses-retention") if stored.ttl > 0 else None
        sampler = asyncio.create_task(metrics.sample_forever(), name="metrics-sampler") if metrics.MULTIPROCESS else None
        metrics_server = metrics.serve(settings.metrics_host, settings.metrics_port) if settings.metrics_port else None
        log.info("serving %d model(s): %s", len(catalog.models), ", ".join(catalog.models))
        try:
            yield
        finally:
            gateway.mark_draining()  # /readyz says so from now on
            for task in (follower, sweeper, sampler):
                if task is not None:
                    task.cancel()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            await gateway.close()
            await catalog.close()
            await db.dispose()

    # The router tries routes in order: the wire API's first, as nearly every request is one.
    routes = [
        *openai_routes.routes(),
        *anthropic_routes.routes(),
        *responses_routes.routes(),
        Route("/health", health, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        *platform_routes.routes(),
        *docs_routes(),
        *console_routes(),
    ]
    tag_routes(routes)
    app = App(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
    )
    app.https = settings.public_url.lower().startswith("https://")
    app.trusted_proxies = settings.trusted_proxies
    app.state.settings = settings
    app.state.secret_key = secret
    app.state.signer = Signer(secret)
    app.state.db = db
    app.state.redis = redis
    app.state.accounts = accounts
    app.state.catalog = catalog
    app.state.gateway = gateway
    app.state.usage = usage
    app.state.responses = stored
    app.state.bodies = BodyReader(
        idle_timeout=settings.body_timeout, max_bytes=settings.max_body_mb * 2**20, max_depth=settings.max_json_depth
    )
    app.state.feedback = FeedbackDesk(settings, gateway.quota)
    app.state.console = Console.build(settings, gateway, app.state.feedback, app.state.secret_key)
    app.state.sessions = app.state.console.sessions  # lets /api/v1/usage and /feedback accept a session too
    return app
