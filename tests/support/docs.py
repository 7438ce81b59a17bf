"""The docs site as a reader uses it: fetch a rendered page, take its code blocks, put a real key
where the placeholder is, and run the coding agents exactly as their guides configure them.

Agent runs reuse tests/support/agents.py (sealed HOME, dead loopback URLs for every phone-home,
process-group kills); this module only knows where each guide puts its settings and which
headless command it tells the reader to run.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.support.agents import AGENTS, BIN, AgentRun, dead_url, installed, run_agent, sealed_env

PLACEHOLDER = "YOUR_API_KEY"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def page_markdown(base: str, page: str, lang: str = "en", **params: str) -> str:
    prefix = "/docs/" if lang == "en" else "/docs/zh/"
    r = httpx.get(f"{base}{prefix}{page}.md", params=params, timeout=30)
    assert r.status_code == 200, (page, lang, r.status_code)
    return r.text


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """(info string, content) of every fenced block, in order."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(markdown)]


def block(markdown: str, tag: str) -> str:
    """The one block whose info string carries `tag` (e.g. `opencode-config`)."""
    found = [body for info, body in code_blocks(markdown) if tag in info.split()]
    assert len(found) == 1, f"expected one block tagged {tag!r}, found {len(found)}"
    return found[0]


def with_key(text: str, key: str) -> str:
    assert PLACEHOLDER in text, "the snippet has no key placeholder"
    return text.replace(PLACEHOLDER, key)


# Where each guide says the settings go, relative to HOME (XDG_CONFIG_HOME is HOME/.config).
CONFIG_FILES = {
    "claude-code": ".claude/settings.json",
    "codex": ".codex/config.toml",
    "opencode": ".config/opencode/opencode.json",
    "kilo": ".config/kilo/kilo.json",
    "openclaw": ".openclaw/openclaw.json",
}
GUIDES = {"claude-code": "claude-code", "codex": "codex", "opencode": "opencode", "kilo": "kilo-code", "openclaw": "openclaw"}
BLOCK_TAGS = {
    "claude-code": "claude-settings", "codex": "codex-config", "opencode": "opencode-config",
    "kilo": "kilo-config", "openclaw": "openclaw-config",
}
NODE = BIN / "node"
OPENCLAW = AGENTS / "openclaw" / "node_modules" / "openclaw" / "openclaw.mjs"


def install_guide_config(agent: str, base: str, key: str, home: Path) -> Path:
    """Write the agent's settings block from its rendered guide, key filled in, where the guide says."""
    text = with_key(block(page_markdown(base, GUIDES[agent]), BLOCK_TAGS[agent]), key) if agent != "codex" else \
        block(page_markdown(base, GUIDES[agent]), BLOCK_TAGS[agent])
    path = home / CONFIG_FILES[agent]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_configured_agent(agent: str, home: Path, workdir: Path, prompt: str, *, key: str, model: str,
                         timeout: float = 90) -> AgentRun:
    """Run the agent's headless command from its guide, with nothing but HOME's settings (and, for
    Codex, the key in the variable its guide names)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if agent == "claude-code":
        env = sealed_env(home, DISABLE_AUTOUPDATER="1")
        # As root Claude Code refuses to skip permissions, so its Bash tool is pre-allowed.
        cmd = [str(installed(BIN / "claude", "Claude Code")), "-p", prompt, "--allowedTools", "Bash", "--output-format", "json"]
    elif agent == "codex":
        env = sealed_env(home, CODEX_HOME=str(home / ".codex"), LONGCAT_API_KEY=key)
        # No sandbox: the tests run as root in a container without bubblewrap.
        cmd = [str(installed(BIN / "codex", "Codex")), "exec", "--skip-git-repo-check", "-s", "danger-full-access", prompt]
    elif agent == "opencode":
        env = sealed_env(home, OPENCODE_DISABLE_AUTOUPDATE="1", OPENCODE_DISABLE_MODELS_FETCH="1",
                         OPENCODE_DISABLE_SHARE="1", OPENCODE_DISABLE_LSP_DOWNLOAD="1")
        cmd = [str(installed(BIN / "opencode", "OpenCode")), "run", "-m", f"longcat/{model}", prompt]
    elif agent == "kilo":
        env = sealed_env(home, KILO_DISABLE_AUTOUPDATE="1", KILO_DISABLE_MODELS_FETCH="1", KILO_DISABLE_SHARE="1",
                         KILO_DISABLE_LSP_DOWNLOAD="1", KILO_DISABLE_CODEBASE_INDEXING="1", KILO_TELEMETRY_LEVEL="off",
                         KILO_API_URL=dead_url())
        cmd = [str(installed(BIN / "kilo", "Kilo Code")), "run", "--auto", "-m", f"longcat/{model}", prompt]
    elif agent == "openclaw":
        node = installed(NODE, "Node 24 (the `node` package)")
        env = sealed_env(home, OPENCLAW_NO_AUTO_UPDATE="1", OPENCLAW_DISABLE_BONJOUR="1")
        env["PATH"] = f"{node.parent}:{env.get('PATH', '')}"
        cmd = [str(node), str(installed(OPENCLAW, "OpenClaw")), "agent", "exec", "--json", prompt]
    else:
        raise ValueError(agent)
    return run_agent(cmd, cwd=workdir, env=env, timeout=timeout)


# One scripted mock model per agent: call its shell tool once to write a marker, then answer.
TOOLS = {
    "claude-code": ("Bash", "command", {"description": "Write the marker file"}),
    "codex": ("exec_command", "cmd", {}),
    "opencode": ("bash", "command", {"description": "Write the marker file"}),
    "kilo": ("bash", "command", {"description": "Write the marker file"}),
    "openclaw": ("exec", "command", {"title": "Write the marker file"}),
}


def marker(agent: str) -> str:
    return f"{agent}-docs-marker.txt"


def answer(agent: str) -> str:
    return f"The marker file is written and says {agent}-ran."


def scripted_catalog(agent: str, small: bool = True) -> str:
    """The agent's scripted model first (so the guide's default model is it), then a small one."""
    tool, arg, extra = TOOLS[agent]
    args = ", ".join([f'{arg} = "echo {agent}-ran > {marker(agent)}"', *(f'{k} = "{v}"' for k, v in extra.items())])
    text = f"""
[[models]]
id = "docs-{agent}"
engine = "mock"
context_window = 1048576
max_output = 131072
script = [
  {{ tool = "{tool}", arguments = {{ {args} }} }},
  {{ text = "{answer(agent)}" }},
]
"""
    if small:
        text += """
[[models]]
id = "docs-small"
engine = "mock"
context_window = 4000
max_output = 4000
"""
    return text


def succeeded(agent: str, run: AgentRun) -> bool:
    return run.returncode == 0 and answer(agent) in run.stdout
