"""The real Codex CLI (installed in tests/e2e/agents) against the platform, headless.

Codex is pointed at the server the way the platform's guide says: a `config.toml` in a
temporary CODEX_HOME naming the model and a provider with `base_url = "<base>/openai/v1"`,
`env_key` and `wire_api = "responses"`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.server import REPO, Server, free_port, usage_lines, write_config

CODEX = REPO / "tests" / "e2e" / "agents" / "node_modules" / ".bin" / "codex"
ANSWER = "The command ran and wrote the marker file."

pytestmark = [
    pytest.mark.agent,
    pytest.mark.skipif(not CODEX.exists(), reason="the Codex CLI is not installed in tests/e2e/agents"),
]


def codex_home(root: Path, base_url: str, model: str) -> Path:
    home = root / "codex-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "longcat"\n\n'
        "[model_providers.longcat]\n"
        'name = "LongCat"\n'
        f'base_url = "{base_url}/openai/v1"\n'
        'env_key = "LONGCAT_API_KEY"\n'
        'wire_api = "responses"\n'
    )
    return home


def run_codex(home: Path, key: str, workdir: Path, prompt: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`codex exec` with no sandbox (we run as root in a container, without bubblewrap; the
    approval policy of `exec` is already "never")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update(CODEX_HOME=str(home), LONGCAT_API_KEY=key)
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "-s", "danger-full-access", prompt],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory):
    """A mock model scripted like an agent turn: think, call `exec_command` once, then answer
    (Codex replays the reasoning and the call in its second request)."""
    root = tmp_path_factory.mktemp("codex-agent")
    marker = root / "marker.txt"
    command = json.dumps(f"echo codex-tool-ran > {marker}")
    catalog = f"""
[[models]]
id = "codex-agent"
engine = "mock"
context_window = 1048576
max_output = 131072
thinking = "I should run the command first."
script = [
  {{ tool = "exec_command", arguments = {{ cmd = {command} }} }},
  {{ text = "{ANSWER}" }},
]
"""
    server = Server(root / "server", write_config(root / "server" / "config.toml", catalog), free_port()).start()
    server.key = server.new_key("codex@example.com")
    server.marker = marker  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_codex_runs_the_scripted_command_and_answers(agent_server, tmp_path):
    home = codex_home(tmp_path, agent_server.base_url, "codex-agent")
    result = run_codex(home, agent_server.key, tmp_path / "work", "Write the marker file, then tell me you did.")
    assert result.returncode == 0, result.stderr[-3000:]
    assert agent_server.marker.read_text().strip() == "codex-tool-ran"
    # `codex exec` prints the agent's last message on stdout.
    assert result.stdout.strip() == ANSWER
    assert "succeeded" in result.stderr  # Codex reports the command it ran
    # Two turns went through the Responses route: the tool call, then the answer.
    turns = [t for t in usage_lines(agent_server) if t["endpoint"].endswith("/responses")]
    assert len(turns) == 2 and all(t["outcome"] == "ok" for t in turns)


@pytest.mark.embedded
def test_codex_on_the_embedded_model_reports_the_context_window(embedded_server, tmp_path):
    """Codex's first request (~8,700 tokens with its tools) does not fit SmolLM2's 8,192.

    Codex 0.169 turns the code `context_length_exceeded` (as an HTTP 400 or inside a stream
    alike) into its own fixed sentence about the context window and drops the server's message;
    the stream therefore also writes the message as text, which Codex prints.
    """
    home = codex_home(tmp_path, embedded_server.base_url, "LongCat-2.0-Preview")
    started = time.monotonic()
    result = run_codex(home, embedded_server.key, tmp_path / "work", "Say hello.", timeout=120)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert elapsed < 60, f"Codex took {elapsed:.0f} s: it should fail at once, not retry"
    assert "context window" in output
    assert "has a context window of 8,192 tokens" in output and "prompt tokens" in output, output[-3000:]
