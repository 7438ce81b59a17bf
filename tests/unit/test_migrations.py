"""Schema migrations on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

from sqlalchemy import inspect

from longcat.store.db import create_engine
from longcat.store.migrations import MIGRATIONS, migrate
from longcat.store.schema import metadata


async def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


STEPS = [v for v, _, _ in MIGRATIONS]


def test_steps_are_numbered_in_order():
    assert STEPS == list(range(1, len(STEPS) + 1))


def test_sqlite_migrates_once(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"

    async def main():
        engine = create_engine(url)
        try:
            return await migrate(engine), await migrate(engine)
        finally:
            await engine.dispose()

    first, second = asyncio.run(main())
    assert first == STEPS and second == []
    assert set(metadata.tables) | {"schema_version"} <= asyncio.run(tables(url))


def test_postgres_replicas_starting_together_migrate_once():
    name = f"lc_mig_{uuid.uuid4().hex[:10]}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c"]
    subprocess.run([*psql, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:

        async def main():
            engines = [create_engine(url) for _ in range(4)]
            try:
                return await asyncio.gather(*(migrate(e) for e in engines))
            finally:
                for e in engines:
                    await e.dispose()

        results = asyncio.run(main())
        assert sorted(len(r) for r in results) == [0, 0, 0, len(STEPS)]
        assert set(metadata.tables) <= asyncio.run(tables(url))
    finally:
        subprocess.run([*psql, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False, capture_output=True)


def test_steps_2_and_3_bring_feedback_of_version_1_up_to_date(tmp_path):
    """An existing database at version 1 (no counted_hash, no daily counters) is brought up to
    date, keeping the first valid submission of a text as its claim, and counting each day's."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"

    async def main():
        engine = create_engine(url)
        try:
            await migrate(engine)
            async with engine.begin() as conn:
                # Back to version 1's shape, with a repeat that two replicas both accepted.
                await conn.exec_driver_sql("DROP INDEX ux_feedback_counted")
                await conn.exec_driver_sql("ALTER TABLE feedback DROP COLUMN counted_hash")
                await conn.exec_driver_sql("DROP TABLE feedback_days")
                await conn.exec_driver_sql("DELETE FROM schema_version WHERE version > 1")
                await conn.exec_driver_sql(
                    "INSERT INTO accounts (email, is_admin, disabled, created_at) VALUES ('a@example.com', 0, 0, 0)"
                )
                for valid in (1, 1, 0):
                    await conn.exec_driver_sql(
                        "INSERT INTO feedback (account_id, rating, category, text, text_hash, valid, refreshed, granted, day, created_at)"
                        f" VALUES (1, 5, 'other', 'same words', 'h1', {valid}, 0, 0, '2026-11-25', 0)"
                    )
            applied = await migrate(engine)
            async with engine.connect() as conn:
                rows = (await conn.exec_driver_sql("SELECT id, counted_hash FROM feedback ORDER BY id")).all()
                days = (await conn.exec_driver_sql("SELECT account_id, day, valid, invalid FROM feedback_days")).all()
            return applied, rows, days
        finally:
            await engine.dispose()

    applied, rows, days = asyncio.run(main())
    assert applied == [v for v in STEPS if v > 1]
    assert [tuple(r) for r in rows] == [(1, "h1"), (2, None), (3, None)]
    assert [tuple(d) for d in days] == [(1, "2026-11-25", 2, 1)]


def test_step_5_rolls_up_the_usage_records_already_there(tmp_path):
    """A database from before the console gets the usage rollup filled from its records."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"

    async def main():
        engine = create_engine(url)
        try:
            await migrate(engine)
            async with engine.begin() as conn:
                await conn.exec_driver_sql("DROP TABLE usage_rollup")
                await conn.exec_driver_sql("DELETE FROM schema_version WHERE version = 5")
                await conn.exec_driver_sql(
                    "INSERT INTO accounts (email, is_admin, disabled, created_at) VALUES ('a@example.com', 0, 0, 0)"
                )
                for i, (key, model, status) in enumerate([(1, "m", "ok"), (1, "m", "ok"), (2, "m", "length")]):
                    await conn.exec_driver_sql(
                        "INSERT INTO usage_records (request_id, account_id, key_id, model, endpoint, stream, input_tokens, output_tokens,"
                        " cached_tokens, billed_tokens, status, latency_ms, day, created_at)"
                        f" VALUES ('r{i}', 1, {key}, '{model}', 'chat.completions', 0, 10, 5, 2, 15, '{status}', 100, '2026-11-25', 0)"
                    )
            applied = await migrate(engine)
            async with engine.connect() as conn:
                rows = (await conn.exec_driver_sql(
                    "SELECT key_id, status, requests, input_tokens, billed_tokens, latency_ms FROM usage_rollup ORDER BY key_id")).all()
            return applied, [tuple(r) for r in rows]
        finally:
            await engine.dispose()

    applied, rows = asyncio.run(main())
    assert applied == [5]
    assert rows == [(1, "ok", 2, 20, 30, 200), (2, "length", 1, 10, 15, 100)]
