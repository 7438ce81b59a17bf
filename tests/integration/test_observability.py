"""Metrics, access lines, request ids, /healthz and /readyz, on real servers with real SDKs."""

from __future__ import annotations

import hashlib
import json
import re
import time

import anthropic
import httpx
import openai
import pytest

from tests.support.console import Browser, console_config
from tests.support.server import (
    MOCK_CATALOG,
    REPO,
    Server,
    access_lines,
    free_port,
    scale_out_backend,
    write_config,
)

METRICS_TOKEN = "metrics-token-for-tests-7f3a"
PASSWORD = "planted password 8c1e2d"  # noqa: S105 (what the log must never show)
CHAT = "/openai/v1/chat/completions"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Mock models and the console, JSON logs, metrics on the main port (token) and on a port of their own."""
    data = tmp_path_factory.mktemp("observe")
    metrics_port = free_port()
    extra = f'log_format = "json"\nmetrics_token = "{METRICS_TOKEN}"\nmetrics_port = {metrics_port}\n'
    config = write_config(data / "config.toml", console_config(extra))
    srv = Server(data, config, free_port()).start()
    srv.metrics_port = metrics_port  # type: ignore[attr-defined]
    srv.key = srv.new_key("observer@example.com")
    yield srv
    srv.stop()


def scrape(srv: Server) -> str:
    r = httpx.get(srv.base_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def line_for(srv: Server, request_id: str, timeout: float = 5) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [a for a in access_lines(srv) if a["request_id"] == request_id]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no access line for {request_id}: {access_lines(srv)[-3:]}")


def post_chat(srv: Server, key: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(srv.base_url + CHAT, json=body, headers={"Authorization": f"Bearer {key}", **headers}, timeout=30)


# ------------------------------------------------------------------------------ secrets


def test_no_key_password_or_key_hash_in_any_log_line(server):
    b = Browser(server.base_url)
    assert b.register(password=PASSWORD).status_code == 303
    b.client.cookies.clear()
    assert b.login(b.email, PASSWORD).status_code == 303  # sign in again, with the planted password
    _key_id, secret = b.create_key("planted")
    oai = openai.OpenAI(base_url=server.base_url + "/openai/v1", api_key=secret, max_retries=0)
    reply = oai.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content == "hello there"
    stream = oai.chat.completions.create(model="mock-echo", stream=True, messages=[{"role": "user", "content": "streamed"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "streamed"
    claude = anthropic.Anthropic(base_url=server.base_url + "/anthropic", api_key=secret, max_retries=0)
    assert claude.messages.create(model="mock-echo", max_tokens=50, messages=[{"role": "user", "content": "hi"}]).content
    wrong = secret[:-4] + ("aaaa" if not secret.endswith("aaaa") else "bbbb")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url + "/openai/v1", api_key=wrong, max_retries=0).models.list()
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.base_url + "/anthropic", api_key=wrong, max_retries=0).messages.create(
            model="mock-echo", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert Browser(server.base_url).login(b.email, PASSWORD + " wrong").status_code != 303
    time.sleep(0.3)

    log = server.log()
    mine = [a for a in access_lines(server) if a.get("account_id") is not None and a.get("model") == "mock-echo"]
    assert len(mine) >= 3, mine  # the good calls were logged, with ids, not keys
    for planted in (secret, wrong, PASSWORD, hashlib.sha256(secret.encode()).hexdigest(), secret[3:]):
        assert planted not in log
    # Every line on stderr is one JSON object; only the first-start banner (stdout) is text.
    json_lines = [line for line in log.splitlines() if line.startswith("{")]
    assert len(json_lines) > 10 and all(json.loads(line)["logger"] for line in json_lines)


# ------------------------------------------------------------------------------ access lines and metrics


def test_a_good_call_is_one_access_line_with_its_tokens_and_counts(server):
    before = scrape(server)
    oai = openai.OpenAI(base_url=server.base_url + "/openai/v1", api_key=server.key, max_retries=0)
    raw = oai.chat.completions.with_raw_response.create(
        model="mock-echo", messages=[{"role": "user", "content": "count these four words"}])
    reply = raw.parse()
    line = line_for(server, raw.headers["x-request-id"])
    assert line["request_id"].startswith("req_") and "internal_id" not in line
    assert (line["endpoint"], line["status"], line["model"], line["stream"], line["outcome"]) == (CHAT, 200, "mock-echo", False, "ok")
    assert (line["input_tokens"], line["output_tokens"]) == (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    assert line["client"] == "127.0.0.1" and line["latency_ms"] >= line["ttft_ms"] > 0
    assert isinstance(line["account_id"], int) and isinstance(line["key_id"], int)
    after = scrape(server)
    for name, labels, delta in (
        ("longcat_requests_total", {"endpoint": CHAT, "model": "mock-echo", "status": "200"}, 1),
        ("longcat_request_duration_seconds_count", {"endpoint": CHAT, "model": "mock-echo"}, 1),
        ("longcat_time_to_first_token_seconds_count", {"endpoint": CHAT, "model": "mock-echo"}, 1),
        ("longcat_tokens_total", {"model": "mock-echo", "kind": "input"}, reply.usage.prompt_tokens),
        ("longcat_tokens_total", {"model": "mock-echo", "kind": "output"}, reply.usage.completion_tokens),
    ):
        assert value(after, name, **labels) - value(before, name, **labels) == delta, (name, labels)
    assert value(after, "longcat_inflight_requests", model="mock-echo") == 0
    assert value(after, "longcat_usage_write_seconds_count") >= 1


def test_refused_requests_each_leave_an_access_line_and_a_count(server):
    limited = server.new_key("limited@example.com", name="one-a-minute", rpm=1)
    before = scrape(server)
    hello = {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}

    bad_key = post_chat(server, "ak_" + "x" * 40, hello)
    too_long = post_chat(server, server.key, {"model": "mock-small", "messages": [{"role": "user", "content": "word " * 400}]})
    first = post_chat(server, limited, hello)
    second = post_chat(server, limited, hello)
    unknown = post_chat(server, server.key, {**hello, "model": "no-such-model"})
    assert (bad_key.status_code, too_long.status_code, first.status_code, second.status_code, unknown.status_code) == (
        401, 400, 200, 429, 400)

    expect = [(bad_key, "invalid_api_key", None), (too_long, "context_length_exceeded", "mock-small"),
              (second, "rate_limit_exceeded", None), (unknown, "invalid_parameter", "unknown")]
    for response, code, model in expect:
        assert response.json()["error"]["code"] == code
        line = line_for(server, response.headers["x-request-id"])
        assert (line["status"], line["error"], line["endpoint"]) == (response.status_code, code, CHAT), line
        assert line.get("model") == model and "outcome" not in line  # refused before any engine ran
    assert "account_id" not in line_for(server, bad_key.headers["x-request-id"])
    assert line_for(server, second.headers["x-request-id"])["account_id"] == line_for(server, first.headers["x-request-id"])["account_id"]

    after = scrape(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("longcat_requests_total", endpoint=CHAT, model="none", status="401") == 1
    assert grew("longcat_requests_total", endpoint=CHAT, model="mock-small", status="400") == 1
    assert grew("longcat_requests_total", endpoint=CHAT, model="none", status="429") == 1
    assert grew("longcat_requests_total", endpoint=CHAT, model="unknown", status="400") == 1
    assert grew("longcat_rate_limited_total", scope="rpm") == 1
    # No label carries the model id a client made up, a raw path, or an account.
    assert "no-such-model" not in after and "observer@example.com" not in after


def test_a_spent_quota_is_a_403_line_and_a_count(server):
    key = server.new_key("spent@example.com", name="spent")
    server.cli("users", "set-quota", "spent@example.com", "1")
    before = scrape(server)
    r = post_chat(server, key, {"model": "mock-echo", "messages": [{"role": "user", "content": "hello again"}]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_quota", r.text
    line = line_for(server, r.headers["x-request-id"])
    assert (line["status"], line["error"], line["model"]) == (403, "insufficient_quota", "mock-echo")
    assert "outcome" not in line and "input_tokens" not in line  # admitted, but refused before the engine ran
    after = scrape(server)
    assert value(after, "longcat_quota_refused_total") - value(before, "longcat_quota_refused_total") == 1
    assert value(after, "longcat_inflight_requests", model="mock-echo") == 0


def test_unmatched_paths_are_one_bounded_label(server):
    before = scrape(server)
    for i in range(3):
        r = httpx.get(f"{server.base_url}/openai/v1/no-such-route-{i}", timeout=10)
        assert r.status_code == 404 and r.headers["x-request-id"].startswith("req_")
    after = scrape(server)
    assert value(after, "longcat_requests_total", endpoint="unmatched", model="none", status="404") - value(
        before, "longcat_requests_total", endpoint="unmatched", model="none", status="404") == 3
    assert "no-such-route" not in after
    r = httpx.get(f"{server.base_url}/openai/v1/models/mock-echo", headers={"Authorization": f"Bearer {server.key}"})
    assert line_for(server, r.headers["x-request-id"])["endpoint"] == "/openai/v1/models/{model_id:path}"


def test_a_sane_incoming_request_id_is_kept_and_others_replaced(server):
    hello = {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}
    kept = post_chat(server, server.key, hello, **{"x-request-id": "trace-42.a:b_c"})
    assert kept.status_code == 200 and kept.headers["x-request-id"] == "trace-42.a:b_c"
    line = line_for(server, "trace-42.a:b_c")
    assert line["internal_id"].startswith("req_") and line["outcome"] == "ok"
    # Another request may reuse the same id: its usage is still recorded under its own id.
    again = post_chat(server, server.key, hello, **{"x-request-id": "trace-42.a:b_c"})
    assert again.status_code == 200
    for bad in ("has space", "x" * 129, "semi;colon", "ünïcode".encode(), "new\\nline"):
        r = post_chat(server, server.key, hello, **{"x-request-id": bad})
        assert r.status_code == 200 and re.fullmatch(r"req_[0-9a-f]{24}", r.headers["x-request-id"]), bad
    claude = anthropic.Anthropic(base_url=server.base_url + "/anthropic", api_key=server.key, max_retries=0,
                                 default_headers={"x-request-id": "claude-trace-1"})
    raw = claude.messages.with_raw_response.create(model="mock-echo", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["request-id"] == raw.headers["x-request-id"] == "claude-trace-1"
    assert line_for(server, "claude-trace-1")["endpoint"] == "/anthropic/v1/messages"


def test_a_client_that_leaves_mid_stream_gets_its_final_counts_logged(server):
    body = {"model": "mock-slow", "stream": True, "messages": [{"role": "user", "content": "word " * 200}]}
    with httpx.stream("POST", server.base_url + CHAT, json=body, headers={"Authorization": f"Bearer {server.key}"}, timeout=30) as r:
        rid = r.headers["x-request-id"]
        received = 0
        for text in r.iter_lines():
            received += text.startswith("data: ") and '"content":"' in text and '"role"' not in text
            if received >= 5:
                break
    line = line_for(server, rid, timeout=10)
    assert line["outcome"] == "client_closed" and line["stream"] is True, line
    assert received <= line["output_tokens"] < 100, line  # 200 words at 20 ms each: cut well before the end


# ------------------------------------------------------------------------------ /metrics


def test_metrics_on_the_main_port_need_the_token(server):
    url = server.base_url + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": METRICS_TOKEN}).status_code == 401
    text = scrape(server)
    assert "# TYPE longcat_requests_total counter" in text and "process_resident_memory_bytes" in text
    assert METRICS_TOKEN not in server.log()


def test_metrics_port_serves_without_a_token_on_loopback(server):
    r = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
    assert r.status_code == 200 and "longcat_requests_total" in r.text


def test_metrics_are_404_on_the_main_port_without_a_token(mock_server):
    r = httpx.get(mock_server.base_url + "/metrics")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_the_dashboard_uses_only_exported_metrics(server):
    dashboard = json.loads((REPO / "deploy" / "grafana" / "longcat-dashboard.json").read_text())
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dashboard)
    assert len(exprs) >= 12
    text = scrape(server)
    exported = set(re.findall(r"^# TYPE (\w+) (\w+)", text, re.M))
    names = set()
    for name, kind in exported:
        names.add(name)
        if kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        if kind == "counter" and not name.endswith("_total"):
            names.add(name + "_total")
    used = {n for e in exprs for n in re.findall(r"\blongcat_\w+", e)}
    assert used and used <= names, used - names
    for e in exprs:  # every label a panel groups or filters by is one the metrics have
        for label in re.findall(r"by \(([^)]*)\)", e):
            assert set(x.strip() for x in label.split(",")) <= {"endpoint", "model", "status", "kind", "scope", "replica", "outcome", "le"}, e


# ------------------------------------------------------------------------------ health and readiness


def test_healthz_and_readyz(server):
    r = httpx.get(server.base_url + "/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = httpx.get(server.base_url + "/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and body["checks"]["database"] == "ok" and body["checks"]["draining"] == "ok"
    assert body["checks"]["model:mock-echo"] == "ok" and "redis" not in body["checks"]
    assert httpx.get(server.base_url + "/health").json()["status"] == "ok"  # unchanged


def test_readyz_checks_postgres_and_redis(mock_server):
    r = httpx.get(mock_server.base_url + "/readyz")
    assert r.status_code == 200 and r.json()["checks"]["redis"] == "ok" and r.json()["checks"]["database"] == "ok"


def test_an_unreachable_upstream_makes_readyz_503_and_counts_its_refusals(tmp_path, server):
    dead = free_port()
    catalog = MOCK_CATALOG + f"""
