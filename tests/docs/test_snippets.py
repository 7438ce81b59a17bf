"""The snippets work as a reader uses them: taken from the rendered page, a real key put where
the placeholder is, run against the server."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.support.docs import code_blocks, page_markdown, with_key


def _run(info: str, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    lang = info.split()[0] if info else ""
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_quick_start_python_and_curl_blocks_run(docs_server, lang):
    blocks = [(i, b) for i, b in code_blocks(page_markdown(docs_server.base_url, "quick-start", lang)) if i in ("python", "bash")]
    assert [i for i, _ in blocks] == ["python", "python", "python", "bash", "bash"]
    for info, code in blocks:
        result = _run(info, with_key(code, docs_server.key))
        assert result.returncode == 0, f"{info} block failed:\n{code}\n{result.stdout}\n{result.stderr}"
        out = result.stdout.strip()
        assert out, code
        if info == "bash":
            body = json.loads(out)
            assert body.get("choices") or body.get("content"), body


def test_api_docs_curl_blocks_run(docs_server):
    blocks = [(i, b) for i, b in code_blocks(page_markdown(docs_server.base_url, "api")) if i == "bash"]
    assert len(blocks) == 2
    usage, feedback = (json.loads(_run(i, with_key(b, docs_server.key)).stdout) for i, b in blocks)
    assert "quota" in usage
    assert "valid_remaining_today" in json.dumps(feedback), feedback


def test_quick_start_shows_the_exact_429_body(docs_server):
    from longcat.docs.facts import rate_limit_body

    page = page_markdown(docs_server.base_url, "quick-start")
    (block,) = [b for i, b in code_blocks(page) if i == "json"]
    assert json.loads(block) == json.loads(rate_limit_body())
    assert rate_limit_body() == (
        '{"error":{"code":"rate_limit_exceeded","message":"Request rate limit exceeded, please try again later",'
        '"type":"rate_limit_error","retry_after":60}}'
    )


def _events(text: str) -> list[str]:
    """The kinds of a stream's events, in order: `event:` names, else each chunk's shape."""
    out = []
    for line in text.splitlines():
        if line.startswith("event: "):
            out.append(line[7:])
        elif line.startswith("data: ") and not any(x.startswith("event: ") for x in text.splitlines()[:1]):
            data = line[6:]
            if data == "[DONE]":
                out.append("[DONE]")
            else:
                chunk = json.loads(data)
                out.append("usage" if not chunk["choices"] else ("finish" if chunk["choices"][0]["finish_reason"] else "delta"))
    return out


@pytest.mark.parametrize(
    ("tag", "path", "body"),
    [
        ("stream-chat", "/openai/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": True},
                                                        "messages": [{"role": "user", "content": "Hello there"}]}),
        ("stream-messages", "/anthropic/v1/messages", {"stream": True, "max_tokens": 50,
                                                       "messages": [{"role": "user", "content": "Hello there"}]}),
        ("stream-responses", "/openai/v1/responses", {"stream": True, "input": "Hello there"}),
    ],
)
def test_stream_examples_match_what_the_server_sends(docs_server, tag, path, body):
    from tests.support.docs import block

    shown = block(page_markdown(docs_server.base_url, "api"), tag)
    live = httpx.post(docs_server.base_url + path, json={"model": "mock-echo", **body},
                      headers={"Authorization": f"Bearer {docs_server.key}"}, timeout=30)
    assert live.status_code == 200
    assert _events(shown) == _events(live.text)
