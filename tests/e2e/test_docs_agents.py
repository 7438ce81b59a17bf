"""The agent guides' settings, taken from the rendered pages, drive the real CLIs.

For each of the five agents: the settings block of its guide (rendered by the server under test,
the reader's key put where the placeholder is) is written where the guide says, and the headless
command the guide gives runs against a mock model scripted to call the agent's shell tool once and
then answer: the command really runs and the scripted answer comes back. Then `longcat connect`
writes the same settings into a home that already holds unrelated settings: those survive, the
backup exists, and the CLI works again.

Against the embedded default (8,192 tokens), configured exactly as the rendered guides say:
OpenCode and OpenClaw answer a plain question (no compaction loop, no one-token reply); Claude
Code, Codex and Kilo show the platform's context-window message and exit.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.agents import context_message
from tests.support.docs import (
    CONFIG_FILES,
    install_guide_config,
    marker,
    run_configured_agent,
    scripted_catalog,
    succeeded,
)
from tests.support.server import Server, free_port, usage_lines, write_config

pytestmark = pytest.mark.agent

AGENTS = ("claude-code", "codex", "opencode", "kilo", "openclaw")

# Settings a user already had, which `longcat connect` must leave alone.
UNRELATED = {
    "claude-code": ('{"permissions": {"allow": ["Bash(ls:*)"]}, "env": {"MY_VAR": "kept"}, "theme": "dark"}', ["MY_VAR", "theme", "Bash(ls:*)"]),
    "codex": ('# my own comment\napproval_policy = "never"\n\n[mcp_servers.notes]\ncommand = "notes-server"\n',
              ["# my own comment", 'approval_policy = "never"', "[mcp_servers.notes]"]),
    "opencode": ('{"theme": "tokyonight", "provider": {"other": {"name": "Other", "options": {"baseURL": "http://127.0.0.1:9/v1"}}}}',
                 ["tokyonight", '"other"']),
    "kilo": ('{"theme": "tokyonight", "provider": {"other": {"name": "Other", "options": {"baseURL": "http://127.0.0.1:9/v1"}}}}',
             ["tokyonight", '"other"']),
    "openclaw": ('{"channels": {"telegram": {"enabled": false}}, "models": {"providers": {"other": {"baseUrl": "http://127.0.0.1:9/v1", "api": "openai-completions", "models": []}}}}',
                 ["telegram", '"other"']),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One server per agent, its scripted model first in the catalog (the guides' default)."""
    started: dict[str, Server] = {}
    try:
        for agent in AGENTS:
            data = tmp_path_factory.mktemp(f"docs-{agent}")
            server = Server(data, write_config(data / "config.toml", scripted_catalog(agent)), free_port()).start()
            server.key = server.new_key(f"{agent}@example.com")
            started[agent] = server
        yield started
    finally:
        for server in started.values():
            server.stop()


def _check_scripted_run(agent: str, server: Server, run, workdir) -> None:
    assert succeeded(agent, run), run.output[-4000:]
    assert (workdir / marker(agent)).read_text().strip() == f"{agent}-ran"  # the command really ran
    turns = usage_lines(server, f"docs-{agent}")
    assert len(turns) >= 2 and all(t["outcome"] == "ok" for t in turns)


@pytest.mark.parametrize("agent", AGENTS)
def test_the_guide_settings_drive_the_real_cli(servers, tmp_path, agent):
    server = servers[agent]
    home = tmp_path / "home"
    install_guide_config(agent, server.base_url, server.key, home)
    run = run_configured_agent(agent, home, tmp_path / "project", "Write the marker file.", key=server.key, model=f"docs-{agent}")
    _check_scripted_run(agent, server, run, tmp_path / "project")


