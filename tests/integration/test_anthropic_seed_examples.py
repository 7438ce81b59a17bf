"""The seed's Anthropic examples, run exactly as the quick-start guide prints them, with only the
host (and the placeholder key) changed, against a real server on the embedded model."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.test_seed_examples import localize, run_python, seed_block


@pytest.mark.embedded
def test_seed_anthropic_sdk_example(embedded_server):
    code = localize(seed_block("Using Anthropic SDK", "cURL Example"), embedded_server)
    # The example's odd parts stay as printed: the key inside "Authorization: Bearer …" as api_key,
    # a Bearer default header, and a base URL with a trailing slash.
    assert f'api_key="Authorization: Bearer {embedded_server.key}"' in code
    assert f'base_url="{embedded_server.base_url}/anthropic/"' in code
    out = run_python(code)
    assert out.strip(), "the model wrote nothing"


@pytest.mark.embedded
def test_seed_anthropic_curl_example(embedded_server):
    block = seed_block("Anthropic Format\n\ncurl", "Important Reminders")
    command = localize("curl" + block, embedded_server)
    assert "/anthropic/v1/messages" in command and "anthropic-version: 2023-06-01" in command
    result = subprocess.run(["bash", "-c", command + " -s"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["content"][0]["type"] == "text" and body["content"][0]["text"].strip()
    assert body["stop_reason"] in ("end_turn", "max_tokens")
    assert body["usage"]["input_tokens"] + body["usage"]["cache_read_input_tokens"] > 0
    assert body["usage"]["output_tokens"] > 0
