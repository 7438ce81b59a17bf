"""Prometheus metrics: what the platform counts, and the text a scrape gets.

In one process the metrics live in this module's registry, with the process collectors and a
collector that reads the engines' load (queue, slots, upstream replicas) at scrape time. With
several worker processes (`PROMETHEUS_MULTIPROC_DIR` set before they start) each worker writes
its numbers to files in that directory and a scrape of any worker adds them all up
(prometheus-client's multiprocess mode); the engines' load is then sampled into gauges by each
worker every `SAMPLE_INTERVAL` seconds, since a scrape reaches only one of them.

Label values are bounded: an endpoint is a route template, a model is a catalog id (anything
else a client names is `unknown`), a replica is the host:port of a configured base URL. No
account, key or raw path is ever a label.

The hooks (`request_done`, `inflight`, `rate_limited`, ...) are on the hot path: each is a few
dictionary look-ups and additions, nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("longcat.metrics")

# prometheus-client chooses between in-memory and file-backed values when it is imported, from
# this variable: the two must agree, so it is read once, here, the same way.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
CONTENT_TYPE = CONTENT_TYPE_LATEST
SAMPLE_INTERVAL = 1.0
# The model label of a request that named no model the catalog knows, or none at all.
UNKNOWN_MODEL = "unknown"
NO_MODEL = "none"
UNMATCHED = "unmatched"  # the endpoint label of a path no route serves

# No `_created` series beside each counter and histogram: they double a scrape and say little.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUESTS = Counter(
    "longcat_requests", "HTTP requests answered, by route template, model and status.",
    ["endpoint", "model", "status"], registry=REGISTRY,
)
DURATION = Histogram(
    "longcat_request_duration_seconds", "Time from a request's arrival to the end of its response (a whole stream).",
    ["endpoint", "model"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
TTFT = Histogram(
    "longcat_time_to_first_token_seconds", "Time from a request's arrival to the engine's first token.",
    ["endpoint", "model"], buckets=_TTFT_BUCKETS, registry=REGISTRY,
)
TOKENS = Counter(
    "longcat_tokens", "Tokens processed: input (the prompt, cached part included), output, cached (input served from a cache).",
    ["model", "kind"], registry=REGISTRY,
)
INFLIGHT = Gauge(
    "longcat_inflight_requests", "Admitted requests running on an engine.",
    ["model"], multiprocess_mode="livesum", registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "longcat_rate_limited", "Requests refused with 429, by the limit that refused them.",
    ["scope"], registry=REGISTRY,
)
QUOTA_REFUSED = Counter("longcat_quota_refused", "Requests refused because the account's daily quota is spent.", registry=REGISTRY)
UPSTREAM = Counter(
    "longcat_upstream_requests", "Requests sent to upstream replicas, by what became of the attempt.",
    ["model", "replica", "outcome"], registry=REGISTRY,
)
USAGE_WRITE = Histogram(
    "longcat_usage_write_seconds", "Time to write one batch of usage records to the database.",
    buckets=_WRITE_BUCKETS, registry=REGISTRY,
)

# The engines' load: (name, help, labels). Read at scrape time in one process (`EngineCollector`),
# sampled into the gauges below by each worker in multiprocess mode (`sample_forever`).
_LOAD = {
    "longcat_engine_queue_depth": ("Requests waiting for a slot of the embedded engine.", ("model",), "livesum"),
    "longcat_engine_slots_busy": ("Slots of the embedded engine generating a reply.", ("model",), "livesum"),
    "longcat_upstream_inflight": ("Requests in flight to each upstream replica.", ("model", "replica"), "livesum"),
    "longcat_upstream_healthy": ("1 while an upstream replica is considered healthy.", ("model", "replica"), "livemin"),
    "longcat_upstream_circuit_open": ("1 while requests are kept away from an upstream replica.", ("model", "replica"), "livemax"),
}

_engines: Mapping[str, Any] = {}  # model id -> engine, of the app being served (see `watch`)


def watch(engines: Mapping[str, Any]) -> None:
    """Report the load of these engines (the catalog's `engines`, model id -> engine)."""
    global _engines
    _engines = engines


def load_samples(engines: Mapping[str, Any]) -> Iterator[tuple[str, tuple[str, ...], float]]:
    """(metric, label values, value) of the engines' load right now.

    An engine reports its queue and slots with `occupancy()` ((waiting, busy), or None when it
    has neither), and an upstream engine its replicas with `replica_stats()`, when it has one."""
    for model_id, engine in engines.items():
        occupancy = engine.occupancy()
        if occupancy is not None:
            waiting, busy = occupancy
            yield "longcat_engine_queue_depth", (model_id,), waiting
            yield "longcat_engine_slots_busy", (model_id,), busy
        stats = getattr(engine, "replica_stats", None)
        if stats is None:
            continue
        for s in stats():
            labels = (model_id, str(s.replica))
            yield "longcat_upstream_inflight", labels, s.inflight
            yield "longcat_upstream_healthy", labels, 1 if s.healthy else 0
            yield "longcat_upstream_circuit_open", labels, 1 if s.circuit_open else 0


class EngineCollector(Collector):
    """The engines' load, read when scraped (one process)."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = {name: GaugeMetricFamily(name, text, labels=labels) for name, (text, labels, _) in _LOAD.items()}
        try:
            for name, labels, value in load_samples(_engines):
                families[name].add_metric(list(labels), value)
        except Exception:  # a scrape must not fail because one engine could not say
            log.exception("reading the engines' load for /metrics failed")
        return families.values()


if MULTIPROCESS:
    _LOAD_GAUGES = {
        name: Gauge(name, text, list(labels), multiprocess_mode=mode, registry=None) for name, (text, labels, mode) in _LOAD.items()
    }
else:
    from prometheus_client.gc_collector import GCCollector
    from prometheus_client.platform_collector import PlatformCollector
    from prometheus_client.process_collector import ProcessCollector

    ProcessCollector(registry=REGISTRY)
    PlatformCollector(registry=REGISTRY)
    GCCollector(registry=REGISTRY)
    REGISTRY.register(EngineCollector())


async def sample_forever(interval: float = SAMPLE_INTERVAL) -> None:
    """Multiprocess mode: keep this worker's share of the engines' load in the gauges' files."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while True:
        now: set[tuple[str, tuple[str, ...]]] = set()
        try:
            for name, labels, value in load_samples(_engines):
                _LOAD_GAUGES[name].labels(*labels).set(value)
                now.add((name, labels))
            for name, labels in seen - now:  # a replica that went away reads 0, not its last value
                _LOAD_GAUGES[name].labels(*labels).set(0)
        except Exception:
            log.exception("sampling the engines' load failed")
        seen = now
        await asyncio.sleep(interval)


def _scrape_registry() -> CollectorRegistry:
    if not MULTIPROCESS:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # reads every worker's files at each scrape
    return registry


@functools.cache
def scrape_registry() -> CollectorRegistry:
    """The registry a scrape renders: this process's, or every worker's in multiprocess mode."""
    return _scrape_registry()


def render() -> bytes:
    """The metrics in Prometheus' text format."""
    return generate_latest(scrape_registry())


def worker_exited(pid: int) -> None:
    """Multiprocess mode, for whatever supervises the workers: a worker that exited no longer
    counts in the live gauges (in-flight requests, engine load)."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def serve(host: str, port: int) -> Any:
    """The metrics on a port of their own (a thread); returns the server, to `shutdown()`.

    In multiprocess mode every worker tries the port and the first one gets it: any worker's
    answer covers them all. None when another worker already serves it."""
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, addr=host, registry=scrape_registry())
    except OSError as exc:
        if MULTIPROCESS:
            log.info("metrics port %s:%d is served by another worker", host, port)
            return None
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", port)
    return server


# ------------------------------------------------------------------------------- hooks


def request_done(
    endpoint: str, model: str, status: int, seconds: float, ttft: float | None, tokens: tuple[int, int, int] | None
) -> None:
    """One answered request; `tokens` is (input, output, cached) when an engine ran."""
    requests, duration, first_token, token_kinds = _children(endpoint, model, status)
    requests.inc()
    duration.observe(seconds)
    if ttft is not None:
        first_token.observe(ttft)
    if tokens is not None:
        for counter, n in zip(token_kinds, tokens, strict=True):
            if n:
                counter.inc(n)


@functools.lru_cache(maxsize=4096)
def _children(endpoint: str, model: str, status: int) -> tuple[Any, Any, Any, tuple[Any, Any, Any]]:
    """The labelled series one kind of request counts in, looked up once (labels are bounded)."""
    kinds = tuple(TOKENS.labels(model, kind) for kind in ("input", "output", "cached"))
    return REQUESTS.labels(endpoint, model, str(status)), DURATION.labels(endpoint, model), TTFT.labels(endpoint, model), kinds


def inflight(model: str, delta: int) -> None:
    INFLIGHT.labels(model).inc(delta)


def rate_limited(scope: str) -> None:
    """A 429: `scope` is the limit (rpm, tpm_concurrency, queue, other)."""
    RATE_LIMITED.labels(scope).inc()


def quota_refused() -> None:
    QUOTA_REFUSED.inc()


def upstream_request(model: str, base_url: str, outcome: str) -> None:
    """One attempt at an upstream replica (`base_url` as configured), with the replica set's
    outcome: ok (it answered; a 4xx about the request counts), failed (no connection, a 5xx, a
    timeout, a reply cut short), busy (a 429), left (the client went away, or our pool was full)."""
    UPSTREAM.labels(model, replica_label(base_url), outcome).inc()


@functools.lru_cache(maxsize=1024)
def replica_label(base_url: str) -> str:
    """host:port of a base URL: a bounded label that carries no credentials or path."""
    try:
        parts = urlsplit(base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "invalid"
    host = parts.hostname or "invalid"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def usage_written(seconds: float) -> None:
    USAGE_WRITE.observe(seconds)
