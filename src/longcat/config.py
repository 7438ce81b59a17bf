"""Settings: built-in defaults < TOML file < `LONGCAT_*` environment variables < command-line flags.

Top-level TOML keys have the same names as the `Settings` fields (`port = 9000` in the file,
`LONGCAT_PORT=9000` in the environment). The model catalog is the `[[models]]` array of tables;
keys a model table has beyond the common ones are handed to its engine as options.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

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
    # Log lines as JSON objects (one per line) or text; auto: text on a terminal, JSON otherwise.
    log_format: str = "auto"
    # Bearer token that unlocks /metrics on the main port; empty: /metrics there is a 404.
    metrics_token: str = ""
    # A separate port serving only the Prometheus metrics, without a token (0: none), and its address.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
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
    # Bounds on one request, each refused in the caller's format: its headers in KiB (431), its
    # body in MiB (413), the body's JSON nesting depth (400; at most 256), and its messages (or
    # input items), tool definitions and content blocks in all (400).
    max_header_kb: int = 64
    max_body_mb: int = 32
    max_json_depth: int = 128
    max_messages: int = 20_000
    max_tools: int = 1_000
    max_content_blocks: int = 50_000
    # Seconds a server waits for in-flight requests when asked to stop.
    shutdown_grace: float = 10.0
    # Processes serving the one port (`longcat serve --workers N`); more than 1 needs redis_url.
    workers: int = 1
    # Days a stored Responses API object (`store: true`) is kept; 0 keeps them forever.
    responses_ttl_days: float = 30.0
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


# ============================================================================ what is allowed
# Checked for every setting, whatever its source, so a new field gets the checks for free:
# its type comes from the annotation; a number must be 0 or more unless listed here.

# Inclusive bounds of numeric settings. A field named `*_port` not listed is 0-65535 (0: off).
RANGES: dict[str, tuple[float, float]] = {
    "port": (1, 65535),
    "feedback_refresh_probability": (0, 1),
    "session_days": (1, 3650),
    "embedded_slots": (0, 256),
    "workers": (1, 256),
    # Deeper, and recursive code (copying, encoding) would near Python's recursion limit.
    "max_json_depth": (1, 256),
}
# Numbers that must be more than 0 (a deadline of 0 s would refuse every request).
POSITIVE = frozenset({
    "header_timeout", "body_timeout", "stream_ping_interval", "lease_seconds", "default_max_tokens",
    "account_tokenize_concurrency", "password_hash_concurrency",
    "max_header_kb", "max_body_mb", "max_messages", "max_tools", "max_content_blocks",
})
# String settings with a fixed set of values (a `Literal[...]` annotation works too).
CHOICES: dict[str, tuple[str, ...]] = {
    "registration": ("open", "invite", "closed"),
    "log_level": ("debug", "info", "warning", "error", "critical"),
    "log_format": ("auto", "json", "text"),
}
# URL settings (when not empty) and the schemes each accepts; any other `*_url` needs a scheme.
URL_SCHEMES: dict[str, tuple[str, ...]] = {
    "database_url": ("sqlite+aiosqlite", "postgresql+asyncpg"),
    "redis_url": ("redis", "rediss", "unix"),
    "smtp_url": ("smtp", "smtps"),
    "public_url": ("http", "https"),
}
# The engines a catalog entry may name (engines/catalog.py builds them).
ENGINES = ("embedded", "mock", "openai_compat", "anthropic_compat")
# Larger integers are typos, and would overflow the database's 64-bit columns in sums.
MAX_INT = 2**53

# A name whose last word is one of these holds a secret: `secret_key`, `metrics_token`, `api_key`…
_SECRET_WORDS = frozenset({
    "key", "secret", "password", "passwd", "pass", "token", "credential", "credentials", "apikey", "authorization",
})


def is_secret_name(name: str) -> bool:
    """Whether a setting or option of this name holds a secret (its value is never shown)."""
    return name.lower().replace("-", "_").rsplit("_", 1)[-1] in _SECRET_WORDS


def mask_url(url: str) -> str:
    """`url` with its password, and the values of secret-named query parameters, replaced by ***.

    Works on the text itself (no parse and rebuild), so `sqlite:////abs/path` stays as it was."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        authority = f"{user}{':***' if colon else ''}@{host}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        pairs = [p.partition("=") for p in query.split("&")]
        query = "&".join(f"{k}{eq}{'***' if eq and is_secret_name(unquote(k)) else v}" for k, eq, v in pairs)
        query += hash_ + fragment
    return f"{scheme}://{authority}{path}{qmark}{query}"


