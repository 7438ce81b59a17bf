"""Opening the database: SQLite (WAL) by default, PostgreSQL when `database_url` says so."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from longcat.store.migrations import migrate


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the CLI write while a server reads; busy_timeout makes writers wait instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def dialect_insert(conn: AsyncConnection, table: Table):
    """An INSERT with `on_conflict_do_nothing` / `_do_update`, on SQLite and PostgreSQL alike."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 10})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


async def create_schema(engine: AsyncEngine) -> None:
    """Bring the schema up to date (see migrations.py). Idempotent; safe from several processes."""
    await migrate(engine)
