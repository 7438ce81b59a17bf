"""The deployment's facts a docs page is filled with: where it is reached, which models it serves
with which limits, its quota and rate limits, and the agents' settings for it.

Nothing here is written into the pages' text: every number comes from the running settings and
catalog, and every URL from `public_url` or from the request as the visitor sent it.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

from longcat.canonical import RATE_LIMIT_MESSAGE
from longcat.config import Settings
from longcat.docs import agents
from longcat.gateway.clock import BEIJING
from longcat.httpkit import trusted_peer

DEFAULT_KEY = "YOUR_API_KEY"


def key_placeholder(name: str | None) -> str:
    """What snippets show instead of a key: a reminder of the key's name, never the key."""
    if not name:
        return DEFAULT_KEY
    slug = re.sub(r"[^\w.-]+", "-", name).strip("-")[:50] or "key"
    return f"YOUR_KEY:{slug}"


_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def base_url(settings: Settings, scheme: str, host: str, peer: str, headers: Any) -> str:
    """`public_url` if set; else the scheme and host the visitor used. `X-Forwarded-Proto` and
    `X-Forwarded-Host` count only when the peer is one of `trusted_proxies`; a host that is not
    a plain host name (or address) and port is ignored."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    if trusted_peer(peer, settings.trusted_proxies):
        proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        fwd_host = headers.get("x-forwarded-host", "").split(",")[0].strip()
        if proto in ("http", "https"):
            scheme = proto
        if fwd_host and _HOST.match(fwd_host):
            host = fwd_host
    if not _HOST.match(host or ""):
        host = f"{settings.host}:{settings.port}"
    return f"{scheme}://{host}"


def rate_limit_body(retry_after: int = 60) -> str:
    """The 429 body exactly as the platform sends it (compact JSON, the seed's key order)."""
    body = {"error": {"code": "rate_limit_exceeded", "message": RATE_LIMIT_MESSAGE, "type": "rate_limit_error", "retry_after": retry_after}}
    return json.dumps(body, separators=(",", ":"))


def build(settings: Settings, base: str, key_name: str | None = None) -> dict[str, Any]:
    key = key_placeholder(key_name)
    models = [
        {
            "id": m.id, "name": m.display_name, "description": m.description, "engine": m.engine,
            "context": m.context_window, "max_output": m.max_output, "vision": m.vision,
            "default_max_tokens": min(settings.default_max_tokens, m.max_output),
        }
        for m in settings.models
    ]
    target = agents.Target(base, key, tuple((m["id"], m["context"], m["max_output"]) for m in models))
    fits = {a: target.fits(a) for a in agents.AGENTS}
    first = models[0]
    return {
        "base": base,
        "openai_base": base + "/openai",
        "openai_v1": base + "/openai/v1",
        "anthropic_base": base + "/anthropic",
        "console": SimpleNamespace(**{p: f"{base}/{p}" for p in ("register", "login", "keys", "usage", "feedback", "playground", "account")}),
        "key": key,
        "key_name": key_name or "",
        "models": models,
        "model": first,
        "example_max_tokens": min(1000, first["max_output"]),
        "settings": settings,
        "quota": {
            "daily": settings.daily_quota,
            "cap": settings.daily_quota_cap,
            "probability": settings.feedback_refresh_probability,
            "percent": round(settings.feedback_refresh_probability * 100),
            "feedback_daily": settings.feedback_daily_limit,
            "timezone": str(BEIJING),
            "utc_offset": "UTC+8",
        },
        "limits": {
            "key_rpm": settings.key_rpm, "key_tpm": settings.key_tpm, "key_concurrency": settings.key_concurrency,
            "account_rpm": settings.account_rpm, "account_tpm": settings.account_tpm,
            "account_concurrency": settings.account_concurrency,
        },
        "registration": settings.registration,
        "rate_limit_body": rate_limit_body(),
        "rate_limit_pretty": json.dumps(json.loads(rate_limit_body()), indent=2),
        "agents": {
            "fits": fits,
            "prompt": agents.PROMPT_TOKENS,
            "versions": agents.MEASURED_WITH,
            "min_answer": agents.MIN_ANSWER,
            "claude_env": agents.pretty({"env": agents.claude_code_env(target)}),
            "claude_env_vars": agents.claude_code_env(target),
            "codex_toml": agents.codex_toml(target),
            "codex_env_key": agents.CODEX_ENV_KEY,
            "opencode_json": agents.pretty(agents.opencode_settings(target)),
            "kilo_json": agents.pretty(agents.kilo_settings(target)),
            "openclaw_json": agents.pretty(agents.openclaw_settings(target)),
            "opencode_compaction_off": "compaction" in agents.opencode_settings(target),
            "kilo_compaction_off": "compaction" in agents.kilo_settings(target),
            "openclaw_lean": "tools" in agents.openclaw_settings(target),
            "openclaw_lean_prompt": agents.OPENCLAW_LEAN_PROMPT,
            "openclaw_scaled": any(agents.openclaw_window(m["context"]) != m["context"] for m in models),
            "openclaw_scaled_below": agents.OPENCLAW_SCALED_BELOW,
            "openclaw_estimate": agents.OPENCLAW_ESTIMATE,
        },
        "changelog": _changelog(),
    }


def _changelog() -> str:
    from longcat.docs.site import CHANGELOG

    text = CHANGELOG.read_text(encoding="utf-8")
    # The file's own title is the page's; its entries become the page's sections.
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    lines = [line for line in lines if not line.lstrip().startswith("<!--")]
    return "\n".join(lines).strip() + "\n"
