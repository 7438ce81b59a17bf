"""The real OpenCode CLI (`opencode run`, headless) pointed at the platform the way the guide says:
an `opencode.json` provider with `"npm": "@ai-sdk/openai-compatible"`,
`options.baseURL = "<base>/openai/v1"`, `options.apiKey` and `models{id: {limit{context, output}}}`,
then `opencode run -m longcat/<model> "…"`.

What was found on the way (OpenCode 1.18.33):
- Config: OpenCode merges `~/.config/opencode/opencode.json` (XDG_CONFIG_HOME) with an
  `opencode.json` in the working directory (or OPENCODE_CONFIG); the tests use the project file.
- `@ai-sdk/openai-compatible` is bundled in the binary: nothing is installed for the provider.
  OpenCode does start a background `npm install` of its plugin SDK (`@opencode-ai/plugin`,
  `@opentui/*`) into ~/.config/opencode; it does not wait for it, so a run works the same with
  the registry refused (the tests point `npm_config_registry` at a dead loopback port), hanging,
  or with no network at all (checked in an empty network namespace).
- `opencode run` already allows every tool in headless mode: no flag needed for `bash`.
- It asks for a session title first (a request without tools, to the same model unless
  `small_model` is set), then runs the agent loop.
- Context overflow: OpenCode recognises the platform's `context_length_exceeded` 400 and
  compacts the session, then retries. If its compaction request does not fit either, it stops
  ("exit 1"). But if the compaction request fits and the agent's own prompt (system prompt plus
  tool definitions, ~7,000 mock tokens) still does not, it compacts and retries forever: against
  a 4,000-token window OpenCode 1.18.33 never exits. With `"compaction": {"auto": false}` it
  shows the error and exits at once, so that is the setting for small-context models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.agents import (
    BIN,
    AgentRun,
    context_message,
    installed,
    openai_compatible_provider,
    run_agent,
    sealed_env,
)
from tests.support.server import Server, free_port, usage_lines, write_config

pytestmark = pytest.mark.agent

OPENCODE = BIN / "opencode"
TIMEOUT = 45
MARKER = "opencode-marker.txt"
ANSWER = "The marker file is written and says opencode-ran."

CATALOG = f"""
[[models]]
id = "opencode-agent"
engine = "mock"
context_window = 1048576
max_output = 131072
script = [
  {{ tool = "bash", arguments = {{ command = "echo opencode-ran > {MARKER}", description = "Write the marker file" }} }},
  {{ text = "{ANSWER}" }},
]

[[models]]
id = "opencode-small"
engine = "mock"
context_window = 4000
max_output = 4000

[[models]]
id = "opencode-tiny"
engine = "mock"
context_window = 300
max_output = 300
"""
LIMITS = {"opencode-agent": (1048576, 131072), "opencode-small": (4000, 4000), "opencode-tiny": (300, 300)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("opencode-server")
    server = Server(data, write_config(data / "config.toml", CATALOG), free_port()).start()
    server.key = server.new_key("opencode@example.com")
    yield server
    server.stop()


def run_opencode(server: Server, root: Path, model: str, prompt: str, **config: object) -> tuple[AgentRun, Path]:
    workdir = root / "project"
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {"provider": {"longcat": openai_compatible_provider(server, LIMITS)}, **config}
    (workdir / "opencode.json").write_text(json.dumps(settings, indent=2))
    env = sealed_env(
        root / "home",
        OPENCODE_DISABLE_AUTOUPDATE="1",
        OPENCODE_DISABLE_MODELS_FETCH="1",
        OPENCODE_DISABLE_SHARE="1",
        OPENCODE_DISABLE_LSP_DOWNLOAD="1",
    )
    cmd = [str(installed(OPENCODE, "OpenCode")), "run", "-m", f"longcat/{model}", prompt]
    return run_agent(cmd, cwd=workdir, env=env, timeout=TIMEOUT), workdir


def test_opencode_runs_the_scripted_bash_call_and_answers(server, tmp_path):
    run, workdir = run_opencode(server, tmp_path, "opencode-agent", "Write the marker file.")
    assert run.returncode == 0, run.output[-4000:]
    assert (workdir / MARKER).read_text().strip() == "opencode-ran"  # the command really ran
    assert f"echo opencode-ran > {MARKER}" in run.output  # OpenCode shows the command it ran
    assert ANSWER in run.stdout
    # The title request, the tool call and the answer: all through Chat Completions, all fine.
    turns = usage_lines(server, "opencode-agent")
    assert len(turns) >= 2 and all(t["endpoint"].endswith("/chat/completions") and t["outcome"] == "ok" for t in turns)


@pytest.mark.parametrize(
    ("model", "window", "config"),
    [
        # OpenCode's defaults: it tries to compact, its compaction request does not fit either, it stops.
        pytest.param("opencode-tiny", 300, {}, id="auto-compaction"),
        # The setting for a model smaller than OpenCode's prompt (see the module docstring).
        pytest.param("opencode-small", 4000, {"compaction": {"auto": False}}, id="compaction-off"),
    ],
)
def test_opencode_shows_the_context_window_error_and_exits(server, tmp_path, model, window, config):
    run, _ = run_opencode(server, tmp_path, model, "Say hello.", **config)
    assert run.returncode == 1, run.output[-4000:]
    assert "Error:" in run.output
    needed = context_message(run.output, window)
    assert needed > window
    if model == "opencode-small":
        assert needed > 6000  # the agent's own first turn: system prompt and tool definitions
    assert run.elapsed < 30
