"""Every bad input gets its status, error type, code and a message that says what is wrong.
Nothing is ever a 500 or a hang."""

from __future__ import annotations

import httpx
import pytest

URL = "/openai/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]

# (name, body (dict, or raw bytes), status, type, code, words the message must contain)
CASES = [
    ("invalid json", b"{not json", 400, "invalid_request_error", "invalid_json", "not valid JSON"),
    ("empty body", b"", 400, "invalid_request_error", "invalid_json", "empty"),
    ("array body", b"[1, 2]", 400, "invalid_request_error", "invalid_json", "JSON object"),
    ("missing model", {"messages": OK_MESSAGES}, 400, "invalid_request_error", "invalid_parameter", "'model' is required"),
    ("model wrong type", {"model": 5, "messages": OK_MESSAGES}, 400, "invalid_request_error", "invalid_parameter", "'model' must be a string"),
    ("unknown model", {"model": "gpt-9", "messages": OK_MESSAGES}, 400, "invalid_request_error", "invalid_parameter", "'gpt-9' does not exist"),
    ("missing messages", {"model": "mock-echo"}, 400, "invalid_request_error", "invalid_parameter", "'messages' must be a non-empty array"),
    ("empty messages", {"model": "mock-echo", "messages": []}, 400, "invalid_request_error", "invalid_parameter", "non-empty"),
    ("messages not array", {"model": "mock-echo", "messages": "hi"}, 400, "invalid_request_error", "invalid_parameter", "'messages' must be an array"),
    ("message not object", {"model": "mock-echo", "messages": ["hi"]}, 400, "invalid_request_error", "invalid_parameter", "'messages[0]' must be an object"),
    ("bad role", {"model": "mock-echo", "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_request_error", "invalid_parameter", "'messages[0].role'"),
    ("content wrong type", {"model": "mock-echo", "messages": [{"role": "user", "content": 5}]}, 400, "invalid_request_error", "invalid_parameter", "'messages[0].content' must be a string or an array"),
    ("unsupported content type", {"model": "mock-echo", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, 400, "invalid_request_error", "invalid_parameter", "'input_audio' is not supported"),
    ("image on a text model", {"model": "mock-echo", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400, "invalid_request_error", "invalid_parameter", "does not accept images"),
    ("only system messages", {"model": "mock-echo", "messages": [{"role": "system", "content": "x"}]}, 400, "invalid_request_error", "invalid_parameter", "at least one user"),
    ("tool message without id", {"model": "mock-echo", "messages": [{"role": "tool", "content": "x"}]}, 400, "invalid_request_error", "invalid_parameter", "tool_call_id"),
    ("temperature wrong type", {"model": "mock-echo", "messages": OK_MESSAGES, "temperature": "hot"}, 400, "invalid_request_error", "invalid_parameter", "'temperature' must be a number"),
    ("temperature too high", {"model": "mock-echo", "messages": OK_MESSAGES, "temperature": 3}, 400, "invalid_request_error", "invalid_parameter", "between 0 and 2"),
    ("top_p too high", {"model": "mock-echo", "messages": OK_MESSAGES, "top_p": 1.5}, 400, "invalid_request_error", "invalid_parameter", "'top_p'"),
    ("max_tokens zero", {"model": "mock-echo", "messages": OK_MESSAGES, "max_tokens": 0}, 400, "invalid_request_error", "invalid_parameter", "at least 1"),
    ("max_tokens fractional", {"model": "mock-echo", "messages": OK_MESSAGES, "max_tokens": 1.5}, 400, "invalid_request_error", "invalid_parameter", "integer"),
    ("max_tokens over max output", {"model": "mock-small", "messages": OK_MESSAGES, "max_tokens": 101}, 400, "invalid_request_error", "invalid_parameter", "at most 100"),
    ("prompt over context window", {"model": "mock-small", "messages": [{"role": "user", "content": "word " * 300}]}, 400, "invalid_request_error", "context_length_exceeded", "context window of 200"),
    ("n above one", {"model": "mock-echo", "messages": OK_MESSAGES, "n": 2}, 400, "invalid_request_error", "invalid_parameter", "'n'"),
    ("stream wrong type", {"model": "mock-echo", "messages": OK_MESSAGES, "stream": "yes"}, 400, "invalid_request_error", "invalid_parameter", "'stream' must be a boolean"),
    ("stop wrong type", {"model": "mock-echo", "messages": OK_MESSAGES, "stop": 5}, 400, "invalid_request_error", "invalid_parameter", "'stop'"),
    ("tool without name", {"model": "mock-echo", "messages": OK_MESSAGES, "tools": [{"type": "function", "function": {}}]}, 400, "invalid_request_error", "invalid_parameter", "'tools[0].function.name' is required"),
    ("tool_choice unknown tool", {"model": "mock-echo", "messages": OK_MESSAGES, "tools": [{"type": "function", "function": {"name": "a"}}], "tool_choice": {"type": "function", "function": {"name": "b"}}}, 400, "invalid_request_error", "invalid_parameter", "'b'"),
    ("tool_choice nonsense", {"model": "mock-echo", "messages": OK_MESSAGES, "tool_choice": "sometimes"}, 400, "invalid_request_error", "invalid_parameter", "'tool_choice'"),
    ("response_format bad", {"model": "mock-echo", "messages": OK_MESSAGES, "response_format": {"type": "xml"}}, 400, "invalid_request_error", "invalid_parameter", "'response_format.type'"),
    ("json_schema without schema", {"model": "mock-echo", "messages": OK_MESSAGES, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 400, "invalid_request_error", "invalid_parameter", "schema"),
    ("thinking bad", {"model": "mock-echo", "messages": OK_MESSAGES, "thinking": {"type": "maybe"}}, 400, "invalid_request_error", "invalid_parameter", "'thinking.type'"),
]


@pytest.mark.parametrize("name, body, status, etype, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(mock_server, name, body, status, etype, code, words):
    headers = {"Authorization": f"Bearer {mock_server.key}", "Content-Type": "application/json"}
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(mock_server.base_url + URL, headers=headers, timeout=10, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == (etype, code)
    assert words in error["message"], error["message"]


@pytest.mark.parametrize(
    "headers, words",
    [
        ({}, "No API key"),
        ({"Authorization": "Bearer ak_not_a_real_key"}, "invalid"),
        ({"x-api-key": "ak_not_a_real_key"}, "invalid"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid"),
    ],
)
def test_missing_or_wrong_key_is_401(mock_server, headers, words):
    r = httpx.post(mock_server.base_url + URL, headers=headers, json={"model": "mock-echo", "messages": OK_MESSAGES})
    assert r.status_code == 401
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert words in error["message"] and "ak_not_a_real_key" not in r.text


def test_auth_is_checked_before_the_body(mock_server):
    r = httpx.post(mock_server.base_url + URL, content=b"{broken")
    assert r.status_code == 401


def test_unknown_route_and_wrong_method(mock_server):
    headers = {"Authorization": f"Bearer {mock_server.key}"}
    r = httpx.get(mock_server.base_url + "/openai/v1/nothing-here", headers=headers)
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(mock_server.base_url + URL, headers=headers)
    assert r.status_code == 405 and "GET" in r.json()["error"]["message"]


def test_streaming_errors_before_output_are_plain_http_errors(mock_server):
    r = httpx.post(
        mock_server.base_url + URL,
        headers={"Authorization": f"Bearer {mock_server.key}"},
        json={"model": "mock-small", "messages": [{"role": "user", "content": "w " * 300}], "stream": True},
    )
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "context_length_exceeded"


HOSTILE = [
    ("400-digit temperature", b'{"model":"mock-echo","messages":[{"role":"user","content":"x"}],"temperature":' + b"9" * 400 + b"}", "'temperature' is out of range"),
    ("5000-digit seed", b'{"model":"mock-echo","messages":[{"role":"user","content":"x"}],"seed":' + b"9" * 5000 + b"}", "a number with too many digits"),
    ("nested 2000 deep", b'{"model":"mock-echo","x":' + b"[" * 2000 + b"]" * 2000 + b"}", "nests deeper"),
    ("nested 300 deep", b'{"model":"mock-echo","x":' + b"[" * 300 + b"]" * 300 + b"}", "nests deeper"),
]


@pytest.mark.parametrize("name, raw, words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_are_400_on_every_route(mock_server, name, raw, words):
    headers = {"Authorization": f"Bearer {mock_server.key}", "Content-Type": "application/json"}
    for path in ("/openai/v1/chat/completions", "/openai/v1/responses", "/anthropic/v1/messages", "/anthropic/v1/messages/count_tokens"):
        r = httpx.post(mock_server.base_url + path, headers=headers, content=raw, timeout=10)
        assert r.status_code == 400, (path, r.text)
        if path == URL:  # other formats may report another field of the same body first
            assert words in r.text, r.text


def test_lone_surrogates_become_replacement_characters(mock_server):
    headers = {"Authorization": f"Bearer {mock_server.key}", "Content-Type": "application/json"}
    raw = b'{"model":"mock-echo","messages":[{"role":"user","content":"a\\ud800b \\ud83d\\ude00"}]}'
    r = httpx.post(mock_server.base_url + URL, headers=headers, content=raw)
    assert r.status_code == 200
    # The lone half becomes U+FFFD; the valid pair stays an emoji.
    assert r.json()["choices"][0]["message"]["content"] == "a\ufffdb \U0001f600"
    r = httpx.post(mock_server.base_url + URL, headers=headers, content=raw.replace(b'}]}', b'}],"stream":true}'))
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