[[models]]
id = "up-dead"
engine = "openai_compat"
base_url = "http://user:hunter2@127.0.0.1:{dead}/v1"
timeout = 2

[[models]]
id = "up-live"
engine = "openai_compat"
base_url = "{server.base_url}/openai/v1"
upstream_model = "mock-echo"
api_key = "{server.key}"
"""
    config = write_config(tmp_path / "config.toml", f'metrics_token = "{METRICS_TOKEN}"\n' + catalog)
    front = Server(tmp_path, config, free_port()).start()
    try:
        r = httpx.get(front.base_url + "/readyz", timeout=10)
        assert r.status_code == 503, r.text
        checks = r.json()["checks"]
        assert checks["model:up-live"] == "ok" and checks["database"] == "ok"
        assert "does not answer" in checks["model:up-dead"]
        assert str(dead) not in r.text and "hunter2" not in r.text and "127.0.0.1" not in r.text
        key = front.new_key("front@example.com")
        oai = openai.OpenAI(base_url=front.base_url + "/openai/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.APIStatusError):
            oai.chat.completions.create(model="up-dead", messages=[{"role": "user", "content": "hi"}])
        assert oai.chat.completions.create(model="up-live", messages=[{"role": "user", "content": "hi"}]).choices
        text = scrape(front)
        assert value(text, "longcat_upstream_requests_total", model="up-dead", replica=f"127.0.0.1:{dead}", outcome="failed") >= 1
        assert value(text, "longcat_upstream_requests_total", model="up-live", replica=f"127.0.0.1:{server.port}", outcome="ok") == 1
        assert "hunter2" not in text and "hunter2" not in front.log()
    finally:
        front.stop()


def test_readyz_turns_503_while_draining(tmp_path):
    """In process: the lifespan's end (or SIGTERM) marks the gateway as draining."""
    from starlette.testclient import TestClient

    from longcat.app import create_app
    from longcat.config import load_settings

    config = write_config(tmp_path / "config.toml", MOCK_CATALOG)
    app = create_app(load_settings(config, data_dir=str(tmp_path)))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        app.state.gateway.mark_draining()
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["draining"] == "the server is shutting down"
        assert client.get("/healthz").status_code == 200


