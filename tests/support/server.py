"""Start real `longcat serve` processes on free loopback ports for tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LONGCAT_SHARED_DIR", REPO.parent / "shared")).resolve()


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests need ../shared next to the checkout (or $LONGCAT_SHARED_DIR)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(
    data_dir: Path,
    *args: str,
    config: Path | None = None,
    input: str | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "longcat", *args, "--data-dir", str(data_dir)]
    if config:
        cmd += ["--config", str(config)]
    result = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=60, env=_env(env))
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGCAT_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Server:
    data_dir: Path
    config: Path | None
    port: int
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    key: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Server:
        self.log_path = self.data_dir / f"server-{int(time.time() * 1000)}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "longcat", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        if self.config:
            cmd += ["--config", str(self.config)]
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(self.env))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the CLI against this server's data dir, config and environment."""
        return cli(self.data_dir, *args, config=self.config, check=check, input=input, env=self.env)

    def new_key(self, email: str, name: str = "test", **limits: int) -> str:
        """A new key for `email` (created if need be), with `limits` (rpm=, tpm=, concurrency=)."""
        if self.cli("keys", "list", email, check=False).returncode != 0:
            self.cli("users", "create", email)
        key = self.cli("keys", "create", email, "--name", name).stdout.strip().splitlines()[-1]
        if limits:
            key_id = self.cli("keys", "list", email).stdout.splitlines()[-1].split()[0]
            self.cli("keys", "set-limits", key_id, *[x for k, v in limits.items() for x in (f"--{k}", str(v))])
        return key


@contextmanager
def scale_out_backend(label: str):
    """A fresh PostgreSQL database and a private Redis key prefix, as `LONGCAT_*` variables for a
    server; both are removed afterwards."""
    import redis

    name = f"lc_{label}_{uuid.uuid4().hex[:10]}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c"]
    subprocess.run([*psql, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    env = {
        "LONGCAT_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
        "LONGCAT_REDIS_URL": "redis://127.0.0.1:6379/0",
        "LONGCAT_REDIS_PREFIX": f"test:{name}:",
    }
    try:
        yield env
    finally:
        subprocess.run([*psql, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True, check=False)
        client = redis.Redis.from_url(env["LONGCAT_REDIS_URL"])
        for key in client.scan_iter(env["LONGCAT_REDIS_PREFIX"] + "*"):
            client.delete(key)
        client.close()


def pg_query(database_url: str, sql: str) -> list[list[str]]:
    """Rows of `sql` on the PostgreSQL database of `database_url` (a scale_out_backend's), as text."""
    name = database_url.rsplit("/", 1)[-1]
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", name, "-At", "-F", "\t", "-c", sql],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def access_lines(server: Server) -> list[dict]:
    """The server's access log lines (JSON: a test server's stderr is no terminal), oldest first."""
    out = []
    for line in server.log().splitlines():
        if line.startswith("{") and '"logger":"longcat.access"' in line:
            out.append(json.loads(line))
    return out


def usage_lines(server: Server, model: str | None = None) -> list[dict]:
    """The access lines of requests an engine ran (they carry tokens and an outcome), oldest first."""
    return [a for a in access_lines(server) if "outcome" in a and (model is None or a.get("model") == model)]


def wait_usage(server: Server, model: str, count: int, timeout: float = 5) -> list[dict[str, str]]:
    """Wait until the server logged at least `count` usage lines for `model`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = usage_lines(server, model)
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"no usage line #{count} for {model}: {usage_lines(server, model)[-3:]}")


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


MOCK_CATALOG = """
[[models]]
id = "LongCat-2.0-Preview"
engine = "mock"
context_window = 1048576
max_output = 131072
script = [
  { tool = "Bash", arguments = { command = "echo mock-tool-ran" } },
  { text = "The command ran and printed mock-tool-ran." },
]

[[models]]
id = "mock-echo"
engine = "mock"
context_window = 1048576
max_output = 131072

[[models]]
id = "mock-small"
engine = "mock"
context_window = 200
max_output = 100

[[models]]
id = "mock-slow"
engine = "mock"
context_window = 1048576
max_output = 131072
token_delay = 0.02

[[models]]
id = "mock-thinking"
engine = "mock"
context_window = 1048576
max_output = 131072
thinking = "Let me think about this step by step."

[[models]]
id = "mock-fail"
engine = "mock"
context_window = 1048576
max_output = 131072
fail_after_tokens = 3

[[models]]
id = "mock-vision"
engine = "mock"
context_window = 1048576
max_output = 131072
vision = true
"""

EMBEDDED_CATALOG = """
[[models]]
id = "LongCat-2.0-Preview"
engine = "embedded"
"""