def shown(name: str, value: Any) -> str:
    """A value fit for an error message: secrets masked, URLs without passwords, kept short."""
    if is_secret_name(name):
        return "***"
    if isinstance(value, str):
        text = mask_url(value) if "://" in value else value
        return json.dumps(text[:120] + ("…" if len(text) > 120 else ""), ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "[…]" if isinstance(value, list) else "{…}" if isinstance(value, dict) else repr(value)[:120]


def _kind(hint: Any, default: Any) -> Any:
    """The type a setting holds: its annotation without `| None`, else its default's type."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _kind(args[0], default) if len(args) == 1 else type(default)
    if origin is typing.Literal or hint in (bool, int, float, str, Path):
        return hint
    return type(default)


def _bounds(name: str, kind: Any) -> tuple[float, float]:
    if name in RANGES:
        return RANGES[name]
    if name.endswith("_port"):
        return (0, 65535)
    low = 1 if name in POSITIVE and kind is int else 0
    return (low, MAX_INT if kind is int else math.inf)


def _describe_number(name: str, kind: Any) -> str:
    low, high = _bounds(name, kind)
    what = "an integer" if kind is int else "a number"
    if name in POSITIVE and kind is float and (low, high) == (0, math.inf):
        return f"{what} more than 0"
    if high in (MAX_INT, math.inf):
        return "a positive integer" if (kind is int and low == 1) else f"{what}, {low:g} or more"
    return f"{what} from {low:g} to {high:g}"


def check_value(name: str, raw: Any, kind: Any, default: Any, *, text: bool) -> Any:
    """The value of setting `name` as its type, or a `ValueError` saying what is allowed.

    `text`: `raw` is a string to parse (an environment variable); else it must already have the
    right type (a TOML value, a flag)."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if text and str(raw).strip().lower() in ("1", "true", "yes", "on"):
            return True
        if text and str(raw).strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("must be true or false")
    if kind in (int, float):
        value: Any = None
        if text and isinstance(raw, str):
            try:
                value = int(raw.strip().replace("_", "")) if kind is int else float(raw)
            except ValueError:
                value = None
        elif not isinstance(raw, bool) and isinstance(raw, int):
            value = raw if kind is int else float(raw)
        elif kind is float and isinstance(raw, float):
            value = raw
        low, high = _bounds(name, kind)
        if value is None or not (low <= value <= high) or (kind is float and not math.isfinite(value)) or (
            name in POSITIVE and value <= 0
        ):
            raise ValueError(f"must be {_describe_number(name, kind)}")
        return value
    if isinstance(raw, Path) and kind is Path:
        return raw
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    if kind is Path:
        return Path(raw).expanduser()
    choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else CHOICES.get(name)
    if choices:
        match = next((c for c in choices if str(c).lower() == raw.strip().lower()), None)
        if match is None:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}")
        return match
    if raw and (name in URL_SCHEMES or name.endswith("_url")):
        _check_url(name, raw)
    if raw and name == "trusted_proxies":
        _check_networks(raw)
    return raw


def _check_url(name: str, url: str) -> None:
    scheme, sep, rest = url.partition("://")
    allowed = URL_SCHEMES.get(name)
    if not sep or not rest or (allowed and scheme.lower() not in allowed) or not re.fullmatch(r"[A-Za-z][\w+.-]*", scheme):
        if allowed:
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in allowed)}")
        raise ValueError("must be a URL (scheme://…)")


def _check_networks(text: str) -> None:
    for part in (p.strip() for p in text.split(",")):
        try:
            if part:
                ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(f"must be comma-separated IP addresses or networks ({part!r} is neither)") from None


