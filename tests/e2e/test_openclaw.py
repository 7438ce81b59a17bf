"""The real OpenClaw CLI, headless, pointed at the platform the way the guide says:
`~/.openclaw/openclaw.json` with `models.providers.longcat{baseUrl: "<base>/openai/v1", apiKey,
api: "openai-completions", models[{id, name, contextWindow, maxTokens}]}` and
`agents.defaults.model.primary = "longcat/<id>"`.

What was found on the way (OpenClaw 2026.9.6):
- It needs Node >= 24.16 and its preinstall script refuses anything older, so it cannot sit in
  tests/e2e/agents next to the others (npm runs preinstall scripts before it links any bin):
  that package depends on `node@24` (a Node binary from the registry) and its postinstall
  installs tests/e2e/agents/openclaw with that Node first on PATH. The tests run
  `node_modules/.bin/node openclaw.mjs` from there.
- Headless mode: `openclaw agent exec "…"` runs one embedded agent turn without a Gateway, in a
  temporary state directory, with the `coding` tool profile and full exec permission; it prints
  the final text on stdout (or a JSON envelope with `--json`) and exits 0, 1 on any model error.
  (`openclaw agent --local` is the older embedded path; it needs a session selector.)
- Its shell tool is `exec` (`{"command": …}`), run in the working directory.
- Each request ends with a user message of OpenClaw's own ("<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>",
  listing active exec sessions and subagents) whenever the `process` or `sessions_spawn` tool is
  on. The mock engine therefore treats text that directly follows tool results as part of the
  same turn (`engines.mock.model_turns`), so the guide's config runs the script as written.
- Context overflow: OpenClaw recognises the 400, tries to compact, finds nothing it can drop,
  and exits 1 with the platform's message on stderr (`error.message` in the JSON envelope).
- Offline: nothing is fetched at run time (checked in an empty network namespace too).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.agents import (
    AGENTS,
    BIN,
    AgentRun,
    context_message,
    installed,
    run_agent,
    sealed_env,
)
from tests.support.server import Server, free_port, usage_lines, write_config

pytestmark = pytest.mark.agent

NODE = BIN / "node"
OPENCLAW = AGENTS / "openclaw" / "node_modules" / "openclaw" / "openclaw.mjs"
TIMEOUT = 60
MARKER = "openclaw-marker.txt"
ANSWER = "The marker file is written and says openclaw-ran."
GREETING = "Hello from the LongCat platform."

CATALOG = f"""
[[models]]
id = "openclaw-agent"
engine = "mock"
context_window = 1048576
max_output = 131072
script = [
  {{ tool = "exec", arguments = {{ command = "echo openclaw-ran > {MARKER}", title = "Write the marker file" }} }},
  {{ text = "{ANSWER}" }},
]

[[models]]
id = "openclaw-hello"
engine = "mock"
context_window = 1048576
max_output = 131072
script = [{{ text = "{GREETING}" }}]

[[models]]
id = "openclaw-small"
engine = "mock"
context_window = 4000
max_output = 4000
"""
LIMITS = {"openclaw-agent": (1048576, 8192), "openclaw-hello": (1048576, 8192), "openclaw-small": (4000, 4000)}


@pytest.fixture(scope="module")
def node24():
    node = installed(NODE, "Node 24 (the `node` package)")
    version = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
    if (major, minor) < (24, 16):
        pytest.fail(f"OpenClaw needs Node >= 24.16, {node} is {version}")
    installed(OPENCLAW, "OpenClaw")
    return node


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("openclaw-server")
    server = Server(data, write_config(data / "config.toml", CATALOG), free_port()).start()
    server.key = server.new_key("openclaw@example.com")
    yield server
    server.stop()


def openclaw_config(server: Server, model: str, **extra: object) -> dict:
    return {
        "models": {
            "providers": {
                "longcat": {
                    "baseUrl": server.base_url + "/openai/v1",
                    "apiKey": server.key,
                    "api": "openai-completions",
                    "models": [
                        {"id": id_, "name": id_, "contextWindow": context, "maxTokens": output}
                        for id_, (context, output) in LIMITS.items()
                    ],
                }
            }
        },
        "agents": {"defaults": {"model": {"primary": f"longcat/{model}"}}},
        **extra,
    }


def run_openclaw(node: Path, root: Path, config: dict, prompt: str, *, as_json: bool) -> tuple[AgentRun, Path]:
    home = root / "home"
    (home / ".openclaw").mkdir(parents=True, exist_ok=True)
    (home / ".openclaw" / "openclaw.json").write_text(json.dumps(config, indent=2))
    workdir = root / "project"
    workdir.mkdir(parents=True, exist_ok=True)
    env = sealed_env(home, OPENCLAW_NO_AUTO_UPDATE="1", OPENCLAW_DISABLE_BONJOUR="1")
    env["PATH"] = f"{node.parent}:{env.get('PATH', '')}"  # what OpenClaw spawns gets Node 24 too
    cmd = [str(node), str(OPENCLAW), "agent", "exec", *(["--json"] if as_json else []), prompt]
    return run_agent(cmd, cwd=workdir, env=env, timeout=TIMEOUT), workdir


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_openclaw_runs_the_scripted_exec_call_and_answers(node24, server, tmp_path, as_json):
    config = openclaw_config(server, "openclaw-agent")
    run, workdir = run_openclaw(node24, tmp_path, config, "Write the marker file.", as_json=as_json)
    assert run.returncode == 0, run.output[-4000:]
    assert (workdir / MARKER).read_text().strip() == "openclaw-ran"  # the command really ran
    if as_json:
        report = json.loads(run.stdout)
        assert report["ok"] is True and report["status"] == "ok"
        assert report["final"] == ANSWER
        assert report["provider"] == "longcat" and report["model"] == "openclaw-agent"
        assert report["assistantTurns"] == 2
        assert report["toolSummary"]["tools"] == ["exec"] and report["toolSummary"]["failures"] == 0
        # Usage flowed through from the stream's last chunk.
        assert report["usage"]["input"] > 1000 and report["usage"]["output"] > 0
    else:
        assert run.stdout.strip() == ANSWER


def test_openclaw_round_trip_with_the_guide_config(node24, server, tmp_path):
    run, _ = run_openclaw(node24, tmp_path, openclaw_config(server, "openclaw-hello"), "Say hello.", as_json=False)
    assert run.returncode == 0, run.output[-4000:]
    assert run.stdout.strip() == GREETING
    turns = usage_lines(server, "openclaw-hello")
    assert len(turns) == 1 and (turns[0]["endpoint"].endswith("/chat/completions"), turns[0]["stream"], turns[0]["outcome"]) == (True, True, "ok")


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_openclaw_shows_the_context_window_error_and_exits(node24, server, tmp_path, as_json):
    run, _ = run_openclaw(node24, tmp_path, openclaw_config(server, "openclaw-small"), "Say hello.", as_json=as_json)
    assert run.returncode == 1, run.output[-4000:]
    if as_json:
        report = json.loads(run.stdout)
        assert report["ok"] is False and report["error"]["kind"] == "context_overflow"
        shown = report["error"]["message"]
    else:
        shown = run.stderr
    needed = context_message(shown, 4000)
    assert needed > 5000  # OpenClaw's first turn: system prompt and tool definitions
    assert run.elapsed < 30
