"""The Responses API on the embedded SmolLM2 model: real generation and grammar-enforced JSON."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.support import open_responses
from tests.support.responses_check import check_response, check_stream, output_text, stream_events

pytestmark = pytest.mark.embedded


@pytest.fixture()
def client(embedded_server):
    return openai.OpenAI(api_key=embedded_server.key, base_url=embedded_server.base_url + "/openai/v1", max_retries=0)


def test_real_text_generation_streamed(embedded_server):
    r = httpx.post(
        embedded_server.base_url + "/openai/v1/responses",
        headers={"Authorization": f"Bearer {embedded_server.key}"},
        json={"model": "LongCat-2.0-Preview", "input": "Say hello in one short sentence.", "max_output_tokens": 24, "stream": True},
        timeout=120,
    )
    assert r.status_code == 200
    events = stream_events(r.text)
    for event in events:
        open_responses.check_event(event)
    final = check_stream(events)
    assert final["status"] in ("completed", "incomplete")
    assert output_text(final).strip()
    assert 0 < final["usage"]["output_tokens"] <= 24
    # The request set no sampling: the engine's defaults are what it sampled with.
    assert (final["temperature"], final["top_p"]) == (0.7, 0.95)


def test_json_schema_is_enforced(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model="LongCat-2.0-Preview",
        input="Name a large city and its population.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        max_output_tokens=80,
        temperature=0,
    )
    check_response(r.model_dump(mode="json", exclude_unset=True, by_alias=True))
    assert r.status == "completed", r.incomplete_details
    assert r.temperature == 0
    data = json.loads(r.output_text)
    assert set(data) == {"city", "population"}
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_json_output_reports_the_cooler_default_temperature(client):
    r = client.responses.create(
        model="LongCat-2.0-Preview", input="Any JSON object.", text={"format": {"type": "json_object"}}, max_output_tokens=8
    )
    assert (r.temperature, r.top_p) == (0.2, 0.95)


def test_prompt_beyond_the_context_window(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="LongCat-2.0-Preview", input="hello " * 9000)
    error = info.value.body
    assert error["code"] == "context_length_exceeded"
    assert "8,192" in error["message"]
