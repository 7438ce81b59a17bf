"""The Anthropic routes over plain HTTP: headers, auth forms, error envelopes, stream bytes, pings."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.anthropic_stream import check_stream, parse_sse
from tests.support.server import MOCK_CATALOG, Server, free_port, usage_lines, write_config

HELLO = {"model": "mock-echo", "max_tokens": 50, "messages": [{"role": "user", "content": "Hello!"}]}


def post(server, path="/anthropic/v1/messages", *, body=None, headers=None, content=None, key=True):
    h = {"anthropic-version": "2023-06-01"}
    if key:
        h["x-api-key"] = server.key
    h.update(headers or {})
    return httpx.post(server.base_url + path, json=body if content is None else None, content=content, headers=h, timeout=30)


def assert_error(response, status, kind, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) >= {"type", "message", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == (kind, code)
    assert body["error"]["message"]
    return body["error"]


def test_warm_up_head_and_root(mock_server):
    for path in ("/anthropic", "/anthropic/"):
        assert httpx.head(mock_server.base_url + path).status_code == 200
        assert httpx.get(mock_server.base_url + path).status_code == 200


def test_beta_query_and_claude_code_headers_are_accepted(mock_server):
    headers = {
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27",
        "anthropic-dangerous-direct-browser-access": "true",
        "x-app": "cli",
        "X-Claude-Code-Session-Id": "f4550053-c3a6-4461-8e9c-bf3cacbf976f",
        "X-Stainless-Retry-Count": "0",
    }
    response = post(mock_server, "/anthropic/v1/messages?beta=true", body=HELLO, headers=headers)
    assert response.status_code == 200
    assert response.json()["content"] == [{"type": "text", "text": "Hello!"}]
    assert response.headers["request-id"].startswith("req_")
    counted = post(mock_server, "/anthropic/v1/messages/count_tokens?beta=true", body={k: v for k, v in HELLO.items() if k != "max_tokens"})
    assert counted.status_code == 200 and counted.json() == {"input_tokens": response.json()["usage"]["input_tokens"]}


@pytest.mark.parametrize(
    "headers",
    [
        lambda k: {"x-api-key": k},
        lambda k: {"Authorization": f"Bearer {k}"},
        # The seed's Anthropic SDK example: api_key="Authorization: Bearer <key>" plus a Bearer header.
        lambda k: {"x-api-key": f"Authorization: Bearer {k}", "Authorization": f"Bearer {k}"},
        lambda k: {"x-api-key": f"Authorization: Bearer {k}"},
        lambda k: {"x-api-key": "ak_stale_key", "Authorization": f"Bearer {k}"},
    ],
)
def test_every_accepted_key_form(mock_server, headers):
    assert post(mock_server, body=HELLO, headers=headers(mock_server.key), key=False).status_code == 200


def test_auth_errors(mock_server):
    missing = assert_error(post(mock_server, body=HELLO, key=False), 401, "authentication_error", "invalid_api_key")
    assert "x-api-key" in missing["message"]
    assert_error(post(mock_server, body=HELLO, headers={"x-api-key": "ak_nope"}), 401, "authentication_error", "invalid_api_key")
    listing = httpx.get(mock_server.base_url + "/anthropic/v1/models")
    assert_error(listing, 401, "authentication_error", "invalid_api_key")


def test_body_errors(mock_server):
    assert_error(post(mock_server, content=b"{not json"), 400, "invalid_request_error", "invalid_json")
    assert_error(post(mock_server, content=b""), 400, "invalid_request_error", "invalid_json")
    assert_error(post(mock_server, content=b"[1, 2]"), 400, "invalid_request_error", "invalid_json")
    missing = assert_error(post(mock_server, body={"model": "mock-echo", "messages": HELLO["messages"]}),
                           400, "invalid_request_error", "invalid_parameter")
    assert "max_tokens" in missing["message"]
    wrong = assert_error(post(mock_server, body={**HELLO, "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
                         400, "invalid_request_error", "invalid_parameter")
    assert "messages[0].content[0].type" in wrong["message"]


def test_route_errors_use_the_anthropic_envelope(mock_server):
    assert_error(post(mock_server, "/anthropic/v1/nothing", body=HELLO), 404, "not_found_error", "not_found")
    wrong_method = httpx.get(mock_server.base_url + "/anthropic/v1/messages", headers={"x-api-key": mock_server.key})
    assert_error(wrong_method, 405, "invalid_request_error", "method_not_allowed")


@pytest.mark.parametrize(
    ("model", "blocks", "stop_reason"),
    [
        ("mock-echo", ["text"], "end_turn"),
        ("mock-thinking", ["thinking", "text"], "end_turn"),
        ("LongCat-2.0-Preview", ["tool_use"], "tool_use"),
    ],
)
def test_streams_are_valid_event_by_event(mock_server, model, blocks, stop_reason):
    tools = [{"name": "Bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}]
    body = {**HELLO, "model": model, "stream": True, "tools": tools}
    with httpx.stream("POST", mock_server.base_url + "/anthropic/v1/messages", json=body,
                      headers={"x-api-key": mock_server.key}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        summary = check_stream(parse_sse(response.read().decode()))
    assert [b["type"] for b in summary.blocks] == blocks and summary.stop_reason == stop_reason
    assert summary.pings == 0  # a quick engine needs none


def test_stream_error_before_any_output_is_a_plain_http_error(mock_server):
    response = post(mock_server, body={**HELLO, "model": "mock-small", "stream": True, "messages": [
        {"role": "user", "content": "word " * 400}]})
    assert response.headers["content-type"] == "application/json"
    assert_error(response, 400, "invalid_request_error", "context_length_exceeded")


def test_client_disconnect_mid_stream_is_settled(mock_server):
    body = {**HELLO, "model": "mock-slow", "stream": True, "messages": [{"role": "user", "content": "word " * 200}]}
    with httpx.stream("POST", mock_server.base_url + "/anthropic/v1/messages", json=body,
                      headers={"x-api-key": mock_server.key}, timeout=30) as response:
        request_id = response.headers["request-id"]
        lines = response.iter_lines()
        for _ in range(8):
            next(lines)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        settled = [a for a in usage_lines(mock_server) if a["request_id"] == request_id]
        if settled:
            break
        time.sleep(0.05)
    assert settled and settled[0]["outcome"] == "client_closed", settled


# ------------------------------------------------------------------------------------- pings

SLOW_START = """
[[models]]
id = "mock-queued"
engine = "mock"
first_token_delay = 1.2

