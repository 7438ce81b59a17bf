"""The five coding agents: how big their first prompt is, whether that fits a model, and the exact
settings that point each one at a deployment.

Both the guide pages and `longcat connect` build their settings here, so what the docs show is
what the command writes (and what the tests run).

Prompt sizes were measured on a first turn ("Say hello.") with the embedded model's tokenizer
(SmolLM2) and the CLI versions pinned in tests/e2e/agents/package.json; a later turn only adds to
them. Another model's tokenizer counts the same text somewhat differently, so the fit is judged
with a margin.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

AGENTS = ("claude-code", "codex", "opencode", "kilo", "openclaw")
TITLES = {"claude-code": "Claude Code", "codex": "Codex", "opencode": "OpenCode", "kilo": "Kilo Code", "openclaw": "OpenClaw"}

# First-turn prompt tokens (system prompt, tool definitions and a short question), measured.
PROMPT_TOKENS = {"claude-code": 20_100, "kilo": 12_500, "codex": 8_800, "opencode": 7_600, "openclaw": 8_100}
MEASURED_WITH = {
    "claude-code": "@anthropic-ai/claude-code 2.1.197",
    "codex": "@openai/codex 0.169.0",
    "opencode": "opencode-ai 1.18.33",
    "kilo": "@kilocode/cli 7.7.7",
    "openclaw": "openclaw 2026.9.6",
}
# OpenClaw sizes `max_tokens` as its `contextWindow` minus its own estimate of the prompt, which
# runs about 14% above the real count (measured: 9,262 for a first prompt of 8,100 tokens); with a
# window that small it would ask for 1 token. Below this window it is told a window 15% larger
# than the real one: the platform still enforces the real window, and `maxTokens` (computed
# from the real room) bounds what it asks for.
OPENCLAW_ESTIMATE = 9_262
OPENCLAW_SCALE = 1.15
OPENCLAW_SCALED_BELOW = 4 * OPENCLAW_ESTIMATE

# OpenClaw's first prompt with `tools.profile = "minimal"` (measured, same version): what the
# guide configures for a window where the full prompt would leave little room (see below).
OPENCLAW_LEAN_PROMPT = 3_100
# Even with only its file and shell tools OpenClaw's first prompt is ~6,900 tokens (measured),
# too much for an 8,192-token window once a tool result comes back: on such a window it gets
# the minimal profile (a chat assistant without tools).
OPENCLAW_LEAN_TOOLS = {"profile": "minimal"}


def openclaw_lean(context: int) -> bool:
    """Whether OpenClaw gets the minimal tool profile for a model with this window: its full
    first prompt (~8,100 tokens, give or take the paths and dates in it) would not reliably fit."""
    return context - PROMPT_TOKENS["openclaw"] < 4 * PROMPT_TOKENS["openclaw"]


# The least room an answer needs after the first prompt for the agent to be of any use.
MIN_ANSWER = 64


@dataclass(frozen=True, slots=True)
class Fit:
    """How one agent fits one model: `fits`, the room left after its first prompt, and the output
    limit to configure (half the room, at most the model's max output) so the agent neither asks
    for more than fits nor compacts on its first turn."""

    agent: str
    model: str
    context: int
    max_output: int
    prompt: int
    fits: bool
    room: int
    output: int


def fit(agent: str, model: str, context: int, max_output: int, default_context: int | None = None) -> Fit:
    """`default_context` is the window of the default model where it is not this one: OpenClaw's
    tool profile is one setting for all its models, chosen by the default model's window."""
    lean = openclaw_lean(context if default_context is None else default_context)
    prompt = OPENCLAW_LEAN_PROMPT if agent == "openclaw" and lean else PROMPT_TOKENS[agent]
    room = context - prompt
    fits = room >= MIN_ANSWER
    output = max(1, min(max_output, room // 2)) if fits else min(max_output, max(1, context // 4))
    return Fit(agent, model, context, max_output, prompt, fits, max(room, 0), output)


@dataclass(frozen=True, slots=True)
class Target:
    """What an agent is pointed at: the deployment's base URL, a key (or a placeholder) and the
    models it may use (id, context window, max output), the first being the default."""

    base: str
    key: str
    models: tuple[tuple[str, int, int], ...]

    @property
    def model(self) -> str:
        return self.models[0][0]

    def fits(self, agent: str) -> list[Fit]:
        return [fit(agent, m, c, o, self.models[0][1]) for m, c, o in self.models]


# ---------------------------------------------------------------------------------- settings


def claude_code_env(t: Target) -> dict[str, str]:
    """The `env` block of ~/.claude/settings.json."""
    f = fit("claude-code", *t.models[0])
    return {
        "ANTHROPIC_BASE_URL": t.base + "/anthropic",
        "ANTHROPIC_AUTH_TOKEN": t.key,
        "ANTHROPIC_MODEL": t.model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": t.model,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": t.model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": t.model,
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(f.output),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


CODEX_PROVIDER = "longcat"
CODEX_ENV_KEY = "LONGCAT_API_KEY"


def codex_settings(t: Target) -> dict:
    """The keys of ~/.codex/config.toml this platform owns (top level and its provider table)."""
    _, context, _ = t.models[0]
    return {
        "model": t.model,
        "model_provider": CODEX_PROVIDER,
        "model_context_window": context,
        "model_providers": {
            CODEX_PROVIDER: {
                "name": "LongCat",
                "base_url": t.base + "/openai/v1",
                "env_key": CODEX_ENV_KEY,
                "wire_api": "responses",
            }
        },
    }


def codex_toml(t: Target) -> str:
    s = codex_settings(t)
    p = s["model_providers"][CODEX_PROVIDER]
    return (
        f"model = {json.dumps(s['model'])}\n"
        f"model_provider = {json.dumps(CODEX_PROVIDER)}\n"
        f"model_context_window = {s['model_context_window']}\n"
        f"\n[model_providers.{CODEX_PROVIDER}]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in p.items())
    )


def openai_compatible_provider(agent: str, t: Target) -> dict:
    """The provider block OpenCode (`opencode.json`) and Kilo (`kilo.json`) share."""
    return {
        "npm": "@ai-sdk/openai-compatible",
        "name": "LongCat",
        "options": {"baseURL": t.base + "/openai/v1", "apiKey": t.key},
        "models": {
            m: {"name": m, "limit": {"context": c, "output": fit(agent, m, c, o).output}} for m, c, o in t.models
        },
    }


def _opencode_family_settings(agent: str, t: Target) -> dict:
    """OpenCode and Kilo (a fork of it) take the same settings."""
    settings: dict = {"provider": {"longcat": openai_compatible_provider(agent, t)}, "model": f"longcat/{t.model}"}
    if not all(f.room > 4 * f.prompt for f in t.fits(agent)):
        # A small window: a context-length error would make the agent compact and retry (and
        # then ramble on a compacted history); off, it shows the error and stops.
        settings["compaction"] = {"auto": False}
    return settings


def opencode_settings(t: Target) -> dict:
    return _opencode_family_settings("opencode", t)


def kilo_settings(t: Target) -> dict:
    return _opencode_family_settings("kilo", t)


def openclaw_window(context: int) -> int:
    """The `contextWindow` to tell OpenClaw for a model with this real window (see above)."""
    return context if context >= OPENCLAW_SCALED_BELOW else math.ceil(context * OPENCLAW_SCALE)


def openclaw_settings(t: Target) -> dict:
    return {
        "models": {
            "mode": "merge",
            "providers": {
                "longcat": {
                    "baseUrl": t.base + "/openai/v1",
                    "apiKey": t.key,
                    "api": "openai-completions",
                    "models": [
                        {"id": f.model, "name": f.model, "contextWindow": openclaw_window(f.context), "maxTokens": f.output}
                        for f in t.fits("openclaw")
                    ],
                }
            },
        },
        "agents": {"defaults": {"model": {"primary": f"longcat/{t.model}"}}},
        # The window of the default model decides (the one OpenClaw uses unless told otherwise).
        **({"tools": OPENCLAW_LEAN_TOOLS} if openclaw_lean(t.models[0][1]) else {}),
    }


def settings_for(agent: str, t: Target) -> dict:
    """The settings `longcat connect` merges into the agent's file (Claude Code: under `env`)."""
    return {
        "claude-code": lambda: {"env": claude_code_env(t)},
        "codex": lambda: codex_settings(t),
        "opencode": lambda: opencode_settings(t),
        "kilo": lambda: kilo_settings(t),
        "openclaw": lambda: openclaw_settings(t),
    }[agent]()


def pretty(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
