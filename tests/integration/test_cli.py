"""The operator CLI against real processes: first start, users, keys, shutdown."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys

import httpx
import pytest

from tests.support.server import MOCK_CATALOG, Server, cli, free_port, write_config

KEY_RE = re.compile(r"ak_[A-Za-z0-9]{40}")


@pytest.fixture()
def fresh(tmp_path):
    data = tmp_path / "data"
    config = write_config(tmp_path / "config.toml", MOCK_CATALOG)
    server = Server(data, config, free_port())
    yield server
    server.stop()


def chat(server: Server, key: str) -> httpx.Response:
    return httpx.post(
        server.base_url + "/openai/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "mock-echo", "messages": [{"role": "user", "content": "hello"}]},
        timeout=10,
    )


def test_first_start_prints_a_working_key_once(fresh):
    fresh.start()
    out = fresh.log()
    keys = KEY_RE.findall(out)
    assert keys, out
    key = keys[0]
    assert f"curl -X POST {fresh.base_url}/openai/v1/chat/completions -H 'Authorization: Bearer {key}'" in out
    assert chat(fresh, key).json()["choices"][0]["message"]["content"] == "hello"
    assert fresh.stop() == 0

    fresh.start()
    assert not KEY_RE.findall(fresh.log()), "a later start printed a key"
    assert chat(fresh, key).status_code == 200


def test_sigint_and_sigterm_shut_down_cleanly(fresh):
    for sig in (signal.SIGINT, signal.SIGTERM):
        fresh.start()
        assert fresh.stop(sig) == 0
        assert "Traceback" not in fresh.log()
        assert "Application shutdown complete" in fresh.log()


def test_users_and_keys_lifecycle(fresh):
    data, config = fresh.data_dir, fresh.config
    created = cli(data, "users", "create", "Ann@Example.com", "--password-stdin", config=config, input="correct horse\n")
    assert "ann@example.com" in created.stdout and "password" not in created.stdout

    dup = cli(data, "users", "create", "ann@example.com", config=config, check=False)
    assert dup.returncode == 2 and "already exists" in dup.stderr

    out = cli(data, "keys", "create", "ann@example.com", "--name", "laptop", config=config).stdout
    key = out.strip().splitlines()[-1]
    assert KEY_RE.fullmatch(key)

    listing = cli(data, "keys", "list", "ann@example.com", config=config).stdout
    assert "laptop" in listing and key not in listing and key[-4:] in listing
    key_id = re.search(r"^\s*(\d+)\s+laptop", listing, re.M).group(1)

    assert re.search(r"laptop .* never$", listing, re.M)
    fresh.start()
    assert chat(fresh, key).status_code == 200
    assert not re.search(r"laptop .* never$", cli(data, "keys", "list", "ann@example.com", config=config).stdout, re.M)
    cli(data, "keys", "disable", key_id, config=config)
    r = chat(fresh, key)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    cli(data, "keys", "enable", key_id, config=config)
    assert chat(fresh, key).status_code == 200
    cli(data, "keys", "delete", key_id, config=config)
    assert chat(fresh, key).status_code == 401
    assert "laptop" not in cli(data, "keys", "list", "ann@example.com", config=config).stdout

    # Keys are stored only as hashes.
    db = sqlite3.connect(data / "longcat.db")
    dumped = "\n".join(db.iterdump())
    assert key not in dumped and key[3:] not in dumped


def test_key_name_rules_and_unknown_account(fresh):
    data, config = fresh.data_dir, fresh.config
    cli(data, "users", "create", "bob@example.com", config=config)
    short = cli(data, "keys", "create", "bob@example.com", "--name", "x", config=config, check=False)
    assert short.returncode == 2 and "2 to 50" in short.stderr
    missing = cli(data, "keys", "create", "nobody@example.com", config=config, check=False)
    assert missing.returncode == 2 and "no account" in missing.stderr


def test_environment_variables_are_honoured(fresh, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGCAT_")}
    env.update(LONGCAT_DATA_DIR=str(fresh.data_dir), LONGCAT_CONFIG=str(fresh.config))
    run = lambda *a: subprocess.run([sys.executable, "-m", "longcat", *a], env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
    assert run("users", "create", "env@example.com").returncode == 0
    key = run("keys", "create", "env@example.com").stdout.strip().splitlines()[-1]
    assert (fresh.data_dir / "longcat.db").exists()
    fresh.start()
    assert chat(fresh, key).status_code == 200


def test_bad_config_is_reported_not_a_traceback(tmp_path):
    bad = write_config(tmp_path / "bad.toml", "port = 'x'\n")
    r = subprocess.run([sys.executable, "-m", "longcat", "serve", "--config", str(bad), "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "port" in r.stderr and "Traceback" not in r.stderr
