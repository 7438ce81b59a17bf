"""The README's backups, done for real: SQLite's online backup of a running server's WAL
database, and pg_dump / pg_restore of a PostgreSQL one. Each restored copy serves the same
accounts and keys, and its books say what the clients were billed."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest

from tests.support.server import Server, free_port, scale_out_backend, write_config

CONFIG = """
[[models]]
id = "mock-echo"
engine = "mock"
context_window = 100000
max_output = 100000
"""


def spend(server: Server, key: str, n: int = 5) -> int:
    """`n` requests; the tokens the clients were told they used."""
    total = 0
    for i in range(n):
        r = httpx.post(server.base_url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "mock-echo", "messages": [{"role": "user", "content": f"backup number {i}"}]}, timeout=30)
        assert r.status_code == 200, r.text
        total += r.json()["usage"]["total_tokens"]
    return total


def used(server: Server, key: str) -> int:
    r = httpx.get(server.base_url + "/api/v1/usage", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["quota"]["used"]


def test_sqlite_online_backup_of_a_running_server(tmp_path):
    if shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 command is not installed (Debian: apt-get install sqlite3)")
    config = write_config(tmp_path / "config.toml", CONFIG)
    server = Server(tmp_path / "data", config, free_port()).start()
    try:
        key = server.new_key("backup@example.com")
        billed = spend(server, key)
        # While the server runs: its last records may still be in the WAL file, not the database
        # file; the backup API copies what a reader sees, both.
        assert (server.data_dir / "longcat.db-wal").stat().st_size > 0
        copy = tmp_path / "longcat-backup.db"
        subprocess.run(["sqlite3", str(server.data_dir / "longcat.db"), f".backup '{copy}'"], check=True, timeout=60)
    finally:
        server.stop()
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(copy, restored / "longcat.db")
    shutil.copy(server.data_dir / "secret.key", restored / "secret.key")
    again = Server(restored, config, free_port()).start()
    try:
        assert used(again, key) == billed
        assert spend(again, key, 1) > 0
    finally:
        again.stop()


def test_pg_dump_and_restore(tmp_path):
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: apt-get install postgresql-client)")
    config = write_config(tmp_path / "config.toml", CONFIG)
    with scale_out_backend("backup") as first, scale_out_backend("restored") as second:
        server = Server(tmp_path / "a", config, free_port(), env=first).start()
        try:
            key = server.new_key("pgbackup@example.com")
            billed = spend(server, key)
            dump = tmp_path / "longcat.dump"
            # While the server runs: pg_dump reads one consistent snapshot.
            subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-Fc", "-f", str(dump),
                            first["LONGCAT_DATABASE_URL"].rsplit("/", 1)[-1]], check=True, timeout=120)
        finally:
            server.stop()
        subprocess.run(["pg_restore", "-h", "127.0.0.1", "-U", "postgres", "--no-owner", "-d",
                        second["LONGCAT_DATABASE_URL"].rsplit("/", 1)[-1], str(dump)], check=True, timeout=120)
        # The restored database with an empty Redis: the quota is read back from the database.
        again = Server(tmp_path / "b", config, free_port(), env=second).start()
        try:
            assert used(again, key) == billed
            assert spend(again, key, 1) > 0
        finally:
            again.stop()
