"""Schema migrations on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

from sqlalchemy import inspect

from longcat.store.db import create_engine
from longcat.store.migrations import LATEST, MIGRATIONS, migrate
from longcat.store.schema import metadata


async def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


def test_steps_are_numbered_in_order():
    assert [v for v, _, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_sqlite_migrates_once(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"

    async def main():
        engine = create_engine(url)
        try:
            return await migrate(engine), await migrate(engine)
        finally:
            await engine.dispose()

    first, second = asyncio.run(main())
    assert first == list(range(1, LATEST + 1)) and second == []
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
        assert sorted(len(r) for r in results) == [0, 0, 0, LATEST]
        assert set(metadata.tables) <= asyncio.run(tables(url))
    finally:
        subprocess.run([*psql, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False, capture_output=True)
