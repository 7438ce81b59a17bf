"""`Engine.sampling`: the values each engine really samples a request with, which the Responses
API reports (pure: no model is loaded, no upstream is called)."""

from __future__ import annotations

from longcat.canonical import ChatRequest, Message, ResponseFormat, Sampling, TextBlock, ToolChoice, ToolSpec
from longcat.config import ModelConfig
from longcat.engines.anthropic_compat import AnthropicCompatEngine
from longcat.engines.embedded import EmbeddedEngine
from longcat.engines.mock import MockEngine
from longcat.engines.openai_compat import OpenAICompatEngine


def req(**kw) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message("user", [TextBlock("hi")])], max_tokens=4096, **kw)


def model(engine: str, **options) -> ModelConfig:
    return ModelConfig(id="m", engine=engine, context_window=200000, max_output=64000, options=options)


BASH = ToolSpec("Bash", "run", {"type": "object", "properties": {"command": {"type": "string"}}})


def test_embedded_reports_its_own_defaults_and_the_cooler_one_under_a_grammar():
    engine = EmbeddedEngine(model("embedded"))
    assert engine.sampling(req()) == Sampling(0.7, 0.95, 0.0, 0.0)
    # A grammar constrains the reply: a forced tool call or JSON output.
    assert engine.sampling(req(tools=[BASH], tool_choice=ToolChoice("required"))).temperature == 0.2
    assert engine.sampling(req(response_format=ResponseFormat("json_object"))).temperature == 0.2
    assert engine.sampling(req(tools=[BASH])).temperature == 0.7  # offered, not forced
    assert engine.sampling(req(temperature=0.0, top_p=0.5)) == Sampling(0.0, 0.5, 0.0, 0.0)
    tuned = EmbeddedEngine(model("embedded", default_temperature=0.4, structured_temperature=0.1))
    assert tuned.sampling(req()).temperature == 0.4
    assert tuned.sampling(req(response_format=ResponseFormat("json_schema", {"type": "object"}))).temperature == 0.1


def test_mock_is_deterministic_unless_told_otherwise():
    engine = MockEngine(model("mock"))
    assert engine.sampling(req()) == Sampling(0.0, 1.0, 0.0, 0.0)
    assert engine.sampling(req(temperature=0.9)).temperature == 0.9


def test_openai_compat_reports_what_it_sends():
    engine = OpenAICompatEngine(model("openai_compat", base_url="http://127.0.0.1:9/v1"))
    # Nothing sent: the upstream's own default, which the platform cannot know.
    assert engine.sampling(req()) == Sampling()
    assert engine.sampling(req(temperature=0.3, top_p=0.9)) == Sampling(0.3, 0.9)
    tuned = OpenAICompatEngine(
        model("openai_compat", base_url="http://127.0.0.1:9/v1", extra_body={"temperature": 0.6, "presence_penalty": 0.5})
    )
    assert tuned.sampling(req()) == Sampling(0.6, None, 0.5, None)
    assert tuned.sampling(req(temperature=0.1)).temperature == 0.1  # the request's value wins


def test_anthropic_compat_reports_the_value_it_really_sends():
    engine = AnthropicCompatEngine(model("anthropic_compat", base_url="http://127.0.0.1:9"))
    assert engine.sampling(req(temperature=1.5)).temperature == 1.0  # Anthropic's range ends at 1
    # With thinking on, temperature is not sent: Anthropic samples at its own.
    assert engine.sampling(req(temperature=0.5, thinking=True)).temperature is None
