"""The real Kilo Code CLI (`kilo run --auto`, headless) pointed at the platform the way the guide
says: a `kilo.json` provider with `"npm": "@ai-sdk/openai-compatible"`,
`options.baseURL = "<base>/openai/v1"`, `options.apiKey` and `models{id: {limit{context, output}}}`,
then `kilo run --auto -m longcat/<model> "…"`.

What was found on the way (Kilo 7.7.7, built on OpenCode):
- Config: `~/.config/kilo/kilo.json` (also `config.json`, `kilo.jsonc`, even `opencode.json`
  there) merged with a `kilo.json` in the working directory; the tests use the project file.
  `@ai-sdk/openai-compatible` is bundled, as in OpenCode.
- On its own Kilo fetches its cloud model catalog (KILO_API_URL, default api.kilo.ai), indexes
  the codebase and sends PostHog telemetry (waiting up to ~2 s at exit to flush it). The tests turn
  those off (KILO_TELEMETRY_LEVEL=off, KILO_DISABLE_CODEBASE_INDEXING=1) and point KILO_API_URL at
  a dead loopback port; the run works the same with no network at all.
- It generates the session title after the agent loop, with a request of its own.
- Context overflow: like OpenCode it compacts and retries on `context_length_exceeded`, but gives
  up after 3 attempts ("Compaction exhausted"), exiting 1 with the platform's message shown.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.agents import (
    BIN,
    AgentRun,
    context_message,
    dead_url,
    installed,
    openai_compatible_provider,
    run_agent,
    sealed_env,
)
from tests.support.server import Server, free_port, usage_lines, write_config

pytestmark = pytest.mark.agent

KILO = BIN / "kilo"
TIMEOUT = 45
MARKER = "kilo-marker.txt"
ANSWER = "The marker file is written and says kilo-ran."

CATALOG = f"""
[[models]]
id = "kilo-agent"
engine = "mock"
context_window = 1048576
max_output = 131072
script = [
  {{ tool = "bash", arguments = {{ command = "echo kilo-ran > {MARKER}", description = "Write the marker file" }} }},
  {{ text = "{ANSWER}" }},
]

[[models]]
id = "kilo-small"
engine = "mock"
context_window = 4000
max_output = 4000
"""
LIMITS = {"kilo-agent": (1048576, 131072), "kilo-small": (4000, 4000)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("kilo-server")
    server = Server(data, write_config(data / "config.toml", CATALOG), free_port()).start()
    server.key = server.new_key("kilo@example.com")
    yield server
    server.stop()


def run_kilo(server: Server, root: Path, model: str, prompt: str) -> tuple[AgentRun, Path]:
    workdir = root / "project"
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {"provider": {"longcat": openai_compatible_provider(server, LIMITS)}}
    (workdir / "kilo.json").write_text(json.dumps(settings, indent=2))
    env = sealed_env(
        root / "home",
        KILO_DISABLE_AUTOUPDATE="1",
        KILO_DISABLE_MODELS_FETCH="1",
        KILO_DISABLE_SHARE="1",
        KILO_DISABLE_LSP_DOWNLOAD="1",
        KILO_DISABLE_CODEBASE_INDEXING="1",
        KILO_TELEMETRY_LEVEL="off",
        KILO_API_URL=dead_url(),
    )
    cmd = [str(installed(KILO, "Kilo Code")), "run", "--auto", "-m", f"longcat/{model}", prompt]
    return run_agent(cmd, cwd=workdir, env=env, timeout=TIMEOUT), workdir


def test_kilo_runs_the_scripted_bash_call_and_answers(server, tmp_path):
    run, workdir = run_kilo(server, tmp_path, "kilo-agent", "Write the marker file.")
    assert run.returncode == 0, run.output[-4000:]
    assert (workdir / MARKER).read_text().strip() == "kilo-ran"  # the command really ran
    assert f"echo kilo-ran > {MARKER}" in run.output  # Kilo shows the command it ran
    assert ANSWER in run.stdout
    turns = usage_lines(server, "kilo-agent")
    assert len(turns) >= 2 and all(t["endpoint"].endswith("/chat/completions") and t["outcome"] == "ok" for t in turns)


def test_kilo_shows_the_context_window_error_and_exits(server, tmp_path):
    run, _ = run_kilo(server, tmp_path, "kilo-small", "Say hello.")
    assert run.returncode == 1, run.output[-4000:]
    needed = context_message(run.output, 4000)
    assert needed > 10_000  # Kilo's first turn: system prompt and tool definitions
    assert run.elapsed < 30
