"""`UsageStore.write_batch` on SQLite and PostgreSQL: what a batch writes besides its records."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from sqlalchemy import select

from longcat.store.accounts import AccountStore
from longcat.store.db import create_engine, create_schema
from longcat.store.schema import api_keys
from longcat.store.usage import LAST_USED_EVERY, UsageRecord, UsageStore
from tests.support.server import scale_out_backend


def _record(account_id: int, key_id: int, at: float) -> UsageRecord:
    return UsageRecord(uuid.uuid4().hex, account_id, key_id, "m", "chat", False, 10, 5, 0, 15, "ok", 3, "2026-12-02", at, 1000)


async def _last_used(engine, key_id: int) -> int | None:
    async with engine.connect() as conn:
        return (await conn.execute(select(api_keys.c.last_used_at).where(api_keys.c.id == key_id))).scalar_one()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    else:
        with scale_out_backend("usage_store") as env:
            yield env["LONGCAT_DATABASE_URL"]


def test_a_keys_last_use_is_written_at_most_once_a_minute(database_url):
    async def run() -> None:
        engine = create_engine(database_url)
        await create_schema(engine)
        accounts = AccountStore(engine)
        account = await accounts.create_account("a@example.com")
        key, _ = await accounts.create_key(account.id, "kk")
        store = UsageStore(engine)
        try:
            start = time.time()
            await store.write_batch([_record(account.id, key.id, start)])
            assert await _last_used(engine, key.id) == int(start)  # the first use: at once
            await store.write_batch([_record(account.id, key.id, start + 1)])
            assert await _last_used(engine, key.id) == int(start)  # a second later: not again
            later = start + LAST_USED_EVERY + 1
            await store.write_batch([_record(account.id, key.id, later)])
            assert await _last_used(engine, key.id) == int(later)
            # A fresh process (store) writes it on its first batch again.
            other = UsageStore(engine)
            await other.write_batch([_record(account.id, key.id, later + 2)])
            assert await _last_used(engine, key.id) == int(later + 2)
            other.close()
        finally:
            store.close()
            await engine.dispose()

    asyncio.run(run())
