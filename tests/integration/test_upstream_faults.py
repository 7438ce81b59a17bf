"""Balancing over two replicas that fail on purpose (`tests/support/fault_upstream.py`: refused
connections, 500, 429 with Retry-After, a silent replica, a stream cut midway, a slow first byte,
failing health checks), behind an `openai_compat` and an `anthropic_compat` model, driven with
the official SDKs: every failure is a clean error in the client's format, billed for what was
produced; a request moves to the other replica only before its first byte; the circuit opens and
closes; health checks take a replica out and bring it back; no request in flight is ever lost
count of. What the front holds per replica is read from the model detail an operator's key sees.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.fault_upstream import PROMPT_TOKENS, FaultUpstream
from tests.support.server import Server, free_port, write_config

FLAVOURS = ("openai", "anthropic")  # the model's engine, and the SDK that asks it
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
COOLDOWN = 1.0  # circuit_cooldown of every model here
READ_TIMEOUT = 1.5
TESTS = ("fo-refuse", "fo-500", "fo-429", "cut", "hang", "circuit", "health", "leak")


@pytest.fixture(scope="module")
def pair():
    with FaultUpstream("alpha") as a, FaultUpstream("beta") as b:
        yield a, b


@pytest.fixture(autouse=True)
def healthy_pair(pair):
    for up in pair:
        up.reset()
        up.accept()
    yield
    for up in pair:
        up.reset()
        up.accept()


def model_entry(id: str, flavour: str, a: FaultUpstream, b: FaultUpstream, **extra: Any) -> str:
    suffix = "/v1" if flavour == "openai" else ""
    urls = extra.pop("base_urls", [a.url + suffix, b.url + suffix])
    lines = [f'id = "{id}"', f'engine = "{flavour}_compat"', 'upstream_model = "fault"', "context_window = 8192",
             "max_output = 1024", f"timeout = {{ connect = 1, read = {READ_TIMEOUT} }}", "circuit_failures = 2",
             f"circuit_cooldown = {COOLDOWN}", "base_urls = [" + ", ".join(
                 u if u.startswith("{") else json.dumps(u) for u in urls) + "]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "[[models]]\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def front(pair, tmp_path_factory):
    a, b = pair
    entries = []
    for flavour in FLAVOURS:
        for test in TESTS:
            extra: dict[str, Any] = {}
            if test == "health":
                extra = {"health_path": "/health", "health_interval": 0.2, "health_timeout": 0.3}
            entries.append(model_entry(f"{flavour}-{test}", flavour, a, b, **extra))
    entries.append(model_entry("openai-weighted", "openai", a, b,
                               base_urls=[f'{{ url = "{a.url}/v1", weight = 3 }}', f"{b.url}/v1"]))
    data = tmp_path_factory.mktemp("faults-front")
    server = Server(data, write_config(data / "config.toml", "\n".join(entries)), free_port()).start()
    # The admin key the first start prints asks, and reads the figures per replica only operators see.
    server.key = server.admin = re.search(r"shown only this once; store it now\):\s+(ak_\w+)", server.log()).group(1)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(front):
    return openai.OpenAI(api_key=front.key, base_url=front.base_url + "/openai/v1", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def claude(front):
    return anthropic.Anthropic(api_key=front.key, base_url=front.base_url + "/anthropic", max_retries=0, timeout=30)


# ======================================================================= helpers


def ask(clients: tuple, flavour: str, model: str, *, stream: bool = False, max_tokens: int = 50) -> tuple[str, str]:
    """(the reply's text, the front's request id), asked with the flavour's own SDK."""
    oai, claude = clients
    messages = [{"role": "user", "content": "hello"}]
    if flavour == "openai":
        raw = oai.chat.completions.with_raw_response.create(model=model, messages=messages, max_tokens=max_tokens,
                                                            stream=stream)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            text = raw.parse().choices[0].message.content
        return text, raw.headers["x-request-id"]
    if stream:
        with claude.messages.stream(model=model, max_tokens=max_tokens, messages=messages) as s:
            return "".join(s.text_stream), s.response.headers["request-id"]
    raw = claude.messages.with_raw_response.create(model=model, max_tokens=max_tokens, messages=messages)
    return raw.parse().content[0].text, raw.headers["request-id"]


def refused(clients: tuple, flavour: str, model: str, **kw: Any) -> tuple[int, str, str, str]:
    """(status, error type or code, message, request id) of a request the front refuses."""
    with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as info:
        ask(clients, flavour, model, **kw)
    err = info.value
    body = err.body if isinstance(err.body, dict) else {}
    if flavour == "openai":
        return err.status_code, body.get("code"), body.get("message", ""), err.response.headers.get("x-request-id", "")
    return err.status_code, body["error"]["type"], body["error"]["message"], err.response.headers.get("request-id", "")


