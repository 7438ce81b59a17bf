"""The real Claude Code CLI (`claude -p`, headless) pointed at the platform the way the guide says:
ANTHROPIC_BASE_URL=<base>/anthropic, ANTHROPIC_AUTH_TOKEN=<key>, ANTHROPIC_MODEL and friends.

Against a scripted mock engine it runs a real shell command through its Bash tool and reports the
scripted answer; against the embedded 8,192-token model it shows the user the platform's
context-window error instead of hanging or crashing.

Quirks found on the way: as root, Claude Code refuses `--dangerously-skip-permissions`, so the
Bash tool is pre-allowed with `--allowedTools Bash`; a temporary HOME keeps it away from ~/.claude.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.server import REPO, Server, free_port, usage_lines, write_config

pytestmark = pytest.mark.agent

CLAUDE = REPO / "tests" / "e2e" / "agents" / "node_modules" / ".bin" / "claude"
TIMEOUT = 120
MARKER = "longcat-marker.txt"
ANSWER = "The marker file is written and says claude-code-ran."

CATALOG = f"""
[[models]]
id = "LongCat-2.0-Preview"
engine = "mock"
context_window = 1048576
max_output = 131072
script = [
  {{ tool = "Bash", arguments = {{ command = "echo claude-code-ran > {MARKER}", description = "Write the marker file" }} }},
  {{ text = "{ANSWER}" }},
]

[[models]]
id = "mock-agent-thinking"
engine = "mock"
context_window = 1048576
max_output = 131072
thinking = "The user wants the marker file; the shell can write it."
script = [
  {{ tool = "Bash", arguments = {{ command = "echo claude-code-ran > {MARKER}", description = "Write the marker file" }} }},
  {{ text = "{ANSWER}" }},
]

[[models]]
id = "mock-echo"
engine = "mock"
context_window = 1048576
max_output = 131072
"""


@pytest.fixture(scope="module")
def scripted_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("claude-code-server")
    server = Server(data, write_config(data / "config.toml", CATALOG), free_port()).start()
    server.key = server.new_key("claude-code@example.com")
    yield server
    server.stop()


def run_claude(
    server: Server, workdir: Path, prompt: str, *, small_model: str, model: str = "LongCat-2.0-Preview", output: str = "json"
) -> subprocess.CompletedProcess[str]:
    if not CLAUDE.exists():
        pytest.skip(f"{CLAUDE} is missing: run `npm ci` in tests/e2e/agents")
    home = workdir.parent / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "LONGCAT_"))}
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=server.base_url + "/anthropic",
        ANTHROPIC_AUTH_TOKEN=server.key,
        ANTHROPIC_MODEL=model,
        ANTHROPIC_DEFAULT_SONNET_MODEL=model,
        ANTHROPIC_DEFAULT_OPUS_MODEL=model,
        ANTHROPIC_DEFAULT_HAIKU_MODEL=small_model,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
    )
    cmd = [str(CLAUDE), "-p", prompt, "--allowedTools", "Bash"]
    if output != "text":
        cmd += ["--output-format", output]
    return subprocess.run(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.mark.parametrize("model", ["LongCat-2.0-Preview", "mock-agent-thinking"])
def test_claude_code_runs_the_scripted_bash_call_and_answers(scripted_server, tmp_path, model):
    """With `mock-agent-thinking` each turn starts with a signed thinking block, which Claude Code
    sends back with the tool result: the second turn only succeeds if the signature verifies."""
    workdir = tmp_path / "project"
    workdir.mkdir()
    result = run_claude(scripted_server, workdir, "Write the marker file.", small_model="mock-echo", model=model)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["is_error"] is False and report["subtype"] == "success"
    assert report["result"] == ANSWER
    assert report["num_turns"] == 2
    assert (workdir / MARKER).read_text().strip() == "claude-code-ran"  # the command really ran
    # Usage flowed through: Claude Code read input and output tokens from the stream.
    assert report["usage"]["input_tokens"] > 1000 and report["usage"]["output_tokens"] > 0
    ran = [a for a in usage_lines(scripted_server, model) if a["endpoint"] == "/anthropic/v1/messages"]
    assert ran and all(a["outcome"] == "ok" for a in ran), ran


@pytest.mark.embedded
@pytest.mark.parametrize("output", ["json", "text"])
def test_claude_code_shows_the_context_window_error_of_the_embedded_model(embedded_server, tmp_path, output):
    workdir = tmp_path / "project"
    workdir.mkdir()
    result = run_claude(embedded_server, workdir, "Say hello.", small_model="LongCat-2.0-Preview", output=output)
    assert result.returncode != 0
    shown = json.loads(result.stdout)["result"] if output == "json" else result.stdout
    assert "API Error: 400" in shown
    assert "context window of 8,192 tokens" in shown
    needed = shown.split("needs ", 1)[1].split(" prompt tokens", 1)[0]
    assert int(needed.replace(",", "")) > 15_000  # Claude Code's first turn, about 20,000 tokens
    assert "larger context window" in shown
