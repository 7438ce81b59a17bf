"""The seed's examples, run exactly as the quick-start guide prints them, with only the host
(and the placeholder key) changed, against a real server on the embedded model."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.support.server import shared_file

SEED_HOST = "https://api.longcat.chat"


def seed_text() -> str:
    return shared_file("seed", "longcat-api-quick-start.txt").read_text()


def seed_block(start: str, end: str) -> str:
    """The lines of the seed between two headings, exactly as printed."""
    text = seed_text()
    body = text[text.index(start) + len(start) : text.index(end, text.index(start))]
    return body.strip("\n")


def localize(code: str, server) -> str:
    assert SEED_HOST in code, "the seed example no longer names the public host"
    return code.replace(SEED_HOST, server.base_url).replace("YOUR_APP_KEY", server.key)


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.embedded
def test_seed_requests_example(embedded_server):
    code = localize(seed_block("Python Example", "Using OpenAI SDK"), embedded_server)
    assert "requests.post" in code
    out = run_python(code)
    # The example prints response.json(): a dict repr with a real completion in it.
    assert "'object': 'chat.completion'" in out
    content = re.search(r"'content': '([^']+)", out) or re.search(r"'content': \"([^\"]+)", out)
    assert content and content.group(1).strip(), out


@pytest.mark.embedded
def test_seed_openai_sdk_example(embedded_server):
    code = localize(seed_block("Using OpenAI SDK", "Anthropic API Format Example"), embedded_server)
    assert 'base_url="' + embedded_server.base_url + '/openai"' in code
    out = run_python(code)
    assert out.strip(), "the model wrote nothing"


@pytest.mark.embedded
def test_seed_openai_curl_example(embedded_server):
    block = seed_block("OpenAI Format\n\ncurl", "Anthropic Format\n\ncurl")
    command = localize("curl" + block, embedded_server)
    result = subprocess.run(["bash", "-c", command + " -s"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0
