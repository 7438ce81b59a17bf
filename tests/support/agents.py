"""Run the real coding-agent CLIs installed in tests/e2e/agents, sealed off from the world.

Each run gets a temporary HOME (and XDG directories inside it), an environment without the
caller's provider keys, and every update check, model-catalog fetch, telemetry upload or package
install a CLI may try on its own pointed at a loopback port where nothing listens. The process
runs in its own session, so a run that outlives its time limit is killed with every child it
started, and the test fails saying so instead of hanging.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.server import REPO, Server, free_port

AGENTS = REPO / "tests" / "e2e" / "agents"
BIN = AGENTS / "node_modules" / ".bin"

# Variables of the caller's own setup that must not leak into an agent under test.
_FOREIGN = (
    "ANTHROPIC_", "OPENAI_", "CLAUDE_", "CODEX_", "OPENCODE", "KILO", "OPENCLAW_", "LONGCAT_",
    "XDG_", "NPM_CONFIG_", "npm_", "NODE_OPTIONS", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def installed(path: Path, what: str) -> Path:
    """The path of an installed agent file; a missing one fails the test (it is not skipped)."""
    if not path.exists():
        pytest.fail(f"{what} is not installed ({path} is missing): run `make test`, or `npm install` in {AGENTS}")
    return path


def dead_url() -> str:
    """A loopback URL where nothing listens: requests to it are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def sealed_env(home: Path, **extra: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        # A CLI that installs packages of its own at run time (OpenCode fetches its plugin SDK
        # in the background) gets a refused connection, not the registry.
        npm_config_registry=dead_url() + "/",
        NO_UPDATE_NOTIFIER="1",
        DO_NOT_TRACK="1",
    )
    env.update(extra)
    return env


@dataclass
class AgentRun:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def output(self) -> str:
        """stdout and stderr without terminal colours."""
        return _ANSI.sub("", self.stdout + "\n" + self.stderr)


def run_agent(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> AgentRun:
    started = time.monotonic()
    # PWD too: OpenCode and Kilo take their project directory from it, not from getcwd().
    proc = subprocess.Popen(
        cmd, cwd=cwd, env={**env, "PWD": str(cwd)}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        stdout, stderr = proc.communicate(timeout=15)
        tail = _ANSI.sub("", stdout[-2000:] + "\n" + stderr[-3000:])
        pytest.fail(f"{Path(cmd[0]).name} did not exit within {timeout:.0f} s (killed); its output ended with:\n{tail}")
    finally:
        _kill_group(proc.pid)  # anything it left running in the background
    return AgentRun(proc.returncode, stdout, stderr, time.monotonic() - started)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def openai_compatible_provider(server: Server, models: dict[str, tuple[int, int]]) -> dict:
    """An OpenCode / Kilo provider entry for the platform, as the guide gives it:
    `models` maps an id to its (context, output) limits."""
    return {
        "npm": "@ai-sdk/openai-compatible",
        "name": "LongCat",
        "options": {"baseURL": server.base_url + "/openai/v1", "apiKey": server.key},
        "models": {
            model: {"name": model, "limit": {"context": context, "output": output}}
            for model, (context, output) in models.items()
        },
    }


def context_message(output: str, window: int) -> int:
    """The platform's context-window message in an agent's output: returns the prompt size it
    names, after checking it also names the window."""
    match = re.search(
        rf"This request needs ([\d,]+) prompt tokens, but the model '[^']+' has a context window of {window:,} tokens",
        output,
    )
    assert match, f"no context-window message for {window:,} tokens in:\n{output[-4000:]}"
    return int(match.group(1).replace(",", ""))
