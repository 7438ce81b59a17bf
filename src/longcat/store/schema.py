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
    # False only while an emailed verification link is pending (smtp_url set at registration).
    Column("email_verified", Boolean, nullable=False, default=True, server_default="1"),
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
Index("ix_responses_created", responses.c.created_at)  # retention deletes the oldest first

# ------------------------------------------------------------------------------------ console

# Console sign-ins. The cookie holds a random token; only its sha256 is stored, so a copy of the
# database cannot be replayed as a session.
sessions = Table(
    "sessions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seen_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("ip", String(64), nullable=False, default=""),
    Column("user_agent", String(200), nullable=False, default=""),
)
Index("ix_sessions_account", sessions.c.account_id)

# One-use secrets mailed to a person: email verification and password reset links (hash only).
email_tokens = Table(
    "email_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("purpose", String(16), nullable=False),  # verify | reset
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger, nullable=True),
)

# Invite codes for `registration = "invite"`: shown once to the admin who made them, stored hashed.
invites = Table(
    "invites",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("code_hash", String(64), nullable=False, unique=True),
    Column("hint", String(32), nullable=False),
    Column("note", String(200), nullable=False, default=""),
    Column("created_by", Integer, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Column("used_by", Integer, nullable=True),
    Column("used_at", BigInteger, nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
)

# Every change an admin makes: who, what, to whom, when. Never edited, never deleted.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("actor_id", Integer, nullable=True),
    Column("actor_email", String(254), nullable=False),
    Column("action", String(40), nullable=False),
    Column("target_account_id", Integer, nullable=True),
    Column("target_key_id", Integer, nullable=True),
    Column("detail", Text, nullable=False, default="{}"),  # JSON
    Column("created_at", BigInteger, nullable=False),
)
Index("ix_audit_log_created", audit_log.c.created_at)

# The Usage page's request log, newest first, filtered by day, key, model or status: the index
# holds every column the filter reads, so a page of ids is found without visiting the table.
Index(
    "ix_usage_records_account_log",
    usage_records.c.account_id, usage_records.c.id, usage_records.c.day, usage_records.c.key_id,
    usage_records.c.model, usage_records.c.status,
)

# Per account, day, key, model and status: what the Usage page's totals row and breakdowns add
# up, kept in step with usage_records in the same transaction (UsageStore.write_batch), so they
# cost a few hundred rows whatever the number of requests.
usage_rollup = Table(
    "usage_rollup",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("key_id", Integer, primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("status", String(20), primary_key=True),
    Column("requests", BigInteger, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    Column("billed_tokens", BigInteger, nullable=False, default=0),
    Column("latency_ms", BigInteger, nullable=False, default=0),
)
