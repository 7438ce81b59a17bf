"""The choice of a replica, the circuit breaker and health state (`engines/replicas.py`), and the
options that configure them. Pure: the clock is the test's."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from longcat.config import ConfigError, ModelConfig
from longcat.engines import replicas as replicas_module
from longcat.engines.anthropic_compat import parse_options as anthropic_options
from longcat.engines.openai_compat import OpenAICompatEngine, parse_options
from longcat.engines.replicas import BUSY, FAILED, LEFT, OK, ReplicaSet, replica_label

URLS = ["http://user:pw@10.0.0.5:8000/v1", "https://b.internal/v1"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(replicas_module.time, "monotonic", c)
    return c


def replica_set(urls=URLS, weights=None, **kw) -> ReplicaSet:
    return ReplicaSet(urls, weights, model_id="m", log=logging.getLogger("test"), **kw)


def test_labels_are_host_and_port_only():
    assert [replica_label(u) for u in URLS] == ["10.0.0.5:8000", "b.internal:443"]
    assert replica_label("http://[::1]/v1") == "[::1]:80"


def test_equal_replicas_take_turns_and_the_least_busy_wins(clock):
    rs = replica_set()
    a, b = rs.replicas
    turns = []
    for _ in range(6):  # one request at a time: round-robin
        r = rs.choose([])
        turns.append(r)
        rs.take(r).done(OK)
    assert Counter(turns) == {a: 3, b: 3}
    held = rs.take(a)  # a is busy: b is chosen whatever the turn
    assert [rs.choose([]) for _ in range(4)] == [b] * 4
    held.done(LEFT)
    assert (a.inflight, b.inflight) == (0, 0)


def test_weights_share_concurrent_requests(clock):
    rs = replica_set(weights=[3.0, 1.0])
    leases = [rs.take(rs.choose([])) for _ in range(8)]
    assert [r.inflight for r in rs.replicas] == [6, 2]
    for lease in leases:
        lease.done(OK)
        lease.done(FAILED)  # a second end changes nothing
    assert [(r.inflight, r.errors, r.requests) for r in rs.replicas] == [(0, 0, 6), (0, 0, 2)]


def test_failover_never_repeats_a_replica(clock):
    rs = replica_set()
    first = rs.choose([])
    second = rs.choose([first])
    assert {first, second} == set(rs.replicas) and rs.choose([first, second]) is None


def test_the_circuit_opens_lets_one_trial_through_and_closes(clock):
    rs = replica_set(circuit_failures=2, circuit_cooldown=10)
    a, b = rs.replicas
    rs.take(a).done(FAILED)
    assert rs.choose([]) is b and rs.choose([b]) is a  # failed once: tried last, still tried
    rs.take(a).done(FAILED)
    assert rs.stats()[0].circuit_open and rs.choose([b]) is None  # open: not tried at all
    clock.now += 10
    trial = rs.take(rs.choose([b]))  # half-open: one trial...
    assert trial.replica is a and rs.choose([b]) is None  # ...and only one
    trial.done(FAILED)
    assert rs.choose([b]) is None  # failed: open again
    clock.now += 10
    trial = rs.take(rs.choose([b]))
    trial.answered()  # the trial's headers came: closed at once
    assert not rs.stats()[0].circuit_open and rs.choose([b]) is a
    trial.done(OK)
    assert (a.inflight, a.errors, a.requests, a.failures) == (0, 3, 4, 0)


def test_a_trial_cut_short_by_its_client_lets_another_through(clock):
    rs = replica_set(["http://a/v1"], circuit_failures=1, circuit_cooldown=5)
    [a] = rs.replicas
    rs.take(a).done(FAILED)
    clock.now += 5
    rs.take(rs.choose([])).done(LEFT)
    assert rs.choose([]) is a and rs.stats()[0].circuit_open


def test_a_429_skips_the_replica_for_its_retry_after_without_counting_a_failure(clock):
    rs = replica_set(circuit_failures=1)
    a, b = rs.replicas
    rs.take(a).done(BUSY, 7)
    assert [rs.choose([]) for _ in range(3)] == [b] * 3 and a.errors == 0 and not rs.stats()[0].circuit_open
    rs.take(b).done(BUSY, 3)
    err = rs.unavailable()
    assert (err.status, err.code, err.headers["Retry-After"]) == (503, "overloaded", "3") and "busy" in err.message
    clock.now += 7
    assert rs.choose([]) in (a, b) and rs.choose([a]) is b


def test_health_checks_take_a_replica_out_and_bring_it_back(clock):
    rs = replica_set(health_interval=5)
    a, b = rs.replicas
    rs.probed(a, False, "HTTP 503")
    assert rs.choose([b]) is a  # one failed check is not enough
    rs.probed(a, False, "HTTP 503")
    assert not rs.stats()[0].healthy and [rs.choose([]) for _ in range(3)] == [b] * 3
    rs.probed(a, True)
    assert rs.choose([b]) is None
    rs.probed(a, True)
    assert rs.stats()[0].healthy and rs.choose([b]) is a


def test_all_out_is_a_503_that_names_no_replica(clock):
    rs = replica_set(circuit_failures=1, circuit_cooldown=4, health_interval=5)
    a, b = rs.replicas
    rs.probed(a, False)
    rs.probed(a, False)
    rs.take(b).done(FAILED)
    assert rs.choose([]) is None
    err = rs.unavailable()
    assert (err.status, err.code, err.headers["Retry-After"]) == (503, "upstream_unavailable", "4")
    assert "1 failing health checks" in err.message and "1 set aside after repeated failures" in err.message
    assert not any(word in err.message for word in ("10.0.0.5", "b.internal", "pw", "http"))


def test_stats_carry_the_figures_the_metrics_read(clock):
    rs = replica_set()
    lease = rs.take(rs.replicas[0])
    clock.now += 1.5
    lease.done(FAILED)
    stat = rs.stats()[0]
    assert (stat.replica, stat.inflight, stat.healthy, stat.circuit_open, stat.requests, stat.errors,
            stat.latency_seconds_total) == ("10.0.0.5:8000", 0, True, False, 1, 1, 1.5)


# ===================================================================================== options


def model(**options) -> ModelConfig:
    return ModelConfig(id="front", engine="openai_compat", context_window=1000, max_output=100, options=options)


def test_replica_options():
    opts = parse_options(model(base_urls=["http://a/v1", {"url": "http://b/v1/", "weight": 2}], health_path="/health",
                               health_interval=1, health_timeout=0.5, circuit_failures=3, circuit_cooldown=2))
    assert (opts.base_urls, opts.weights) == (["http://a/v1", "http://b/v1"], [1.0, 2.0])
    assert (opts.health_path, opts.health_interval, opts.health_timeout) == ("/health", 1.0, 0.5)
    assert (opts.circuit_failures, opts.circuit_cooldown) == (3, 2.0)
    plain = parse_options(model(base_url="http://a/v1"))
    assert (plain.health_path, plain.circuit_failures, plain.circuit_cooldown) == (None, 5, 5.0)
    engine = OpenAICompatEngine(model(base_urls=URLS, health_path="/v1/models"))
    detail = engine.describe()
    assert detail["health_check"].startswith("GET /v1/models every 5 s") and "5 failures" in detail["circuit_breaker"]
    assert [s["replica"] for s in detail["replica_status"]] == ["10.0.0.5:8000", "b.internal:443"]
    assert "pw" not in str(detail["replica_status"]) and [s.replica for s in engine.replica_stats()] == ["10.0.0.5:8000",
                                                                                                           "b.internal:443"]
    anthropic = anthropic_options(ModelConfig(id="a", engine="anthropic_compat", context_window=1000, max_output=100, options={
        "base_urls": [{"url": "http://c/v1", "weight": 0.5}, "http://d"]}))
    assert (anthropic.base_urls, anthropic.weights) == (["http://c", "http://d"], [0.5, 1.0])


@pytest.mark.parametrize(
    "options, words",
    [
        ({"base_urls": [{"url": "http://a/v1", "weight": 0}]}, "'weight' must be a number above 0"),
        ({"base_urls": [{"url": "http://a/v1", "weight": "heavy"}]}, "'weight'"),
        ({"base_urls": [{"weight": 2}]}, "takes 'url' and 'weight'"),
        ({"base_urls": [{"url": "http://a/v1", "wieght": 2}]}, "takes 'url' and 'weight'"),
        ({"base_urls": [{"url": "a/v1"}]}, "http://"),
        ({"base_url": "http://a/v1", "health_path": "health"}, "'health_path' must be a path"),
        ({"base_url": "http://a/v1", "health_interval": 5}, "need 'health_path'"),
        ({"base_url": "http://a/v1", "health_path": "/health", "health_timeout": 0}, "'health_timeout'"),
        ({"base_url": "http://a/v1", "circuit_failures": -1}, "'circuit_failures'"),
        ({"base_url": "http://a/v1", "circuit_failures": 2.5}, "'circuit_failures'"),
        ({"base_url": "http://a/v1", "circuit_cooldown": "long"}, "'circuit_cooldown'"),
    ],
)
def test_bad_replica_options_are_config_errors(options, words):
    with pytest.raises(ConfigError) as info:
        parse_options(model(**options), env={})
    assert words in str(info.value) and "'front'" in str(info.value)
