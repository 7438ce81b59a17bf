"""Daily quotas, rate limits, feedback refreshes and the usage API, against a real server.

The server's clock reads an offset from a file (the `clock_file` setting), so the tests cross
Beijing midnight without waiting for it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import anthropic
import httpx
import openai
import pytest

from tests.support.server import Server, cli, free_port, write_config

CONFIG = """
daily_quota = 1000
daily_quota_cap = 2500
feedback_refresh_probability = 1.0
feedback_daily_limit = 3
clock_file = "{clock}"

[[models]]
id = "mock-echo"
engine = "mock"
context_window = 100000
max_output = 100000

[[models]]
id = "mock-fail"
engine = "mock"
context_window = 100000
max_output = 100000
fail_after_tokens = 3

[[models]]
id = "mock-slow"
engine = "mock"
context_window = 100000
max_output = 100000
token_delay = 0.05
"""

BEIJING = dt.timezone(dt.timedelta(hours=8))
RATE_BODY = (
    '{{"error":{{"code":"rate_limit_exceeded","message":"Request rate limit exceeded, please try again later",'
    '"type":"rate_limit_error","retry_after":{}}}}}'
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("quota-server")
    clock = data / "clock"
    clock.write_text("0")
    config = write_config(data / "config.toml", CONFIG.format(clock=clock))
    srv = Server(data, config, free_port()).start()
    srv.clock = clock
    yield srv
    srv.stop()


def new_key(server, **limits) -> tuple[str, str]:
    email = f"u{uuid.uuid4().hex[:10]}@example.com"
    return email, server.new_key(email, **limits)


def chat(server, key, text="one two three", **extra) -> httpx.Response:
    body = {"model": "mock-echo", "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(server.base_url + "/openai/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def usage(server, key, **params) -> dict:
    r = httpx.get(server.base_url + "/api/v1/usage", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def spend(server, key, tokens: int) -> int:
    """Spend about `tokens` of the quota with echo requests; returns what was billed."""
    billed = 0
    while billed < tokens:
        words = max(1, min(200, (tokens - billed) - 4))
        r = chat(server, key, " ".join(["w"] * words))
        assert r.status_code == 200, r.text
        billed += r.json()["usage"]["total_tokens"]
    return billed


# ------------------------------------------------------------------------------------ quota


def test_exhaustion_is_403_with_the_refresh_time_in_both_formats(server):
    _, key = new_key(server)
    billed = 0
    for _ in range(200):
        r = chat(server, key, " ".join(["w"] * 100))
        if r.status_code != 200:
            break
        billed += r.json()["usage"]["total_tokens"]
    assert r.status_code == 403
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("permission_error", "insufficient_quota")
    refresh = dt.datetime.fromtimestamp(err["refreshes_at"], BEIJING)
    assert (refresh.hour, refresh.minute) == (0, 0)
    assert f"{refresh:%Y-%m-%d} 00:00 Beijing time" in err["message"] and "16:00 UTC" in err["message"]

    # The quota is exact: what was billed never exceeds it, and the usage API agrees.
    quota = usage(server, key)["quota"]
    assert billed == quota["used"] <= 1000

    a = httpx.post(
        server.base_url + "/anthropic/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={"model": "mock-echo", "max_tokens": 50, "messages": [{"role": "user", "content": " ".join(["w"] * 100)}]},
    )
    assert a.status_code == 403
    body = a.json()
    assert body["type"] == "error" and body["error"]["type"] == "permission_error"
    assert body["error"]["code"] == "insufficient_quota" and "Beijing time" in body["error"]["message"]

    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(api_key=key, base_url=server.base_url + "/openai/v1", max_retries=0).chat.completions.create(
            model="mock-echo", messages=[{"role": "user", "content": " ".join(["w"] * 100)}]
        )
    with pytest.raises(anthropic.PermissionDeniedError):
        anthropic.Anthropic(api_key=key, base_url=server.base_url + "/anthropic", max_retries=0).messages.create(
            model="mock-echo", max_tokens=10, messages=[{"role": "user", "content": " ".join(["w"] * 100)}]
        )


def test_output_is_capped_by_what_remains(server):
    _, key = new_key(server)
    spend(server, key, 850)
    remaining = usage(server, key)["quota"]["remaining"]
    assert remaining > 40
    # A prompt that fits, whose echo would not: the output budget is cut to what remains.
    r = chat(server, key, " ".join(["w"] * (remaining - 20)), max_tokens=5000)
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == remaining
    assert usage(server, key)["quota"]["remaining"] == 0


def test_failed_requests_are_not_billed(server):
    _, key = new_key(server)
    before = usage(server, key)["quota"]["used"]
    assert chat(server, key, "x", max_tokens=0).status_code == 400
    assert chat(server, key, "x", model="nope").status_code == 400
    assert usage(server, key)["quota"]["used"] == before


def test_engine_failures_bill_only_what_was_delivered(server):
    _, key = new_key(server)
    # Non-streaming: the engine failed before the client got anything, so it costs nothing.
    r = chat(server, key, "a b c d e f", model="mock-fail")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert usage(server, key)["quota"]["used"] == 0
    # Streaming: three tokens reached the client before the failure; those and the prompt count.
    r = chat(server, key, "a b c d e f", model="mock-fail", stream=True)
    assert r.status_code == 200 and '"error"' in r.text
    report = usage(server, key)
    assert report["quota"]["used"] == 9 + 3
    assert sorted(x["status"] for x in report["recent"]) == ["engine_error", "engine_error"]
    assert sorted(x["billed_tokens"] for x in report["recent"]) == [0, 12]


def test_streaming_and_non_streaming_cost_the_same(server):
    _, key = new_key(server)
    plain = chat(server, key, "alpha beta gamma delta").json()["usage"]["total_tokens"]
    before = usage(server, key)["quota"]["used"]
    r = chat(server, key, "alpha beta gamma delta", stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert usage(server, key)["quota"]["used"] - before == plain


# ------------------------------------------------------------------------------------ limits


def test_429_body_is_the_seeds_byte_for_byte(server):
    _, key = new_key(server, rpm=2)
    assert chat(server, key).status_code == 200
    assert chat(server, key).status_code == 200
    r = chat(server, key)
    assert r.status_code == 429
    # Two requests a minute: the next one fits 30 s after the second.
    retry = int(r.headers["Retry-After"])
    assert 28 <= retry <= 30
    assert r.content == RATE_BODY.format(retry).encode()

    a = httpx.post(
        server.base_url + "/anthropic/v1/messages",
        headers={"x-api-key": key},
        json={"model": "mock-echo", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert a.status_code == 429 and int(a.headers["Retry-After"]) >= 28
    assert a.json()["error"] == {
        "type": "rate_limit_error",
        "message": "Request rate limit exceeded, please try again later",
        "code": "rate_limit_exceeded",
        "retry_after": int(a.headers["Retry-After"]),
    }
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(api_key=key, base_url=server.base_url + "/openai/v1", max_retries=0).chat.completions.create(
            model="mock-echo", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.RateLimitError):
        anthropic.Anthropic(api_key=key, base_url=server.base_url + "/anthropic", max_retries=0).messages.create(
            model="mock-echo", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )


def test_token_counting_counts_against_the_request_limit(server):
    _, key = new_key(server, rpm=2)
    count = lambda: httpx.post(  # noqa: E731
        server.base_url + "/anthropic/v1/messages/count_tokens",
        headers={"x-api-key": key},
        json={"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert [count().status_code for _ in range(3)] == [200, 200, 429]
    assert chat(server, key).status_code == 429


def test_limits_are_per_key_and_per_account(server):
    email, key_a = new_key(server)
    key_b = server.new_key(email, name="second")
    cli(server.data_dir, "users", "set-limits", email, "--rpm", "3", config=server.config)
    assert [chat(server, k).status_code for k in (key_a, key_b, key_a)] == [200, 200, 200]
    assert chat(server, key_b).status_code == 429
    # Another account is not affected.
    _, other = new_key(server)
    assert chat(server, other).status_code == 200


def test_tokens_per_minute(server):
    _, key = new_key(server, tpm=60)
    r = chat(server, key, " ".join(["w"] * 20))
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] == 43  # 23 in, 20 out
    r = chat(server, key, " ".join(["w"] * 20))
    assert r.status_code == 429
    # 43 tokens of a 60-a-minute bucket, plus 23 more: the wait is (66 - 60) tokens at 1 a second.
    assert int(r.headers["Retry-After"]) == 6


def test_concurrency_limit(server):
    _, key = new_key(server, concurrency=1)
    started = threading.Event()
    done: list[int] = []

    def slow():
        with httpx.stream(
            "POST",
            server.base_url + "/openai/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "mock-slow", "messages": [{"role": "user", "content": " ".join(["w"] * 20)}], "stream": True},
            timeout=30,
        ) as r:
            for _ in r.iter_lines():
                started.set()
            done.append(r.status_code)

    t = threading.Thread(target=slow)
    t.start()
    assert started.wait(10)
    r = chat(server, key)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    t.join(30)
    assert done == [200]
    assert chat(server, key).status_code == 200


# ------------------------------------------------------------------------------------ feedback


def feedback(server, key, text, **extra) -> httpx.Response:
    body = {"rating": 4, "category": "quality", "text": text, **extra}
    return httpx.post(server.base_url + "/api/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_feedback_validity_rules(server):
    _, key = new_key(server)
    r = feedback(server, key, "too short")
    assert r.status_code == 201 and r.json()["valid"] is False and "10 visible characters" in r.json()["reason"]
    assert feedback(server, key, "The answer was helpful and correct.").json()["valid"] is True
    repeat = feedback(server, key, "  the ANSWER was helpful   and correct. ").json()
    assert repeat["valid"] is False and "repeats" in repeat["reason"]
    assert feedback(server, key, "Second distinct piece of feedback.").json()["valid"] is True
    assert feedback(server, key, "Third distinct piece of feedback.").json()["valid"] is True
    fourth = feedback(server, key, "Fourth distinct piece of feedback.").json()
    assert fourth["valid"] is False and "3 valid" in fourth["reason"]
    for bad in ({"rating": 9}, {"rating": "x"}, {"category": "nope"}, {"text": 5}, {"text": None}, {"text": "A NUL \x00 in the middle of it."}):
        body = {"rating": 4, "category": "quality", "text": "A perfectly fine text here.", **bad}
        r = httpx.post(server.base_url + "/api/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"


def test_feedback_refresh_and_the_daily_cap_with_the_ledger(server):
    _, key = new_key(server)
    spent = spend(server, key, 800)
    first = feedback(server, key, "First useful feedback about answers.").json()
    assert first["refreshed"] and first["granted"] == spent
    assert first["quota"]["remaining"] == 1000 and first["quota"]["allowance"] == 1000 + spent

    spent2 = spend(server, key, 900)
    second = feedback(server, key, "Second useful feedback about tools.").json()
    # The cap (2,500 a day) allows only part of what a full refresh would need.
    assert second["granted"] == 2500 - (1000 + spent) < spent2
    assert second["quota"]["allowance"] == 2500

    third = feedback(server, key, "Third useful feedback about speed.").json()
    assert third["valid"] and not third["refreshed"] and "maximum of 2,500" in third["message"]

    report = usage(server, key)
    ledger = report["ledger"]
    assert [e["kind"] for e in ledger] == ["daily_allowance", "feedback_refresh", "feedback_refresh"]
    assert sum(e["tokens"] for e in ledger) == report["quota"]["allowance"] == 2500
    assert report["totals"]["billed_tokens"] == report["quota"]["used"] == spent + spent2


def test_feedback_when_the_quota_is_full(server):
    _, key = new_key(server)
    r = feedback(server, key, "Nothing used yet but here is feedback.").json()
    assert r["valid"] and not r["refreshed"] and "already full" in r["message"]


# ------------------------------------------------------------------------------------ usage API


def test_usage_api_shows_only_the_own_account(server):
    _, key_a = new_key(server)
    _, key_b = new_key(server)
    ids_a = {chat(server, key_a).headers["x-request-id"] for _ in range(3)}
    ids_b = {chat(server, key_b).headers["x-request-id"]}
    a, b = usage(server, key_a), usage(server, key_b)
    assert {r["request_id"] for r in a["recent"]} == ids_a
    assert {r["request_id"] for r in b["recent"]} == ids_b
    assert a["totals"]["requests"] == 3 and a["by_model"][0]["model"] == "mock-echo"
    record = a["recent"][0]
    assert {"model", "endpoint", "stream", "input_tokens", "output_tokens", "cached_tokens", "status", "latency_ms"} <= set(record)
    daily = httpx.get(server.base_url + "/api/v1/usage/daily?days=7", headers={"Authorization": f"Bearer {key_a}"}).json()
    assert sum(d["requests"] for d in daily["days"]) == 3
    assert httpx.get(server.base_url + "/api/v1/usage").status_code == 401
    assert httpx.get(server.base_url + "/api/v1/usage?day=2026-13-40", headers={"Authorization": f"Bearer {key_a}"}).status_code == 400


def test_admin_sets_a_quota_and_the_ledger_says_so(server):
    email, key = new_key(server)
    chat(server, key)
    out = cli(server.data_dir, "users", "set-quota", email, "5000", config=server.config).stdout
    assert "5,000" in out and "+4,000" in out
    report = usage(server, key)
    assert report["quota"]["daily_quota"] == 5000
    assert [e["kind"] for e in report["ledger"]] == ["daily_allowance", "admin_adjust"]
    assert sum(e["tokens"] for e in report["ledger"]) == 5000
    printed = cli(server.data_dir, "users", "usage", email, config=server.config).stdout
    assert "5,000 tokens" in printed and "mock-echo" in printed


# ------------------------------------------------------------------------------------ midnight (last: moves the clock)


def test_crossing_beijing_midnight_restores_the_quota_without_rollover(server):
    _, key = new_key(server)
    spend(server, key, 400)
    before = usage(server, key)["quota"]
    assert before["remaining"] < 1000
    # Move the server's clock to five seconds past the next 00:00 Beijing time.
    offset = float(server.clock.read_text())
    server.clock.write_text(str(offset + before["refreshes_at_unix"] - time.time() - offset + 5))
    after = usage(server, key)["quota"]
    assert after["day"] != before["day"]
    assert (after["used"], after["granted"], after["remaining"]) == (0, 0, 1000)  # no rollover
    r = chat(server, key)
    assert r.status_code == 200
    assert usage(server, key)["quota"]["used"] == r.json()["usage"]["total_tokens"]
    # Yesterday's usage is still there, under yesterday.
    assert usage(server, key, day=before["day"])["quota"]["used"] == before["used"]
