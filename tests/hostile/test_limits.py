"""The request limits are settings: on a server with small ones, a request just inside each is
served, and one just past it gets a clear 4xx in the route's own format (413 for the body's
size, 431 for the headers', 400 for the rest)."""

from __future__ import annotations

import json

import httpx
import pytest

from longcat.config import ConfigError, load_settings
from tests.support.hostile import check_envelope, raw_request

pytestmark = pytest.mark.fuzz

SERVER_SETTINGS = """
max_body_mb = 1
max_json_depth = 16
max_messages = 10
max_tools = 3
max_content_blocks = 20
max_header_kb = 8
"""

MSG = {"role": "user", "content": "hi"}
TOOL_OPENAI = {"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}
TOOL_ANTHROPIC = {"name": "t", "input_schema": {"type": "object"}}
TOOL_RESPONSES = {"type": "function", "name": "t", "parameters": {"type": "object"}}


def chat(messages=None, tools=None, **extra):
    return {"model": "mock-echo", "messages": messages or [MSG], **({"tools": tools} if tools else {}), **extra}


def anthropic(messages=None, tools=None, **extra):
    return {"model": "mock-echo", "max_tokens": 5, "messages": messages or [MSG], **({"tools": tools} if tools else {}), **extra}


def responses(messages=None, tools=None, **extra):
    items = [{"type": "message", **m} for m in (messages or [MSG])]
    return {"model": "mock-echo", "input": items, **({"tools": tools} if tools else {}), **extra}


# route, request builder, a tool of its format
ROUTES = [
    ("/openai/v1/chat/completions", chat, TOOL_OPENAI),
    ("/anthropic/v1/messages", anthropic, TOOL_ANTHROPIC),
    ("/anthropic/v1/messages/count_tokens", anthropic, TOOL_ANTHROPIC),
    ("/openai/v1/responses", responses, TOOL_RESPONSES),
]
IDS = [r[0] for r in ROUTES]


def post(server, path: str, body: bytes | dict) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.base_url + path, content=content, timeout=30,
                   headers={"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"})
    check_envelope(path, r.status_code, r.headers, r.content)
    return r


def refused(r: httpx.Response, status: int, words: str) -> dict:
    assert r.status_code == status, r.text[:300]
    err = r.json()["error"]
    assert words in err["message"], err
    return err


@pytest.mark.parametrize(("path", "build", "tool"), ROUTES, ids=IDS)
def test_messages_and_tools(server, path, build, tool):
    assert post(server, path, build([MSG] * 10, [tool] * 3)).status_code == 200
    refused(post(server, path, build([MSG] * 11)), 400, "at most 10 messages")
    refused(post(server, path, build([MSG], [tool] * 4)), 400, "3 tools")


@pytest.mark.parametrize(("path", "build", "tool"), ROUTES, ids=IDS)
def test_content_blocks_in_all(server, path, build, tool):
    kind = "input_text" if "responses" in path else "text"
    message = lambda n: {"role": "user", "content": [{"type": kind, "text": "x"}] * n}  # noqa: E731
    assert post(server, path, build([message(10), message(10)])).status_code == 200
    refused(post(server, path, build([message(10), message(11)])), 400, "at most 20 content blocks")
    # 20,000 blocks in one message (most of the 1 MiB allowed): refused before any is decoded.
    refused(post(server, path, build([message(20_000)])), 400, "content blocks")


def test_tool_results_count_their_own_blocks(server):
    result = {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "x"}] * 19}
    call = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "t", "input": {}}]}
    body = anthropic([MSG, call, {"role": "user", "content": [result]}], [TOOL_ANTHROPIC])
    refused(post(server, "/anthropic/v1/messages", body), 400, "content blocks")


VALID = {path: build() for path, build, _ in ROUTES} | {"/api/v1/feedback": {"rating": 3, "text": "fine"}, "/api/v1/keys": {"name": "depth key"}}


@pytest.mark.parametrize("path", sorted(VALID))
def test_nesting_depth(server, path):
    def nested(depth: int) -> bytes:  # the body itself is level 1
        return json.dumps(VALID[path]).encode()[:-1] + b', "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    assert post(server, path, nested(16)).status_code in (200, 201)
    err = refused(post(server, path, nested(17)), 400, "nests deeper than 16 levels")
    assert err.get("code") == "invalid_json"
    refused(post(server, path, nested(100_000)), 400, "nests deeper than 16 levels")  # within the console's 256 KiB


@pytest.mark.parametrize(("path", "build", "tool"), ROUTES, ids=IDS)
def test_body_size(server, path, build, tool):
    text = "a" * (2**20 - 400)
    assert post(server, path, build([{"role": "user", "content": text}])).status_code == 200
    err = refused(post(server, path, build([{"role": "user", "content": text + "a" * 1000}])), 413, "larger than 1 MiB")
    assert err.get("code") == "request_too_large"
    if path.startswith("/anthropic"):
        assert err["type"] == "request_too_large"


@pytest.mark.parametrize("path", [*IDS, "/api/v1/keys", "/keys"])
def test_header_size(server, path):
    def send(size: int):
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {server.key}\r\n"
        return raw_request(server.port, head.encode() + b"X-Pad: " + b"p" * size + b"\r\nContent-Length: 0\r\n\r\n")

    inside = send(7 * 1024)
    assert inside.status != 431, inside.raw[:200]
    over = send(9 * 1024)
    assert over.status == 431, over.raw[:200]
    check_envelope(path, over.status, over.headers, over.body)
    assert "larger than 8 KiB" in over.body.decode()


def test_limits_are_checked_when_the_settings_load(tmp_path):
    for name, value in [("max_json_depth", "0"), ("max_json_depth", "257"), ("max_messages", "-1"), ("max_body_mb", "0")]:
        with pytest.raises(ConfigError, match=f"(?i){name}.*(at least|from 1 to 256|positive)"):
            load_settings(env={"LONGCAT_" + name.upper(): value}, data_dir=str(tmp_path))
    assert load_settings(env={"LONGCAT_MAX_JSON_DEPTH": "256"}, data_dir=str(tmp_path)).max_json_depth == 256