def status(front: Server, model: str) -> dict[str, dict[str, Any]]:
    """The front's figures per replica (host:port) of `model`, from the operator's model detail."""
    r = httpx.get(f"{front.base_url}/openai/v1/models/{model}", headers={"Authorization": f"Bearer {front.admin}"}, timeout=10)
    return {s["replica"]: s for s in r.json()["engine"]["replica_status"]}


def label(up: FaultUpstream) -> str:
    return f"127.0.0.1:{up.port}"


def wait_for(check, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def none_in_flight(front: Server, model: str) -> None:
    wait_for(lambda: all(s["inflight"] == 0 for s in status(front, model).values()),
             f"requests of {model} still counted in flight: {status(front, model)}", timeout=3)


def record(front: Server, request_id: str) -> dict[str, Any]:
    """The usage record of one request (the ledger row the account's usage page shows)."""
    deadline = time.monotonic() + 5
    while True:
        report = httpx.get(front.base_url + "/api/v1/usage?limit=100", headers={"Authorization": f"Bearer {front.key}"},
                           timeout=10).json()
        found = [r for r in report["recent"] if r["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            assert found, f"no usage record for {request_id}"
            return found[0]
        time.sleep(0.05)


def records(front: Server, model: str) -> list[dict[str, Any]]:
    """Today's usage records of `model`, newest first."""
    report = httpx.get(front.base_url + "/api/v1/usage?limit=100", headers={"Authorization": f"Bearer {front.key}"},
                       timeout=10).json()
    return [r for r in report["recent"] if r["model"] == model]


def newest(front: Server, model: str, before: int) -> dict[str, Any]:
    """The record of a request that carried no request id (an HTTP error): the one after `before`."""
    wait_for(lambda: len(records(front, model)) > before, f"no new usage record for {model}")
    return records(front, model)[0]


def hits(up: FaultUpstream, flavour: str) -> int:
    return up.hits.count(PATHS[flavour])


# ======================================================================= failover before the first byte


@pytest.mark.parametrize("fault", ["refuse", "500", "429"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_failover_before_the_first_byte(front, oai, claude, pair, flavour, fault):
    """One replica refuses connections, answers 500 or asks to wait: every request is answered
    by the other one, and billed exactly as it reported."""
    a, b = pair
    model = f"{flavour}-fo-{fault}"
    a.retry_after = 30  # longer than the test: the replica asked to wait is not asked again
    if fault == "refuse":
        a.refuse()
    else:
        a.mode = fault
    a_before, b_before = hits(a, flavour), hits(b, flavour)
    for stream in (False, True, False, True):
        text, request_id = ask((oai, claude), flavour, model, stream=stream)
        assert text == "beta" + " tok" * 5
        row = record(front, request_id)
        assert (row["input_tokens"], row["output_tokens"], row["status"]) == (PROMPT_TOKENS, 6, "ok"), row
    assert hits(b, flavour) - b_before == 4
    mine = status(front, model)[label(a)]
    if fault == "429":
        # Asked first (round-robin starts there), then left alone for its Retry-After; not a failure.
        assert hits(a, flavour) - a_before == 1 and mine["errors"] == 0 and not mine["circuit_open"], mine
    elif fault == "500":
        # Tried first, then last for the cool-down: 1, or 2 on a machine slow enough to outlast it.
        assert 1 <= hits(a, flavour) - a_before <= 2 and mine["errors"] == hits(a, flavour) - a_before, mine
    else:
        assert mine["errors"] >= 1 and mine["requests"] == mine["errors"], mine
    none_in_flight(front, model)


# ======================================================================= no retry after it


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_stream_cut_midway_is_an_error_billed_for_what_came_and_never_retried(front, oai, claude, pair, flavour):
    a, b = pair
    model = f"{flavour}-cut"
    a.mode = b.mode = "cut"  # whichever replica takes it, the reply breaks after 3 pieces
    before = hits(a, flavour) + hits(b, flavour)
    received: list[str] = []
    with pytest.raises((openai.APIError, anthropic.APIError)) as info:
        if flavour == "openai":
            raw = oai.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                                stream=True, max_tokens=50)
            request_id = raw.headers["x-request-id"]
            for chunk in raw.parse():
                received += [c.delta.content for c in chunk.choices if c.delta.content]
        else:
            with claude.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
                request_id = s.response.headers["request-id"]
                for text in s.text_stream:
                    received.append(text)
    assert len(received) == 3 and received[1:] == [" tok", " tok"], received
    assert "broke mid-reply" in str(info.value) or "broke mid-reply" in json.dumps(getattr(info.value, "body", None))
    assert hits(a, flavour) + hits(b, flavour) == before + 1  # the other replica never saw it
    row = record(front, request_id)
    assert (row["output_tokens"], row["status"]) == (3, "engine_error"), row
    assert row["input_tokens"] > 0

    # Not streamed: the client got nothing, and the error is the HTTP answer.
    count = len(records(front, model))
    code, kind, message, _ = refused((oai, claude), flavour, model)
    assert (code, kind) == (502, "upstream_error" if flavour == "openai" else "api_error") and "mid-reply" in message
    assert hits(a, flavour) + hits(b, flavour) == before + 2
    row = newest(front, model, count)
    assert (row["output_tokens"], row["status"]) == (3, "engine_error"), row
    none_in_flight(front, model)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_silent_replica_times_out_once_and_a_slow_one_is_waited_for(front, oai, claude, pair, flavour):
    a, b = pair
    model = f"{flavour}-hang"
    a.mode = b.mode = "hang"
    before = hits(a, flavour) + hits(b, flavour)
    started = time.monotonic()
    code, kind, message, _ = refused((oai, claude), flavour, model, stream=True)
    assert READ_TIMEOUT - 0.1 < time.monotonic() - started < READ_TIMEOUT + 10
    assert code == 502 and "did not answer in time" in message and "127.0.0.1" not in message
    # It took the request and may be working on it: not sent to the other replica.
    assert hits(a, flavour) + hits(b, flavour) == before + 1
    none_in_flight(front, model)

    a.mode = b.mode = "slow"  # 0.5 s before the first byte, within the read timeout
    text, request_id = ask((oai, claude), flavour, model, stream=True)
    assert text.endswith(" tok" * 5)
    row = record(front, request_id)
    assert (row["input_tokens"], row["output_tokens"], row["status"]) == (PROMPT_TOKENS, 6, "ok")
    none_in_flight(front, model)


# ======================================================================= the circuit


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_circuit_opens_and_closes(front, oai, claude, pair, flavour):
    a, b = pair
    model = f"{flavour}-circuit"
    clients = (oai, claude)
    a.mode = b.mode = "500"
    for _ in range(2):  # each request tries both: two failures in a row each
        code, kind, message, request_id = refused(clients, flavour, model)
        assert code == 502 and "failed (HTTP 500)" in message, message
    assert all(s["circuit_open"] and s["errors"] == 2 for s in status(front, model).values())
    seen = hits(a, flavour) + hits(b, flavour)
    # Open: requests no longer reach either replica, and both formats say so with a 503.
    count = len(records(front, model))
    code, kind, message, _ = refused(clients, flavour, model)
    row = newest(front, model, count)
    assert (row["billed_tokens"], row["output_tokens"]) == (0, 0), row  # nothing was produced: nothing billed
    assert (code, kind) == (503, "upstream_unavailable" if flavour == "openai" else "overloaded_error")
    assert "set aside after repeated failures" in message and "127.0.0.1" not in message and "http" not in message
    other = "anthropic" if flavour == "openai" else "openai"
    assert refused(clients, other, model)[:2] == (503, "overloaded_error" if other == "anthropic" else "upstream_unavailable")
    assert hits(a, flavour) + hits(b, flavour) == seen

    a.mode = "ok"  # alpha recovers; after the cool-down a trial request finds it
    time.sleep(COOLDOWN + 0.2)
    text, _ = ask(clients, flavour, model)
    assert text.startswith("alpha")
    assert not status(front, model)[label(a)]["circuit_open"]
    for _ in range(3):  # beta's circuit is open: alpha takes everything
        assert ask(clients, flavour, model)[0].startswith("alpha")

    b.mode = "ok"  # beta recovers too: after its cool-down it gets traffic again
    time.sleep(COOLDOWN + 0.2)
    b_before = hits(b, flavour)
    answers = [ask(clients, flavour, model)[0].split()[0] for _ in range(4)]
    assert hits(b, flavour) > b_before and "beta" in answers, answers
    assert not any(s["circuit_open"] for s in status(front, model).values())
    none_in_flight(front, model)


# ======================================================================= health checks


@pytest.mark.parametrize("flavour, failure", [("openai", "fail"), ("anthropic", "hang")])
def test_health_checks_take_a_replica_out_and_bring_it_back(front, oai, claude, pair, flavour, failure):
    a, b = pair
    model = f"{flavour}-health"
    clients = (oai, claude)
    wait_for(lambda: a.probes > 0 and b.probes > 0, "no health checks")
    a.health = failure  # 503, or no answer within health_timeout
    wait_for(lambda: not status(front, model)[label(a)]["healthy"], "alpha was not taken out")
    a_before = hits(a, flavour)
    assert [ask(clients, flavour, model)[0].split()[0] for _ in range(4)] == ["beta"] * 4
    assert hits(a, flavour) == a_before

    b.health = failure
    wait_for(lambda: not status(front, model)[label(b)]["healthy"], "beta was not taken out")
    code, kind, message, _ = refused(clients, flavour, model)
    assert code == 503 and "2 failing health checks" in message and "127.0.0.1" not in message
    # Readiness follows the health checks: no replica of this model passes, so not ready.
    ready = httpx.get(front.base_url + "/readyz", timeout=10)
    assert ready.status_code == 503 and "health check" in ready.json()["checks"][f"model:{model}"], ready.text

    a.health = b.health = "ok"
    wait_for(lambda: all(s["healthy"] for s in status(front, model).values()), "the replicas did not come back")
    assert httpx.get(front.base_url + "/readyz", timeout=10).json()["checks"][f"model:{model}"] == "ok"
    answers = [ask(clients, flavour, model)[0].split()[0] for _ in range(4)]
    assert sorted(answers) == ["alpha", "alpha", "beta", "beta"], answers
    none_in_flight(front, model)


# ======================================================================= in flight


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_least_busy_replica_is_chosen_and_no_count_leaks(front, oai, claude, pair, flavour):
    a, b = pair
    model = f"{flavour}-leak"
    clients = (oai, claude)
    for up in pair:
        up.tokens, up.piece_delay = 400, 0.02  # a long reply: 8 s
    # A request of an earlier test may still be unwinding on a replica (and count as `left` when
    # it does): start from idle replicas.
    wait_for(lambda: a.active + b.active == 0, "the replicas are still answering earlier requests", timeout=10)
    left_before = a.left + b.left
    if flavour == "openai":
        url, headers = front.base_url + "/openai/v1/chat/completions", {"Authorization": f"Bearer {front.key}"}
    else:
        url, headers = front.base_url + "/anthropic/v1/messages", {"x-api-key": front.key}
    body = {"model": model, "max_tokens": 400, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        request_id = response.headers.get("x-request-id") or response.headers["request-id"]
        lines = response.iter_lines()  # held: dropping it would close the connection at once
        first = next(line for line in lines if "alpha" in line or "beta" in line)
        busy, idle = ("alpha", "beta") if "alpha" in first else ("beta", "alpha")
        assert sum(s["inflight"] for s in status(front, model).values()) == 1
        # While one replica streams, the other takes every short request.
        assert [ask(clients, flavour, model, max_tokens=2)[0] for _ in range(3)] == [idle + " tok"] * 3
    # The client left: the front closes the upstream reply and gives the replica back.
    none_in_flight(front, model)
    wait_for(lambda: a.left + b.left == left_before + 1, "the upstream reply was not closed", timeout=10)
    row = record(front, request_id)
    assert row["status"] == "client_closed" and 1 <= row["output_tokens"] < 400, row
    assert busy in first

    # A client that gives up before the first byte (the replica is slow) is no count left behind either.
    a.mode = b.mode = "slow"
    a.delay = b.delay = 1.0
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json={**body, "stream": False, "max_tokens": 2}, headers=headers, timeout=0.3)
    none_in_flight(front, model)
    a.delay = b.delay = 0.5


def test_weights_share_concurrent_requests(front, pair):
    """alpha has weight 3, beta 1: of four requests in flight at once, alpha takes three."""
    a, b = pair
    for up in pair:
        up.tokens, up.piece_delay = 200, 0.02
    before = hits(a, "openai"), hits(b, "openai")
    body = {"model": "openai-weighted", "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with contextlib.ExitStack() as stack:
        for _ in range(4):
            response = stack.enter_context(httpx.stream("POST", front.base_url + "/openai/v1/chat/completions", json=body,
                                                        headers={"Authorization": f"Bearer {front.key}"}, timeout=30))
            assert response.status_code == 200
        assert (hits(a, "openai") - before[0], hits(b, "openai") - before[1]) == (3, 1)
        assert sorted(s["inflight"] for s in status(front, "openai-weighted").values()) == [1, 3]
    none_in_flight(front, "openai-weighted")
