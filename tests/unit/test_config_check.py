"""Configuration errors stop start-up with one line naming the setting, the value and what is
allowed; `longcat config check` and `longcat config show` (secrets masked)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from longcat.config import ConfigError, load_settings, mask_url
from longcat.config_show import render
from longcat.engines import catalog

REPO = Path(__file__).resolve().parents[2]


def _errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        catalog.check(load_settings(cfg, env=env or {}), env=env or {})
    message = str(info.value)
    assert "\n" not in message
    return message.replace(f"{cfg}: ", "")


@pytest.mark.parametrize(
    "text, message",
    [
        # unknown settings, with the closest known name
        ("prot = 9000", "unknown setting 'prot' (did you mean 'port'?)"),
        ("redis_ulr = 'redis://x'", "unknown setting 'redis_ulr' (did you mean 'redis_url'?)"),
        ("[server]\nport = 1", "unknown setting 'server'"),
        # wrong types
        ("port = 'abc'", 'port = "abc": must be an integer from 1 to 65535'),
        ("port = true", "port = true: must be an integer from 1 to 65535"),
        ("header_timeout = 'slow'", 'header_timeout = "slow": must be a number more than 0'),
        ("log_level = 3", "log_level = 3: must be a string"),
        ("data_dir = 5", "data_dir = 5: must be a string"),
        ("models = 3", "models must be an array of tables ([[models]])"),
        # out of range
        ("port = 70000", "port = 70000: must be an integer from 1 to 65535"),
        ("port = 0", "port = 0: must be an integer from 1 to 65535"),
        ("key_rpm = -5", "key_rpm = -5: must be an integer, 0 or more"),
        ("daily_quota = 100000000000000000000", "daily_quota = 100000000000000000000: must be an integer, 0 or more"),
        ("body_timeout = 0", "body_timeout = 0: must be a number more than 0"),
        ("shutdown_grace = -1.5", "shutdown_grace = -1.5: must be a number, 0 or more"),
        ("feedback_refresh_probability = 1.5", "feedback_refresh_probability = 1.5: must be a number from 0 to 1"),
        ("session_days = 0", "session_days = 0: must be an integer from 1 to 3650"),
        ("default_max_tokens = 0", "default_max_tokens = 0: must be a positive integer"),
        # choices and formats
        ("registration = 'invite-only'", 'registration = "invite-only": must be one of open, invite, closed'),
        ("log_level = 'loud'", 'log_level = "loud": must be one of debug, info, warning, error, critical'),
        ("database_url = 'mysql://u:hunter2@h/db'",
         'database_url = "mysql://u:***@h/db": must be a URL starting with sqlite+aiosqlite:// or postgresql+asyncpg://'),
        ("redis_url = 'localhost:6379'", 'redis_url = "localhost:6379": must be a URL starting with redis:// or rediss:// or unix://'),
        ("public_url = 'example.com'", 'public_url = "example.com": must be a URL starting with http:// or https://'),
        ("trusted_proxies = '10.0.0.0/8, proxy.local'",
         "trusted_proxies = \"10.0.0.0/8, proxy.local\": must be comma-separated IP addresses or networks ('proxy.local' is neither)"),
        # a secret's value is never echoed, even when it is the wrong type
        ("secret_key = 12345", "secret_key = ***: must be a string"),
        # model entries
        ("[[models]]\nengine = 'mock'", "models[0]: a model needs 'id' (a non-empty string)"),
        ("[[models]]\nid = 'm'", "models[0]: a model needs 'engine' (one of embedded, mock, openai_compat, anthropic_compat)"),
        ("[[models]]\nid = 'm'\nengine = 'vllm'",
         "models[0] 'm': engine = \"vllm\": must be one of embedded, mock, openai_compat, anthropic_compat"),
        ("[[models]]\nid = 'm'\nengine = 'mock'\ncontext_window = -1", "models[0] 'm': context_window = -1: must be a positive integer"),
        ("[[models]]\nid = 'm'\nengine = 'mock'\ncontext_window = 100\nmax_output = 200",
         "models[0] 'm': max_output = 200: must be at most the context_window (100)"),
        ("[[models]]\nid = 'm'\nengine = 'mock'\nvision = 'yes'", "models[0] 'm': vision = \"yes\": must be true or false"),
        ("[[models]]\nid = 'a'\nengine = 'mock'\n[[models]]\nid = 'a'\nengine = 'mock'",
         "model id 'a' appears twice: model ids in the catalog must be unique"),
        # engine options, each engine's own
        ("[[models]]\nid = 'm'\nengine = 'mock'\ntoken_dealy = 0.1",
         "model 'm': unknown option(s) token_dealy for engine 'mock' (did you mean 'token_delay'?)"),
        ("[[models]]\nid = 'm'\nengine = 'mock'\ntoken_delay = -1", "model 'm': token_delay = -1: must be a number, 0 or more"),
        ("[[models]]\nid = 'm'\nengine = 'mock'\nscript = [{ say = 'hi' }]", "model 'm': script step 0 needs 'text', 'tool' or 'tool_calls'"),
        ("[[models]]\nid = 'm'\nengine = 'embedded'\nthreds = 2",
         "model 'm': unknown option(s) threds for engine 'embedded' (did you mean 'threads'?)"),
        ("[[models]]\nid = 'm'\nengine = 'embedded'\nthreads = -2", "model 'm': threads = -2: must be an integer from 0 to 1024"),
        ("[[models]]\nid = 'm'\nengine = 'embedded'\nrepeat_penalty = 0", "model 'm': repeat_penalty = 0: must be a number more than 0 and at most 10"),
        ("[[models]]\nid = 'm'\nengine = 'embedded'\nmodel_path = '/nonexistent/x.gguf'",
         "model 'm': model_path = '/nonexistent/x.gguf': must be an existing GGUF file"),
        ("[[models]]\nid = 'm'\nengine = 'openai_compat'\nbase_ur = 'http://h/v1'",
         "model 'm': unknown option(s) base_ur for engine 'openai_compat' (did you mean 'base_url'?)"),
        ("[[models]]\nid = 'm'\nengine = 'anthropic_compat'\nbase_url = 'http://h'\nprompt_cache = true",
         "model 'm': unknown option(s) prompt_cache for engine 'anthropic_compat' (did you mean 'prompt_caching'?)"),
        ("[[models]]\nid = 'm'\nengine = 'openai_compat'\nbase_url = 'http://h/v1'\nmax_connections = 0",
         "model 'm': 'max_connections' must be a positive integer"),
    ],
)
def test_each_bad_config_is_one_exact_line(tmp_path: Path, text: str, message: str):
    assert _errors(tmp_path, text) == message


@pytest.mark.parametrize(
    "env, message",
    [
        ({"LONGCAT_PORT": "eighty"}, 'LONGCAT_PORT = "eighty": must be an integer from 1 to 65535'),
        ({"LONGCAT_EMBEDDED_THREADS": "-1"}, 'LONGCAT_EMBEDDED_THREADS = "-1": must be an integer, 0 or more'),
        ({"LONGCAT_BODY_TIMEOUT": "nan"}, 'LONGCAT_BODY_TIMEOUT = "nan": must be a number more than 0'),
        ({"LONGCAT_REGISTRATION": "sometimes"}, 'LONGCAT_REGISTRATION = "sometimes": must be one of open, invite, closed'),
        ({"LONGCAT_DATABASE_URL": "postgresql://app:hunter2@db/x"},
         'LONGCAT_DATABASE_URL = "postgresql://app:***@db/x": must be a URL starting with sqlite+aiosqlite:// or postgresql+asyncpg://'),
    ],
)
def test_bad_environment_values(env: dict[str, str], message: str):
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert str(info.value) == message


def test_good_values_in_every_form(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("port = 9000\nheader_timeout = 5\nregistration = 'invite'\ntrusted_proxies = '10.0.0.0/8, ::1'\n")
    s = load_settings(cfg, env={"LONGCAT_LOG_LEVEL": "WARNING", "LONGCAT_KEY_RPM": "1_000", "LONGCAT_LEASE_SECONDS": "60"})
    assert (s.port, s.header_timeout, s.registration, s.log_level, s.key_rpm, s.lease_seconds) == (
        9000, 5.0, "invite", "warning", 1000, 60.0)
    assert isinstance(s.header_timeout, float)


def test_mask_url_keeps_everything_but_the_secrets():
    assert mask_url("sqlite+aiosqlite:////data/x.db") == "sqlite+aiosqlite:////data/x.db"
    assert mask_url("postgresql+asyncpg://app:p@ss@db:5432/x?ssl=require") == "postgresql+asyncpg://app:***@db:5432/x?ssl=require"
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("https://h/v1?api_key=k&x=1#f") == "https://h/v1?api_key=***&x=1#f"
    assert mask_url("smtp://user@h:587?from=a@b") == "smtp://user@h:587?from=a@b"


# ------------------------------------------------------------------ the real CLI, as a subprocess


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LONGCAT_")}
    clean["PYTHONPATH"] = str(REPO / "src") + os.pathsep + clean.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "longcat", *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})}, cwd=cwd)


def _one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_serve_stops_on_a_bad_file_with_one_line(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("prot = 9000\n")
    line = _one_error_line(_cli("serve", "--config", str(cfg), "--data-dir", str(tmp_path)), 2)
    assert line == f"error: {cfg}: unknown setting 'prot' (did you mean 'port'?)"


def test_serve_stops_on_an_unknown_engine_option_before_touching_the_database(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[[models]]\nid = 'm'\nengine = 'mock'\nscirpt = []\n")
    line = _one_error_line(_cli("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d")), 2)
    assert line == f"error: {cfg}: model 'm': unknown option(s) scirpt for engine 'mock' (did you mean 'script'?)"
    assert not (tmp_path / "d").exists()


def test_serve_stops_on_a_bad_environment_value(tmp_path: Path):
    line = _one_error_line(_cli("serve", "--data-dir", str(tmp_path), env={"LONGCAT_KEY_TPM": "-1"}), 2)
    assert line == 'error: LONGCAT_KEY_TPM = "-1": must be an integer, 0 or more'


def test_serve_stops_on_an_unreachable_postgres_with_the_url_masked(tmp_path: Path):
    url = "postgresql+asyncpg://nobody:hunter2@127.0.0.1:1/x"
    result = _cli("serve", "--data-dir", str(tmp_path), env={"LONGCAT_DATABASE_URL": url})
    line = _one_error_line(result, 3)
    assert line.startswith("error: database postgresql+asyncpg://nobody:***@127.0.0.1:1/x is unreachable: ")
    assert "hunter2" not in result.stderr and ("refused" in line.lower() or "connect call failed" in line.lower())


def test_serve_stops_on_an_unreachable_redis(tmp_path: Path):
    result = _cli("serve", "--data-dir", str(tmp_path), env={"LONGCAT_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"})
    line = _one_error_line(result, 3)
    assert line.startswith("error: redis redis://:***@127.0.0.1:1/0 is unreachable: ") and "hunter2" not in result.stderr


def test_other_commands_answer_an_unreachable_database_in_one_line(tmp_path: Path):
    result = _cli("keys", "list", "a@example.com", "--data-dir", str(tmp_path),
                  env={"LONGCAT_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/x"})
    assert _one_error_line(result, 3).startswith("error: database postgresql+asyncpg://nobody@127.0.0.1:1/x is unreachable")


def test_config_check_ok_names_the_models(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[[models]]\nid = 'a'\nengine = 'mock'\n[[models]]\nid = 'b'\nengine = 'openai_compat'\nbase_url = 'http://127.0.0.1:1/v1'\n")
    result = _cli("config", "check", "--config", str(cfg), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 2 models: a (mock), b (openai_compat); database reachable\n"
    assert not (tmp_path / "data").exists()  # checked, not created


def test_config_check_tries_postgres_and_redis(tmp_path: Path):
    env = {"LONGCAT_DATABASE_URL": "postgresql+asyncpg://127.0.0.1:5432/test", "LONGCAT_REDIS_URL": "redis://127.0.0.1:6379/0"}
    result = _cli("config", "check", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("; database and Redis reachable\n")
    refused = _cli("config", "check", "--data-dir", str(tmp_path), env={**env, "LONGCAT_REDIS_URL": "redis://127.0.0.1:1"})
    assert _one_error_line(refused, 3).startswith("error: redis redis://127.0.0.1:1 is unreachable")
    offline = _cli("config", "check", "--no-connect", "--data-dir", str(tmp_path), env={**env, "LONGCAT_REDIS_URL": "redis://127.0.0.1:1"})
    assert offline.returncode == 0 and offline.stdout == "ok: 1 model: LongCat-2.0-Preview (embedded)\n"


def test_config_check_fails_with_the_line(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[[models]]\nid = 'm'\nengine = 'openai_compat'\nbase_url = 'http://h/v1'\napi_key_env = 'NOT_SET_ANYWHERE'\n")
    line = _one_error_line(_cli("config", "check", "--config", str(cfg)), 2)
    assert line == f"error: {cfg}: model 'm': 'api_key_env' names the environment variable 'NOT_SET_ANYWHERE', which is not set"


def test_config_check_warns_of_a_misspelt_variable(tmp_path: Path):
    result = _cli("config", "check", "--no-connect", "--data-dir", str(tmp_path), env={"LONGCAT_PROT": "9000", "LONGCAT_API_KEY": "x"})
    assert result.returncode == 0
    assert result.stderr == "warning: LONGCAT_PROT is not a setting (did you mean 'LONGCAT_PORT'?)\n"


# ------------------------------------------------------------------ config show

SECRETS = ["SIGNING-s3cret", "SMTP-pw-1", "DB-pw-2", "REDIS-pw-3", "URL-pw-4", "QUERY-key-5", "UPSTREAM-key-6", "NESTED-tok-7",
           "ENV-signing-8", "METRICS-tok-9"]

PLANTED = """
secret_key = "SIGNING-s3cret"
smtp_url = "smtps://mailer:SMTP-pw-1@mail.example.com:465?from=noreply@example.com"
database_url = "postgresql+asyncpg://app:DB-pw-2@127.0.0.1:5432/test"
redis_url = "redis://:REDIS-pw-3@127.0.0.1:6379/0"