[[models]]
id = "mock-pausing"
engine = "mock"
token_delay = 0.5
"""


@pytest.fixture(scope="module")
def ping_server(tmp_path_factory):
    """Pings every 0.2 s instead of 10 s, so silences are quick to provoke."""
    data = tmp_path_factory.mktemp("ping-server")
    config = write_config(data / "config.toml", MOCK_CATALOG + SLOW_START)
    server = Server(data, config, free_port(), env={"LONGCAT_STREAM_PING_INTERVAL": "0.2"}).start()
    server.key = server.new_key("pinger@example.com")
    yield server
    server.stop()


def timed_events(server, body):
    started = time.monotonic()
    out = []
    with httpx.stream("POST", server.base_url + "/anthropic/v1/messages", json={**body, "stream": True},
                      headers={"x-api-key": server.key}, timeout=30) as response:
        assert response.status_code == 200
        buffer = ""
        for chunk in response.iter_text():
            buffer += chunk
            while "\n\n" in buffer:
                raw, buffer = buffer.split("\n\n", 1)
                out.append((time.monotonic() - started, parse_sse(raw + "\n\n")[0]))
    return out


def test_a_silent_engine_gets_the_stream_started_then_pinged(ping_server):
    events = timed_events(ping_server, {**HELLO, "model": "mock-queued"})
    summary = check_stream([e for _, e in events])
    assert summary.text == "Hello!" and summary.pings >= 3
    names = [e[0] for _, e in events]
    assert names[:2] == ["message_start", "ping"]
    first_content = next(t for t, e in events if e[0] == "content_block_start")
    assert events[0][0] < 0.9 < first_content  # bytes flowed long before the engine spoke


def test_pings_fill_silences_between_tokens(ping_server):
    events = timed_events(ping_server, {**HELLO, "model": "mock-pausing", "messages": [{"role": "user", "content": "a b c"}]})
    summary = check_stream([e for _, e in events])
    assert summary.text == "a b c" and summary.pings >= 3
    names = [e[0] for _, e in events]
    assert names.index("ping") > names.index("message_start")


def test_an_error_after_the_stream_started_is_an_error_event(ping_server):
    """The prompt is checked at admission; a failure after the stream began is reported in-stream."""
    events = timed_events(ping_server, {**HELLO, "model": "mock-fail", "messages": [{"role": "user", "content": "a b c d e"}]})
    summary = check_stream([e for _, e in events])
    assert summary.error is not None and summary.error["code"] == "upstream_error"