def suggest(name: str, known: Any) -> str:
    """` (did you mean 'x'?)` for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name not in ("models", "config_file")}
_SCALAR_FIELDS = _FIELDS  # the name other modules knew
_HINTS = typing.get_type_hints(Settings)
_DEFAULTS = Settings()
_KINDS = {name: _kind(_HINTS.get(name), getattr(_DEFAULTS, name)) for name in _FIELDS}


def _setting(where: str, label: str, name: str, raw: Any, *, text: bool) -> Any:
    try:
        return check_value(name, raw, _KINDS[name], getattr(_DEFAULTS, name), text=text)
    except ValueError as exc:
        raise ConfigError(f"{where}{label} = {shown(name, raw)}: {exc}") from None


# ============================================================================ the model catalog

_MODEL_HINTS = typing.get_type_hints(ModelConfig)
_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"options"}


def _model_value(name: str, raw: Any) -> Any:
    kind = _kind(_MODEL_HINTS[name], None)
    if name in ("context_window", "max_output"):
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw <= MAX_INT:
            raise ValueError("must be a positive integer")
        return raw
    if name == "engine":
        if raw not in ENGINES:
            raise ValueError(f"must be one of {', '.join(ENGINES)}")
        return raw
    if name == "id" and (not isinstance(raw, str) or not raw.strip() or len(raw) > 256):
        raise ValueError("must be a non-empty string of at most 256 characters")
    return check_value(name, raw, kind, None, text=False)


def _parse_model(entry: Any, where: str) -> ModelConfig:
    """One `[[models]]` table; `where` names it in errors (file and index)."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: each [[models]] entry must be a table")
    for required in ("id", "engine"):
        if required not in entry:
            raise ConfigError(f"{where}: a model needs {required!r} ({'a non-empty string' if required == 'id' else 'one of ' + ', '.join(ENGINES)})")
    label = f"{where} {entry['id']!r}" if isinstance(entry["id"], str) else where
    known: dict[str, Any] = {}
    for key, value in entry.items():
        if key in _MODEL_FIELDS:
            try:
                known[key] = _model_value(key, value)
            except ValueError as exc:
                raise ConfigError(f"{label}: {key} = {shown(key, value)}: {exc}") from None
    options = {k: v for k, v in entry.items() if k not in _MODEL_FIELDS}
    if known["engine"] == "embedded":
        known.setdefault("context_window", EMBEDDED_CONTEXT)
        known.setdefault("max_output", known["context_window"])
    else:
        known.setdefault("context_window", 131072)
        known.setdefault("max_output", min(32768, known["context_window"]))
    if known["max_output"] > known["context_window"]:
        raise ConfigError(
            f"{label}: max_output = {known['max_output']}: must be at most the context_window ({known['context_window']})"
        )
    return ModelConfig(**known, options=options)


# ============================================================================ loading


def load_settings(config_file: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, an optional TOML file, the environment, then explicit overrides.

    The file is `config_file`, else `$LONGCAT_CONFIG`, else `<data_dir>/config.toml` when it exists.
    Anything that cannot be used raises `ConfigError` with one line naming the setting, the value
    and what is allowed. Engine options are checked by the catalog (`engines.catalog.check`).
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
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: cannot be read ({exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        settings.config_file = path

    where = f"{path}: "
    for key, value in data.items():
        if key == "models":
            if not isinstance(value, list):
                raise ConfigError(f"{where}models must be an array of tables ([[models]])")
            settings.models = [_parse_model(e, f"{path}: models[{i}]") for i, e in enumerate(value)]
        elif key in _FIELDS:
            setattr(settings, key, _setting(where, key, key, value, text=False))
        else:
            raise ConfigError(f"{where}unknown setting {key!r}{suggest(key, [*_FIELDS, 'models'])}")

    for name in _FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            setattr(settings, name, _setting("", ENV_PREFIX + name.upper(), name, raw, text=True))

    for name, value in overrides.items():
        if value is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}{suggest(name, _FIELDS)}")
        setattr(settings, name, _setting("", name, name, value, text=isinstance(value, str) and _KINDS[name] is not str))

    seen: set[str] = set()
    for model in settings.models:
        if model.id in seen:
            raise ConfigError(f"model id {model.id!r} appears twice: model ids in the catalog must be unique")
        seen.add(model.id)
    return settings


def unknown_env(env: dict[str, str]) -> list[str]:
    """`LONGCAT_*` variables that are no setting but look like one (likely typos), with advice.
    Others (`LONGCAT_API_KEY` for clients…) are not the server's business."""
    names = {n.upper() for n in _FIELDS} | {"CONFIG"}
    notes = []
    for var in sorted(env):
        name = var[len(ENV_PREFIX):]
        if var.startswith(ENV_PREFIX) and name not in names:
            close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.75)
            if close:
                notes.append(f"{var} is not a setting (did you mean {ENV_PREFIX + close[0]!r}?)")
    return notes