[[models]]
id = "up"
engine = "openai_compat"
base_urls = ["https://user:URL-pw-4@a.example/v1", "https://b.example/v1?api_key=QUERY-key-5"]
api_key = "UPSTREAM-key-6"
extra_body = { metadata = { auth_token = "NESTED-tok-7" } }

[[models]]
id = "m"
engine = "mock"
script = [{ text = "hi" }]
"""


def test_config_show_masks_every_secret_and_is_a_config_file(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(PLANTED)
    result = _cli("config", "show", "--config", str(cfg), "--data-dir", str(tmp_path), env={"LONGCAT_SECRET_KEY": "ENV-signing-8"})
    assert result.returncode == 0, result.stderr
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr
    shown = tomllib.loads(result.stdout)
    assert shown["secret_key"] == "***" and shown["database_url"] == "postgresql+asyncpg://app:***@127.0.0.1:5432/test"
    assert shown["smtp_url"] == "smtps://mailer:***@mail.example.com:465?from=noreply@example.com"
    up, mock = shown["models"]
    assert up["api_key"] == "***" and up["base_urls"] == ["https://user:***@a.example/v1", "https://b.example/v1?api_key=***"]
    assert up["extra_body"] == {"metadata": {"auth_token": "***"}} and mock["script"] == [{"text": "hi"}]
    # What is not secret is shown as it is, and the output loads back as the same settings.
    again = tmp_path / "again.toml"
    again.write_text(result.stdout)
    reloaded = load_settings(again, env={})
    original = load_settings(cfg, env={}, data_dir=str(tmp_path))
    assert [m.id for m in reloaded.models] == ["up", "m"] and reloaded.key_rpm == original.key_rpm
    assert reloaded.models[1].options == original.models[1].options


def test_show_masks_any_secret_named_field_a_new_setting_brings():
    from dataclasses import make_dataclass

    from longcat.config import Settings
    from longcat.config_show import masked

    settings = load_settings(env={})
    assert masked("metrics_token", "METRICS-tok-9") == "***" and masked("metrics_token", "") == ""
    assert masked("webhook_secret", "x") == "***" and masked("key_rpm", 300) == 300
    assert "METRICS-tok-9" not in render(settings)
    extended = make_dataclass("Extended", [("metrics_token", str, "METRICS-tok-9")], bases=(Settings,))
    assert "METRICS-tok-9" not in render(extended(models=settings.models))
