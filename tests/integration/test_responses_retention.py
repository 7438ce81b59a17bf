"""Stored Responses retention (`responses_ttl_days`): an expired response is gone for its owner
at once, the background sweep deletes expired rows in bounded batches (several sweepers at once
included), and `store: false` keeps nothing.

The store-level tests insert old rows into real SQLite and PostgreSQL databases; the server test
moves a real server's clock (the `clock_file` setting) past the retention period."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import httpx
import openai
import pytest

from longcat.store.accounts import AccountStore
from longcat.store.db import create_engine, create_schema
from longcat.store.responses import DAY, ResponseStore
from longcat.store.schema import responses
from tests.support.server import Server, free_port, scale_out_backend, write_config

NOW = 1_800_000_000.0


def body(response_id: str, created_at: float) -> dict:
    return {"id": response_id, "object": "response", "model": "m", "status": "completed", "created_at": int(created_at), "output": []}


async def fill(store: ResponseStore, account_id: int, old: int, fresh: int) -> None:
    rows = [
        {"id": f"resp_old{i}", "account_id": account_id, "key_id": None, "model": "m", "status": "completed",
         "created_at": int(NOW - 40 * DAY - i), "body": json.dumps(body(f"resp_old{i}", NOW - 40 * DAY - i)), "items": "[]"}
        for i in range(old)
    ] + [
        {"id": f"resp_new{i}", "account_id": account_id, "key_id": None, "model": "m", "status": "completed",
         "created_at": int(NOW - 29 * DAY), "body": json.dumps(body(f"resp_new{i}", NOW - 29 * DAY)), "items": "[]"}
        for i in range(fresh)
    ]
    async with store.engine.begin() as conn:
        await conn.execute(responses.insert(), rows)


async def count(store: ResponseStore) -> int:
    from sqlalchemy import func, select

    async with store.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(responses))).scalar_one()


async def open_store(url: str) -> tuple[ResponseStore, int]:
    engine = create_engine(url)
    await create_schema(engine)
    account = await AccountStore(engine).create_account(f"ret{time.monotonic_ns()}@example.com")
    return ResponseStore(engine, ttl_days=30, now=lambda: NOW), account.id


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'retention.db'}"
        return
    with scale_out_backend("retention") as env:
        yield env["LONGCAT_DATABASE_URL"]


def test_expired_rows_are_deleted_in_batches_of_500_and_fresh_ones_kept(database_url):
    async def main() -> None:
        store, account = await open_store(database_url)
        try:
            await fill(store, account, old=1200, fresh=7)
            # Expired but not yet swept: as if deleted, for reads and deletes alike.
            assert await store.get("resp_old3", account) is None
            assert not await store.delete("resp_old3", account)
            assert (await store.get("resp_new3", account)).id == "resp_new3"
            assert await store.delete_expired(pause=0) == [500, 500, 200]
            assert await count(store) == 7
            assert await store.delete_expired(pause=0) == [0]
            forever = ResponseStore(store.engine, ttl_days=0, now=lambda: NOW + 1000 * DAY)
            assert await forever.delete_expired() == [] and (await forever.get("resp_new1", account)) is not None
        finally:
            await store.engine.dispose()

    asyncio.run(main())


def test_several_sweepers_at_once_delete_each_row_once(database_url):
    async def main() -> None:
        store, account = await open_store(database_url)
        others = [ResponseStore(create_engine(database_url), ttl_days=30, now=lambda: NOW) for _ in range(2)]
        try:
            await fill(store, account, old=2300, fresh=5)
            results = await asyncio.gather(*(s.delete_expired(batch=100, pause=0) for s in [store, *others]))
            assert sum(sum(r) for r in results) == 2300
            assert all(n <= 100 for r in results for n in r)
            assert await count(store) == 5
        finally:
            for s in [store, *others]:
                await s.engine.dispose()

    asyncio.run(main())


CONFIG = """
responses_ttl_days = 1
clock_file = "{clock}"

[[models]]
id = "mock-echo"
engine = "mock"
context_window = 100000
max_output = 100000
"""


def stored_ids(server: Server) -> list[str]:
    with sqlite3.connect(server.data_dir / "longcat.db") as db:
        return [row[0] for row in db.execute("select id from responses order by id")]


def test_store_false_keeps_nothing_and_expired_responses_are_gone(tmp_path):
    clock = tmp_path / "clock"
    clock.write_text("0")
    server = Server(tmp_path, write_config(tmp_path / "config.toml", CONFIG.format(clock=clock)), free_port()).start()
    try:
        server.key = server.new_key("retention@example.com")
        client = openai.OpenAI(api_key=server.key, base_url=server.base_url + "/openai/v1", max_retries=0)
        kept = client.responses.create(model="mock-echo", input="keep this one")
        forgotten = client.responses.create(model="mock-echo", input="forget this one", store=False)
        with client.responses.stream(model="mock-echo", input="forget this stream too", store=False) as stream:
            streamed = stream.get_final_response()
        # store: false leaves no row at all, streamed or not, and its id cannot be retrieved.
        assert stored_ids(server) == [kept.id]
        for gone in (forgotten.id, streamed.id):
            with pytest.raises(openai.NotFoundError):
                client.responses.retrieve(gone)
        assert client.responses.retrieve(kept.id).id == kept.id

        clock.write_text(str(DAY + 60))  # one day and a minute later
        with pytest.raises(openai.NotFoundError) as info:
            client.responses.retrieve(kept.id)
        assert info.value.body["message"] == f"No response found with id {kept.id!r}."  # as if it never existed
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model="mock-echo", input="go on", previous_response_id=kept.id)
        assert info.value.body["param"] == "previous_response_id"
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(kept.id)
        assert stored_ids(server) == [kept.id]  # not deleted by the reads: the sweep does that

        # The background sweep runs a few seconds after start, then every few minutes.
        server.stop()
        server.start()
        deadline = time.monotonic() + 30
        while stored_ids(server) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert stored_ids(server) == []
        assert "deleted 1 expired stored response(s) (responses_ttl_days = 1)" in server.log()
        clock.write_text("0")
        fresh = client.responses.create(model="mock-echo", input="a new one")
        assert httpx.get(server.base_url + f"/openai/v1/responses/{fresh.id}",
                         headers={"Authorization": f"Bearer {server.key}"}).status_code == 200
    finally:
        server.stop()
