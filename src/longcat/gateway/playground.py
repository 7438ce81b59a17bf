"""The console's playground: one exchange through the same path as any API request, seen in
both wire formats at once.

The person picks a format; the exchange is made in it (decoded by that format's own decoder,
admitted, billed and rate-limited by the gateway like any request, recorded as endpoint
`playground`). The canonical events it produces are encoded by *both* formats' encoders, so the
page can show the exact request and response of the exchange in OpenAI's and in Anthropic's
shapes side by side. Pure helpers build the two request bodies and the "copy as" snippets.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from longcat.canonical import ApiError, Collector, Error, TextDelta, ThinkingDelta
from longcat.gateway.actions import N_, ActionError
from longcat.gateway.signing import Signer
from longcat.protocols import anthropic, openai_chat
from longcat.protocols.anthropic_errors import anthropic_error_body
from longcat.protocols.openai_errors import openai_error_body
from longcat.store.accounts import KeyOwner

FORMATS = ("openai", "anthropic")
PATHS = {"openai": "/openai/v1/chat/completions", "anthropic": "/anthropic/v1/messages"}
MAX_TURNS = 50
MAX_CHARS = 200_000


@dataclass(slots=True)
class Exchange:
    format: str
    model: str
    system: str
    messages: list[dict[str, str]]
    temperature: float | None
    max_tokens: int
    stream: bool

    def openai_body(self) -> dict[str, Any]:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        body["stream"] = self.stream
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def anthropic_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        if self.system:
            body["system"] = self.system
        body["messages"] = self.messages
        if self.temperature is not None:
            body["temperature"] = self.temperature
        body["stream"] = self.stream
        return body


def parse_exchange(raw: dict[str, Any], models: list[str]) -> Exchange:
    """Validate what the playground form or its JSON sends; errors name the field."""
    fmt = raw.get("format") or "openai"
    if fmt not in FORMATS:
        raise ActionError("invalid_format", N_("The format is openai or anthropic."), field="format")
    model = raw.get("model") or (models[0] if models else "")
    if model not in models:
        raise ActionError("invalid_model", N_("Choose one of the models this platform serves."), field="model")
    system = raw.get("system") or ""
    messages = raw.get("messages")
    if not isinstance(system, str) or not isinstance(messages, list) or not messages or len(messages) > MAX_TURNS:
        raise ActionError("invalid_messages", N_("Write a message to send."), field="messages")
    clean = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str) or not m["content"].strip():
            raise ActionError("invalid_messages", N_("Write a message to send."), field="messages")
        clean.append({"role": m["role"], "content": m["content"]})
    if clean[-1]["role"] != "user":
        raise ActionError("invalid_messages", N_("Write a message to send."), field="messages")
    if len(system) + sum(len(m["content"]) for m in clean) > MAX_CHARS:
        raise ActionError("too_long", N_("The conversation is too long for the playground (%(n)s characters at most)."), field="messages", n=MAX_CHARS)
    temperature = raw.get("temperature")
    if temperature in ("", None):
        temperature = None
    else:
        try:
            temperature = float(temperature)
        except (TypeError, ValueError):
            temperature = -1.0
        if not 0 <= temperature <= 2:
            raise ActionError("invalid_temperature", N_("Temperature is a number from 0 to 2."), field="temperature")
    try:
        max_tokens = int(raw.get("max_tokens") or 1024)
    except (TypeError, ValueError):
        max_tokens = 0
    if not 1 <= max_tokens <= 1_000_000:
        raise ActionError("invalid_max_tokens", N_("Max tokens is a whole number of 1 or more."), field="max_tokens")
    stream = raw.get("stream", True)
    stream = stream if isinstance(stream, bool) else str(stream).lower() in ("1", "true", "on", "yes")
    return Exchange(fmt, model, system, clean, temperature, max_tokens, stream)


def snippets(base_url: str, ex: Exchange) -> dict[str, str]:
    """The exchange as curl (both formats) and as Python with each official SDK. The key is an
    environment variable: a snippet never carries a real key."""
    o, a = ex.openai_body(), ex.anthropic_body()
    o_json, a_json = json.dumps(o, ensure_ascii=False, indent=2), json.dumps(a, ensure_ascii=False, indent=2)

    def sh(text: str) -> str:
        return "'" + text.replace("'", "'\"'\"'") + "'"

    curl_openai = (
        f"curl {base_url}{PATHS['openai']} \\\n  -H \"Authorization: Bearer $LONGCAT_API_KEY\" \\\n"
        f"  -H 'Content-Type: application/json' \\\n  -d {sh(o_json)}"
    )
    curl_anthropic = (
        f"curl {base_url}{PATHS['anthropic']} \\\n  -H \"Authorization: Bearer $LONGCAT_API_KEY\" \\\n"
        f"  -H 'Content-Type: application/json' \\\n  -H 'anthropic-version: 2023-06-01' \\\n  -d {sh(a_json)}"
    )
    o_kwargs = {k: v for k, v in o.items() if k not in ("stream", "stream_options")}
    a_kwargs = {k: v for k, v in a.items() if k != "stream"}

    def kwargs(d: dict[str, Any]) -> str:
        return ",\n".join(f"    {k}={_py(v)}" for k, v in d.items())

    py_openai = (
        "import os\nfrom openai import OpenAI\n\n"
        f'client = OpenAI(api_key=os.environ["LONGCAT_API_KEY"], base_url="{base_url}/openai/v1")\n\n'
        f"response = client.chat.completions.create(\n{kwargs(o_kwargs)},\n)\nprint(response.choices[0].message.content)\n"
    )
    py_anthropic = (
        "import os\nfrom anthropic import Anthropic\n\n"
        f'client = Anthropic(api_key=os.environ["LONGCAT_API_KEY"], base_url="{base_url}/anthropic")\n\n'
        f"message = client.messages.create(\n{kwargs(a_kwargs)},\n)\nprint(message.content[0].text)\n"
    )
    return {"curl_openai": curl_openai, "curl_anthropic": curl_anthropic, "python_openai": py_openai, "python_anthropic": py_anthropic}


def _py(value: Any) -> str:
    """A Python literal for JSON data (True/False/None, not true/false/null)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False, indent=4)
        return text.replace("\n", "\n    ").replace(": true", ": True").replace(": false", ": False").replace(": null", ": None")
    return json.dumps(value, ensure_ascii=False)


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return head + "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))) + "\n\n"


