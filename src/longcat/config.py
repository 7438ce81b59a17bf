"""Settings: built-in defaults < TOML file < `LONGCAT_*` environment variables < command-line flags.

Top-level TOML keys have the same names as the `Settings` fields (`port = 9000` in the file,
`LONGCAT_PORT=9000` in the environment). The model catalog is the `[[models]]` array of tables;
keys a model table has beyond the common ones are handed to its engine as options.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "LONGCAT_"

# The embedded model: SmolLM2-135M-Instruct, trained with an 8,192-token context.
EMBEDDED_CONTEXT = 8192


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(slots=True)
class ModelConfig:
    """One catalog entry: the id clients send, the engine that serves it and its real limits."""

    id: str
    engine: str
    context_window: int
    max_output: int
    name: str | None = None
    description: str = ""
    owned_by: str = "LongCat"
    created: int = 1767225600  # 2026-01-01T00:00:00Z
    vision: bool = False
    reasoning: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        return self.name or self.id


_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)} - {"options"}


def default_models() -> list[ModelConfig]:
    return [
        ModelConfig(
            id="LongCat-2.0-Preview",
            engine="embedded",
            context_window=EMBEDDED_CONTEXT,
            max_output=EMBEDDED_CONTEXT,
            description="Served on this machine by the embedded SmolLM2-135M-Instruct (Q4_1) model.",
        )
    ]


@dataclass(slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("data")
    # Empty means SQLite (WAL) inside data_dir.
    database_url: str = ""
    # Empty means in-process counters (one process); a redis:// URL shares them across replicas.
    redis_url: str = ""
    log_level: str = "info"
    # max_tokens when a request gives none (capped by the model's max output).
    default_max_tokens: int = 32768
    # Requests allowed to wait for one engine slot before new ones get 503 overloaded.
    engine_queue_limit: int = 64
    # CPU threads for the embedded engine; 0 means all cores.
    embedded_threads: int = 0
    # Sequences the embedded engine decodes together (continuous batching); 0: four per core, at
    # most 8. Each holds a whole context's KV cache (about 190 MB for the default model).
    embedded_slots: int = 0
    # Prompts one account may have tokenized at once, per model (the others wait their turn).
    account_tokenize_concurrency: int = 2
    # Seconds a client may take to send a request's headers, and may stay silent in its body.
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    # Open connections; beyond it the oldest idle or half-sent one makes room, else the newest
    # is closed. 0: as many as the process's file descriptors allow, less a margin.
    max_connections: int = 0
    # Seconds a server waits for in-flight requests when asked to stop.
    shutdown_grace: float = 10.0
    # Seconds of engine silence (queue, long prefill) after which a stream sends a keep-alive ping.
    stream_ping_interval: float = 10.0
    # Daily token quota per account (input + output), refreshed at 00:00 Beijing time.
    daily_quota: int = 5_000_000
    # The most one account may be granted in one day, its daily quota and feedback refreshes together.
    daily_quota_cap: int = 120_000_000
    # Chance that a valid feedback submission refreshes the quota; how many count per day.
    feedback_refresh_probability: float = 0.5
    feedback_daily_limit: int = 10
    # Rate limits per API key and per account (0 = unlimited): requests and tokens per minute,
    # requests in flight.
    key_rpm: int = 300
    key_tpm: int = 5_000_000
    key_concurrency: int = 16
    account_rpm: int = 600
    account_tpm: int = 10_000_000
    account_concurrency: int = 32
    # How long a request may hold a concurrency slot or a quota reservation if its replica dies.
    lease_seconds: float = 1800.0
    # With Redis: seconds without a heartbeat after which a replica is dead, and the others give
    # back the concurrency slots and quota reservations its requests held.
    replica_timeout: float = 10.0
    # Key prefix in Redis, so several deployments (or test servers) can share one Redis.
    redis_prefix: str = "lc:"
    # For tests only: a file holding seconds to add to the clock (cross midnight without waiting).
    clock_file: str = ""
    # Signs what the platform hands out and must recognise later (thinking signatures, sessions).
    # Empty: a random key kept in <data_dir>/secret.key. Replicas must share one.
    secret_key: str = ""
    # The web console. Who may create an account: open | invite (an admin's invite code) | closed.
    registration: str = "open"
    # smtp://user:pass@host:587 (STARTTLS) or smtps://…:465, with ?from=addr: verification and
    # password-reset emails. Empty: no email; `longcat users set-password` resets passwords.
    smtp_url: str = ""
    # The address people reach the platform at (links in emails, "copy as" snippets); empty: the
    # address each request came to.
    public_url: str = ""
    # Days a console sign-in lasts.
    session_days: int = 14
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated addresses).
    trusted_proxies: str = ""
    # Sign-in attempts per minute, per account and per client address.
    login_rpm_account: int = 5
    login_rpm_ip: int = 20
    # Password hashes computed at once (each takes ~0.1 s of CPU and 128 MiB).
    password_hash_concurrency: int = 2
    models: list[ModelConfig] = field(default_factory=default_models)
    config_file: Path | None = None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'longcat.db').resolve()}"

    def resolved_secret_key(self) -> bytes:
        """The signing key: the setting, else the data dir's key file, created on first use."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            import secrets

            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip().encode()



