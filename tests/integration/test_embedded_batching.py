"""Continuous batching in the embedded engine, through the HTTP API and the official SDK.

Sequences decode together in the engine's slots; each keeps its own sampling, grammar, stop
strings, budget and cancellation, and a cached prompt prefix serves only its own account."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import httpx
import pytest
from openai import AsyncOpenAI

from longcat.protocols.json_prefix import JsonObjectPrefix

pytestmark = pytest.mark.embedded

MODEL = "LongCat-2.0-Preview"
CHAT = "/openai/v1/chat/completions"
PROMPTS = ["Name a colour.", "Count from one to five.", "What is the capital of France?", "Write a word that rhymes with cat."]


def _client(server, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.base_url + "/openai/v1", api_key=key, max_retries=0, timeout=120)


async def _greedy(client: AsyncOpenAI, prompt: str, **extra) -> tuple[str, dict]:
    r = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0, seed=3, **extra
    )
    return r.choices[0].message.content, r.usage.model_dump()


def test_sequences_batched_together_give_what_each_gives_alone(embedded_server):
    key = embedded_server.new_key("batch-greedy@example.com")

    async def main():
        client = _client(embedded_server, key)
        alone = [await _greedy(client, p) for p in PROMPTS]
        started = time.perf_counter()
        together = await asyncio.gather(*[_greedy(client, p) for p in PROMPTS])
        return alone, together, time.perf_counter() - started

    alone, together, elapsed = asyncio.run(main())
    assert [text for text, _ in together] == [text for text, _ in alone]
    assert all(u["completion_tokens"] > 0 for _, u in together)


def test_grammar_constrained_and_free_sequences_in_one_batch(embedded_server):
    key = embedded_server.new_key("batch-grammar@example.com")
    # No other properties: the grammar allows only {"city": "<at most 20 characters>"}, which
    # always fits in 60 tokens.
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"place": {"type": "string", "maxLength": 20}}, "required": ["place"]}}}

    async def main():
        client = _client(embedded_server, key)
        jobs = [
            client.chat.completions.create(model=MODEL, max_tokens=60, messages=[{"role": "user", "content": "A city in JSON."}],
                                           response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}),
            client.chat.completions.create(model=MODEL, max_tokens=60, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                           tools=[tool], tool_choice="required"),
            client.chat.completions.create(model=MODEL, max_tokens=30, messages=[{"role": "user", "content": "Say something."}]),
            client.chat.completions.create(model=MODEL, max_tokens=60, messages=[{"role": "user", "content": "Some JSON."}],
                                           response_format={"type": "json_object"}),
        ]
        return await asyncio.gather(*jobs)

    structured, called, free, obj = asyncio.run(main())
    assert "city" in json.loads(structured.choices[0].message.content)
    call = called.choices[0].message.tool_calls[0]
    assert call.function.name == "weather" and "place" in json.loads(call.function.arguments)
    assert free.choices[0].message.content and free.choices[0].finish_reason in ("stop", "length")
    assert isinstance(_json_or_its_prefix(obj.choices[0]), dict)


def _json_or_its_prefix(choice) -> object:
    """The reply's JSON; a reply cut by max_tokens must be a prefix of a JSON object."""
    text = choice.message.content
    if choice.finish_reason == "stop":
        return json.loads(text)
    assert choice.finish_reason == "length"
    prefix = JsonObjectPrefix()
    sent = prefix.feed(text)
    assert text.startswith(sent) and len(text) - len(sent) <= 2, (text, sent)  # at most a held-back comma
    return json.loads(sent + prefix.close())


def test_stop_strings_and_budgets_are_per_sequence(embedded_server):
    key = embedded_server.new_key("batch-stops@example.com")
    prompt = "Count from one to twenty, in words, separated by commas."

    async def main():
        client = _client(embedded_server, key)
        ask = lambda **kw: client.chat.completions.create(  # noqa: E731
            model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, seed=1, **kw)
        alone = (await ask(max_tokens=40)).choices[0].message.content
        words = alone.split()
        assert len(words) >= 4, alone
        stop = " " + words[len(words) // 2]
        batch = await asyncio.gather(ask(max_tokens=5), ask(max_tokens=40, stop=[stop]), ask(max_tokens=12), ask(max_tokens=40))
        return alone, stop, batch

    alone, stop, (five, stopped, twelve, forty) = asyncio.run(main())
    assert five.usage.completion_tokens == 5 and five.choices[0].finish_reason == "length"
    assert twelve.usage.completion_tokens == 12 and twelve.choices[0].finish_reason == "length"
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == alone[: alone.index(stop)]
    assert forty.choices[0].message.content == alone


def test_a_cancelled_stream_frees_its_slot_and_the_others_finish(embedded_server):
    """More cancelled streams than slots, then requests that need every slot: each one gets
    a slot at once, so the cancelled ones let theirs go."""
    key = embedded_server.new_key("batch-cancel@example.com")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "max_tokens": 400, "stream": True}

    async def cut(client: httpx.AsyncClient, i: int) -> None:
        payload = dict(body, messages=[{"role": "user", "content": f"Tell me a long story about the number {i}."}])
        payload["ignore_eos"] = True
        async with client.stream("POST", CHAT, json=payload) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if '"content"' in line:
                    break  # hang up after the first token

    async def main():
        async with httpx.AsyncClient(base_url=embedded_server.base_url, headers=headers, timeout=120) as client:
            await asyncio.gather(*[cut(client, i) for i in range(6)])
            client2 = _client(embedded_server, key)
            done = await asyncio.gather(*[client2.chat.completions.create(
                model=MODEL, max_tokens=8, messages=[{"role": "user", "content": p}]) for p in PROMPTS])
            return done

    done = asyncio.run(main())
    assert all(r.usage.completion_tokens >= 1 for r in done)
    db = sqlite3.connect(embedded_server.data_dir / "longcat.db")
    rows = db.execute(
        "select r.status, r.output_tokens from usage_records r join accounts a on a.id = r.account_id where a.email = 'batch-cancel@example.com' and r.status = 'client_closed'"
    ).fetchall()
    # Each cut sequence stopped within a few steps of its client leaving: far short of the 400
    # tokens it asked for (with ignore_eos it would otherwise have run to the end).
    assert len(rows) == 6 and all(out < 100 for _, out in rows), rows


