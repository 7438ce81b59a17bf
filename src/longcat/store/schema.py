"""Tables. SQLAlchemy Core, so the same definitions run on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Times are Unix seconds (float as BigInteger milliseconds would be overkill here): integers, UTC.

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    # Overrides set by an admin; NULL means "the configured default".
    Column("daily_quota", BigInteger, nullable=True),
    Column("rpm_limit", Integer, nullable=True),
    Column("tpm_limit", Integer, nullable=True),
    Column("concurrency_limit", Integer, nullable=True),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(50), nullable=False),
    # sha256 of the whole key, hex. The key itself is never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    # What the console may show of a key: "ak_Ab12…wxyz".
    Column("hint", String(32), nullable=False),
    Column("status", String(16), nullable=False, default="enabled"),  # enabled | disabled | deleted
    Column("created_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger, nullable=True),
    Column("rpm_limit", Integer, nullable=True),
    Column("tpm_limit", Integer, nullable=True),
    Column("concurrency_limit", Integer, nullable=True),
)
Index("ix_api_keys_account", api_keys.c.account_id)

# One row per admitted request, written in batches (group commit) when it ends. `billed_tokens`
# is what the quota was charged: input + output, or 0 when the request failed before any output.
usage_records = Table(
    "usage_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(40), nullable=False, unique=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("endpoint", String(40), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("billed_tokens", BigInteger, nullable=False),
    # How it ended: ok | length | client_closed | engine_error | shutdown | cancelled
    Column("status", String(20), nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("day", String(10), nullable=False),  # Beijing calendar day, YYYY-MM-DD
    Column("created_at", Float, nullable=False),
)
Index("ix_usage_records_account_day", usage_records.c.account_id, usage_records.c.day)

# Per account, day and model: what the Usage page charts, kept in step with usage_records.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("requests", BigInteger, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    Column("billed_tokens", BigInteger, nullable=False, default=0),
)

# The quota of one account on one Beijing day: `base` granted at the day's first use,
# `granted` by feedback refreshes (and admin adjustments), `used` by requests.
quota_days = Table(
    "quota_days",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("base", BigInteger, nullable=False),
    Column("granted", BigInteger, nullable=False, default=0),
    Column("used", BigInteger, nullable=False, default=0),
)

# Every grant of quota: the daily allowance, feedback refreshes, admin changes. Together with
# quota_days.used (the sum of billed usage) it balances: remaining = sum(grants) - used.
quota_ledger = Table(
    "quota_ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("day", String(10), nullable=False),
    Column("kind", String(20), nullable=False),  # daily_allowance | feedback_refresh | admin_adjust
    Column("tokens", BigInteger, nullable=False),
    Column("note", String(200), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
)
Index("ix_quota_ledger_account_day", quota_ledger.c.account_id, quota_ledger.c.day)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("key_id", Integer, nullable=True),
    Column("request_id", String(40), nullable=True),
    Column("rating", Integer, nullable=False),
    Column("category", String(20), nullable=False),
    Column("text", Text, nullable=False),
    # sha256 of the normalised text: a repeat of earlier feedback is not a valid submission.
    Column("text_hash", String(64), nullable=False),
    # The hash again, on valid submissions only: a unique index on it makes "no repeats" hold
    # even when two replicas take the same text at the same instant.
    Column("counted_hash", String(64), nullable=True),
    Column("valid", Boolean, nullable=False),
    Column("refreshed", Boolean, nullable=False),
    Column("granted", BigInteger, nullable=False, default=0),
    Column("day", String(10), nullable=False),
    Column("created_at", Float, nullable=False),
)
Index("ix_feedback_account_hash", feedback.c.account_id, feedback.c.text_hash)
Index("ix_feedback_account_day", feedback.c.account_id, feedback.c.day)
Index("ux_feedback_counted", feedback.c.account_id, feedback.c.counted_hash, unique=True)

# Per account and day: feedback counted for refreshes (`valid`) and refused submissions kept
# (`invalid`). Each is claimed by one conditional UPDATE, so the daily limits hold exactly on any
# number of replicas, and the table of submissions cannot be flooded.
feedback_days = Table(
    "feedback_days",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("valid", Integer, nullable=False, default=0),
    Column("invalid", Integer, nullable=False, default=0),
)

# Responses API objects created with `store: true`: what GET /responses/{id} returns and what
# `previous_response_id` continues from. `body` is the response object and `items` the input
# items of the conversation before it, both JSON text.
responses = Table(
    "responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("key_id", Integer, nullable=True),
    Column("model", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    Column("items", Text, nullable=False),
)
Index("ix_responses_account", responses.c.account_id)