_SCALAR_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name not in ("models", "config_file")}


def _coerce(name: str, raw: Any, like: Any) -> Any:
    """Convert a TOML or environment value to the type of the field's default."""
    try:
        if isinstance(like, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(like, int):
            return int(raw)
        if isinstance(like, float):
            return float(raw)
        if isinstance(like, Path):
            return Path(str(raw)).expanduser()
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r}: cannot use {raw!r} (expected {type(like).__name__})") from None


def _parse_model(entry: Any, where: str) -> ModelConfig:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: each [[models]] entry must be a table")
    for required in ("id", "engine"):
        if not isinstance(entry.get(required), str) or not entry[required]:
            raise ConfigError(f"{where}: a model needs a non-empty string {required!r}")
    known = {k: v for k, v in entry.items() if k in _MODEL_KEYS}
    options = {k: v for k, v in entry.items() if k not in _MODEL_KEYS}
    if entry["engine"] == "embedded":
        known.setdefault("context_window", EMBEDDED_CONTEXT)
        known.setdefault("max_output", known["context_window"])
    else:
        known.setdefault("context_window", 131072)
        known.setdefault("max_output", min(32768, known["context_window"]))
    for key in ("context_window", "max_output"):
        if not isinstance(known[key], int) or known[key] <= 0:
            raise ConfigError(f"{where}: model {entry['id']!r}: {key} must be a positive integer")
    return ModelConfig(**known, options=options)


def load_settings(config_file: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, an optional TOML file, the environment, then explicit overrides.

    The file is `config_file`, else `$LONGCAT_CONFIG`, else `<data_dir>/config.toml` when it exists.
    """
    env = dict(os.environ if env is None else env)
    settings = Settings()
    data: dict[str, Any] = {}

    # data_dir decides where the default config file lives, so settle it first.
    data_dir = overrides.get("data_dir") or env.get(ENV_PREFIX + "DATA_DIR")
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if not path:
        candidate = Path(data_dir or settings.data_dir) / "config.toml"
        path = candidate if candidate.exists() else None
    if path:
        path = Path(path).expanduser()
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        settings.config_file = path

    for key, value in data.items():
        if key == "models":
            if not isinstance(value, list):
                raise ConfigError(f"{path}: 'models' must be an array of tables ([[models]])")
            settings.models = [_parse_model(e, str(path)) for e in value]
        elif key in _SCALAR_FIELDS:
            setattr(settings, key, _coerce(key, value, getattr(settings, key)))
        else:
            raise ConfigError(f"{path}: unknown setting {key!r}")

    for name in _SCALAR_FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            setattr(settings, name, _coerce(ENV_PREFIX + name.upper(), raw, getattr(settings, name)))

    for name, value in overrides.items():
        if value is None:
            continue
        if name not in _SCALAR_FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        setattr(settings, name, _coerce(name, value, getattr(settings, name)))

    if settings.registration not in ("open", "invite", "closed"):
        raise ConfigError(f"setting 'registration': {settings.registration!r} is not one of open, invite, closed")
    ids = [m.id for m in settings.models]
    if len(ids) != len(set(ids)):
        raise ConfigError("model ids in the catalog must be unique")
    return settings