@pytest.mark.parametrize("agent", AGENTS)
def test_longcat_connect_keeps_unrelated_settings_and_the_cli_works(servers, tmp_path, agent):
    server = servers[agent]
    home = tmp_path / "home"
    path = home / CONFIG_FILES[agent]
    path.parent.mkdir(parents=True)
    before, kept = UNRELATED[agent]
    path.write_text(before)
    result = subprocess.run(
        [sys.executable, "-m", "longcat", "connect", agent, "--url", server.base_url, "--account", f"{agent}@example.com",
         "--home", str(home), "--data-dir", str(server.data_dir), "--config", str(server.config)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = path.read_text()
    for text in kept:
        assert text in after, f"{text!r} was dropped from {path}:\n{after}"
    backups = list(path.parent.glob(path.name + ".bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == before
    assert "+++ " in result.stdout and server.base_url in result.stdout  # the diff was printed
    key = next(line.split("'")[1] for line in result.stdout.splitlines() if "export LONGCAT_API_KEY=" in line) if agent == "codex" else ""
    assert key not in result.stdout.split("Codex reads")[0] if key else True  # the key is masked in the diff
    run = run_configured_agent(agent, home, tmp_path / "project", "Write the marker file.", key=key or server.key, model=f"docs-{agent}")
    _check_scripted_run(agent, server, run, tmp_path / "project")


# ------------------------------------------------- a model with the embedded model's limits

GREETING = "Hello from a model with a small window."
SMALL_WINDOW = f"""
[[models]]
id = "LongCat-2.0-Preview"
engine = "mock"
context_window = 8192
max_output = 8192
script = [{{ text = "{GREETING}" }}]
"""


@pytest.fixture(scope="module")
def small_window(tmp_path_factory):
    data = tmp_path_factory.mktemp("docs-8192")
    server = Server(data, write_config(data / "config.toml", SMALL_WINDOW), free_port()).start()
    server.key = server.new_key("small@example.com")
    yield server
    server.stop()


@pytest.mark.parametrize("agent", ["opencode", "openclaw"])
def test_agents_answer_in_8192_tokens_as_their_guides_configure_them(small_window, tmp_path, agent):
    """The mock model counts a word as a token, so the prompts are smaller than the embedded
    model's count; what this checks is the guides' limits: no compaction loop (OpenCode) and a
    reply that is not cut to one token (OpenClaw)."""
    home = tmp_path / "home"
    install_guide_config(agent, small_window.base_url, small_window.key, home)
    run = run_configured_agent(agent, home, tmp_path / "project", "Say hello.", key=small_window.key,
                               model="LongCat-2.0-Preview", timeout=90)
    assert run.returncode == 0, run.output[-4000:]
    assert GREETING in run.stdout
    turns = usage_lines(small_window, "LongCat-2.0-Preview")
    assert turns and all(t["outcome"] == "ok" for t in turns), turns
    assert len(turns) <= 3, turns  # OpenCode: a title and the answer; no compaction requests


# ----------------------------------------------------------------- against the embedded model


@pytest.mark.embedded
@pytest.mark.timeout(480)
@pytest.mark.parametrize("agent", ["opencode", "openclaw"])
def test_agents_that_fit_the_embedded_model_answer_as_configured(embedded_server, tmp_path, agent):
    home = tmp_path / "home"
    install_guide_config(agent, embedded_server.base_url, embedded_server.key, home)
    # OpenCode's main prompt is ~7,600 tokens, whose prefill alone takes ~95 s on two idle cores
    # (attention over a long context: ~100 tokens/s); beside other test processes, twice that.
    run = run_configured_agent(agent, home, tmp_path / "project", "Say hello.", key=embedded_server.key,
                               model="LongCat-2.0-Preview", timeout=420)
    assert run.returncode == 0, run.output[-4000:]
    if agent == "openclaw":
        report = json.loads(run.stdout)
        assert report["ok"] is True, report
        assert report["usage"]["output"] > 1, report["usage"]  # not a one-token reply
        assert report["final"].strip()
    else:
        assert run.stdout.strip(), run.output[-4000:]
    turns = [t for t in usage_lines(embedded_server, "LongCat-2.0-Preview") if t.get("outcome") != "ok"]
    assert not [t for t in turns if "context" in str(t)], turns  # no context-window refusal, so no compaction


@pytest.mark.embedded
@pytest.mark.parametrize("agent", ["claude-code", "codex", "kilo"])
def test_agents_too_big_for_the_embedded_model_show_the_context_error(embedded_server, tmp_path, agent):
    home = tmp_path / "home"
    install_guide_config(agent, embedded_server.base_url, embedded_server.key, home)
    run = run_configured_agent(agent, home, tmp_path / "project", "Say hello.", key=embedded_server.key,
                               model="LongCat-2.0-Preview", timeout=120)
    assert run.returncode != 0, run.output[-4000:]
    assert context_message(run.output, 8192) > 8192
    assert run.elapsed < 60
