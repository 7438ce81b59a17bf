"""Schema versions: the database is brought up to date at start-up, one numbered step at a time.

Each step runs once, in order, in the same transaction that records it in `schema_version`, so a
crash mid-way leaves the previous version intact. On PostgreSQL an advisory lock makes replicas
that start together take turns; SQLite serialises writers by itself.

To change the schema: edit `schema.py` for new databases, and append a step here that brings an
existing database to the same shape (e.g. `ALTER TABLE … ADD COLUMN …`). Never edit a step that
has shipped. Step 1 creates every table as `schema.py` has it *now*, so a new database already
has what later steps add: each step checks before it changes anything.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from longcat.store.schema import metadata

_version_meta = MetaData()
schema_version = Table(
    "schema_version",
    _version_meta,
    Column("version", Integer, primary_key=True),
    Column("description", String(200), nullable=False),
)

# An arbitrary constant: the advisory lock PostgreSQL replicas take while migrating.
_LOCK_ID = 0x4C4F4E47


def _initial(conn: Connection) -> None:
    """Every table as of the first release (idempotent: databases made before versioning pass)."""
    metadata.create_all(conn)


def _feedback_counted_hash(conn: Connection) -> None:
    """A unique (account, hash) over valid feedback, so repeats are refused across replicas."""
    if "counted_hash" not in {c["name"] for c in inspect(conn).get_columns("feedback")}:
        conn.exec_driver_sql("ALTER TABLE feedback ADD COLUMN counted_hash VARCHAR(64)")
        # The first valid submission of each text keeps the claim.
        conn.exec_driver_sql(
            "UPDATE feedback SET counted_hash = text_hash WHERE id IN "
            "(SELECT MIN(id) FROM feedback WHERE valid GROUP BY account_id, text_hash)"
        )
    if "ux_feedback_counted" not in {i["name"] for i in inspect(conn).get_indexes("feedback")}:
        conn.exec_driver_sql("CREATE UNIQUE INDEX ux_feedback_counted ON feedback (account_id, counted_hash)")


def _feedback_days(conn: Connection) -> None:
    """Daily feedback counters, taken over from the submissions already stored."""
    if "feedback_days" in inspect(conn).get_table_names():
        return
    metadata.tables["feedback_days"].create(conn)
    conn.exec_driver_sql(
        "INSERT INTO feedback_days (account_id, day, valid, invalid) "
        "SELECT account_id, day, SUM(CASE WHEN valid THEN 1 ELSE 0 END), SUM(CASE WHEN valid THEN 0 ELSE 1 END) "
        "FROM feedback GROUP BY account_id, day"
    )


def _console(conn: Connection) -> None:
    """The web console: sessions, emailed links, invites, the audit log, verified emails."""
    from longcat.store.schema import audit_log, email_tokens, invites, sessions

    metadata.create_all(conn, tables=[sessions, email_tokens, invites, audit_log])  # checks first
    if "email_verified" not in {c["name"] for c in inspect(conn).get_columns("accounts")}:
        conn.exec_driver_sql("ALTER TABLE accounts ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT TRUE")


def _usage_log(conn: Connection) -> None:
    """The Usage page at any size: the request log's covering index, and the rollup its totals
    and breakdowns read, filled from the records already there."""
    from longcat.store.schema import usage_records, usage_rollup

    have = {i["name"] for i in inspect(conn).get_indexes("usage_records")}
    for index in usage_records.indexes:
        if index.name not in have:
            index.create(conn)
    if "usage_rollup" not in inspect(conn).get_table_names():
        usage_rollup.create(conn)
        conn.exec_driver_sql(
            "INSERT INTO usage_rollup (account_id, day, key_id, model, status, requests, input_tokens, output_tokens, "
            "cached_tokens, billed_tokens, latency_ms) SELECT account_id, day, key_id, model, status, COUNT(*), "
            "SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(billed_tokens), SUM(latency_ms) "
            "FROM usage_records GROUP BY account_id, day, key_id, model, status"
        )


def _responses_retention(conn: Connection) -> None:
    """Stored responses by age, for `responses_ttl_days`' background deletion."""
    if "ix_responses_created" not in {i["name"] for i in inspect(conn).get_indexes("responses")}:
        conn.exec_driver_sql("CREATE INDEX ix_responses_created ON responses (created_at)")


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "accounts, keys, usage, quotas, ledger, feedback, stored responses", _initial),
    (2, "feedback: unique claim on each valid text", _feedback_counted_hash),
    (3, "feedback: daily counters claimed atomically", _feedback_days),


    (4, "console: sessions, email tokens, invites, audit log, email_verified", _console),
    (5, "usage log: covering index and rollup for the console", _usage_log),
    (6, "stored responses: index by age for retention", _responses_retention),
]

LATEST = MIGRATIONS[-1][0]


def _migrate(conn: Connection) -> list[int]:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_ID})")
    _version_meta.create_all(conn)
    done = set(conn.execute(select(schema_version.c.version)).scalars())
    applied = []
    for version, description, step in MIGRATIONS:
        if version in done:
            continue
        step(conn)
        conn.execute(schema_version.insert().values(version=version, description=description))
        applied.append(version)
    return applied


async def migrate(engine: AsyncEngine) -> list[int]:
    """Apply the steps the database lacks; returns their numbers."""
    async with engine.begin() as conn:
        return await conn.run_sync(_migrate)