def error_bodies(err: ApiError) -> dict[str, Any]:
    return {"status": err.status, "code": err.code, "message": err.message,
            "openai": openai_error_body(err), "anthropic": anthropic_error_body(err)}


async def run(gateway, owner: KeyOwner, ex: Exchange, secret: bytes) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The exchange as (event, data) pairs: `request`, `delta`…, then `done` or `error`.

    `done` carries the response in both formats: SSE frames as text when streaming, else the
    JSON bodies."""
    signer = Signer(secret)
    bodies = {"openai": ex.openai_body(), "anthropic": ex.anthropic_body()}
    yield "request", {"format": ex.format, "paths": PATHS, **bodies}
    try:
        await gateway.limiter.charge_request(owner, gateway.clock.now())
        if ex.format == "openai":
            chat = openai_chat.decode(bodies["openai"], limits=gateway.limits)
        else:
            chat = anthropic.decode(bodies["anthropic"], verify_thinking=signer.verify_thinking, limits=gateway.limits)
        call = await gateway.admit(owner, chat, endpoint="playground")
    except ApiError as err:
        yield "error", error_bodies(err)
        return
    o_enc = openai_chat.ChatStreamEncoder(model=ex.model, include_usage=True)
    a_enc: anthropic.MessageStreamEncoder | None = None
    o_frames: list[str] = []
    a_frames: list[str] = []
    collector = Collector()
    events = gateway.events(call)
    started = False
    try:
        async for event in events:
            if not started:
                started = True
                a_enc = anthropic.MessageStreamEncoder(
                    model=ex.model, input_tokens=call.ctx.prompt_tokens or 0, sign_thinking=signer.sign_thinking, live_usage=call.ctx.usage
                )
                o_frames += [_sse(c) for c in o_enc.start()]
                a_frames += [_sse(d, n) for n, d in a_enc.start()]
            o_frames += [_sse(c) for c in o_enc.encode(event)]
            a_frames += [_sse(d, n) for n, d in a_enc.encode(event)]  # type: ignore[union-attr]
            if isinstance(event, Error):
                yield "error", error_bodies(event.error)
                return
            collector.add(event)
            if isinstance(event, TextDelta | ThinkingDelta) and event.text:
                yield "delta", {"text": event.text, "thinking": isinstance(event, ThinkingDelta)}
    except ApiError as err:
        yield "error", error_bodies(err)
        return
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    done = collector.result()
    if a_enc is not None:
        a_frames += [_sse(d, n) for n, d in a_enc.finish()]
    o_frames.append("data: [DONE]\n\n")
    if ex.stream:
        responses: dict[str, Any] = {"openai": "".join(o_frames), "anthropic": "".join(a_frames)}
    else:
        responses = {
            "openai": openai_chat.encode_completion(done, model=ex.model, completion_id=openai_chat.new_completion_id(), created=int(time.time())),
            "anthropic": anthropic.encode_message(done, model=ex.model, message_id=anthropic.new_message_id(), sign_thinking=signer.sign_thinking),
        }
    yield "done", {
        "request_id": call.ctx.request_id,
        "text": done.text,
        "finish": done.finish.reason,
        "usage": {"input_tokens": done.usage.input_tokens, "output_tokens": done.usage.output_tokens, "cached_tokens": done.usage.cached_tokens},
        "stream": ex.stream,
        **responses,
    }