def test_usage_is_exact_under_batching(embedded_server):
    """Concurrent streams of both formats, some cut: records, quota and clients agree."""
    email = "batch-usage@example.com"
    key = embedded_server.new_key(email)
    headers = {"Authorization": f"Bearer {key}"}

    async def openai_stream(client, i, cut):
        body = {"model": MODEL, "max_tokens": 30, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"Describe the number {i}."}]}
        got = 0
        async with client.stream("POST", CHAT, json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        return chunk["usage"]["total_tokens"]
                    got += bool(chunk["choices"] and chunk["choices"][0]["delta"].get("content"))
                    if cut and got >= 2:
                        return None
        raise AssertionError("no usage")

    async def anthropic_call(client, i):
        r = await client.post("/anthropic/v1/messages", json={"model": MODEL, "max_tokens": 30, "messages": [{"role": "user", "content": f"Name {i} things."}]})
        u = r.json()["usage"]
        return u["input_tokens"] + u.get("cache_read_input_tokens", 0) + u["output_tokens"]

    async def main():
        async with httpx.AsyncClient(base_url=embedded_server.base_url, headers=headers, timeout=120) as client:
            jobs = [openai_stream(client, i, cut=i % 3 == 0) for i in range(6)] + [anthropic_call(client, i) for i in range(4)]
            return await asyncio.gather(*jobs)

    seen = asyncio.run(main())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        report = httpx.get(embedded_server.base_url + "/api/v1/usage?limit=100", headers=headers).json()
        if report["totals"]["requests"] >= 10 and report["quota"]["in_flight"] == 0:
            break
        time.sleep(0.1)
    assert report["totals"]["requests"] == 10
    db = sqlite3.connect(embedded_server.data_dir / "longcat.db")
    rows = db.execute(
        "select r.status, r.billed_tokens, r.input_tokens + r.output_tokens from usage_records r join accounts a on a.id = r.account_id where a.email = ?", (email,)
    ).fetchall()
    assert all(billed == total for _, billed, total in rows)
    finished = sorted(t for t in seen if t is not None)
    assert sorted(b for status, b, _ in rows if status != "client_closed") == finished
    assert report["quota"]["used"] == sum(b for _, b, _ in rows)


def test_a_conversation_reuses_its_own_cached_prefix_only(embedded_server):
    """The second turn of a conversation prefills only its new suffix; the same prompt from
    another account is computed afresh (0 cached tokens)."""
    system = "You are a careful assistant. " * 40
    first_key = embedded_server.new_key("batch-cache-a@example.com")
    other_key = embedded_server.new_key("batch-cache-b@example.com")

    async def main():
        a, b = _client(embedded_server, first_key), _client(embedded_server, other_key)
        turn = [{"role": "system", "content": system}, {"role": "user", "content": "Hello!"}]
        one = await a.chat.completions.create(model=MODEL, messages=turn, max_tokens=8, temperature=0)
        turn2 = turn + [{"role": "assistant", "content": one.choices[0].message.content}, {"role": "user", "content": "And then?"}]
        two = await a.chat.completions.create(model=MODEL, messages=turn2, max_tokens=8, temperature=0)
        stranger = await b.chat.completions.create(model=MODEL, messages=turn2, max_tokens=8, temperature=0)
        return one, two, stranger

    one, two, stranger = asyncio.run(main())
    cached = two.usage.prompt_tokens_details.cached_tokens
    assert cached >= one.usage.prompt_tokens - 2, (cached, one.usage.prompt_tokens)
    assert stranger.usage.prompt_tokens_details.cached_tokens == 0