# ------------------------------------------------------------------------------ several workers


def test_workers_report_together(tmp_path):
    """`longcat serve --workers 2` (PostgreSQL + Redis, one PROMETHEUS_MULTIPROC_DIR for both): a
    scrape, whichever worker answers it, counts the requests every worker served, and the
    metrics port is served once for all."""
    config = write_config(tmp_path / "config.toml", f'metrics_token = "{METRICS_TOKEN}"\nmetrics_port = {free_port()}\n' + MOCK_CATALOG)
    with scale_out_backend("observe_workers") as backend:
        srv = Server(tmp_path, config, free_port(), env={**backend, "LONGCAT_WORKERS": "2"}).start(timeout=120)
        try:
            deadline = time.monotonic() + 120
            while "2 workers serving" not in srv.log() and time.monotonic() < deadline:
                time.sleep(0.1)
            key = srv.new_key("workers@example.com")
            hello = {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}
            pids = set()
            for _ in range(12):  # a fresh connection each: the kernel hands them to both workers
                r = post_chat(srv, key, hello)
                assert r.status_code == 200
                pids.add(line_for(srv, r.headers["x-request-id"])["pid"])
            assert len(pids) == 2, pids
            for _ in range(4):
                text = scrape(srv)
                assert value(text, "longcat_requests_total", endpoint=CHAT, model="mock-echo", status="200") == 12
                assert value(text, "longcat_tokens_total", model="mock-echo", kind="output") == 12
                assert value(text, "longcat_inflight_requests", model="mock-echo") == 0
            assert "served by another worker" in srv.log()
            shared = tmp_path / "metrics-multiproc"
            assert len(list(shared.glob("counter_*.db"))) >= 2
        finally:
            srv.stop()
