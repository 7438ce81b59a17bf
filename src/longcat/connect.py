"""`longcat connect AGENT`: write or merge a coding agent's settings for a deployment.

The settings are the ones the docs site's guides show (`docs.agents`), for the deployment at
`--url`, with a key given (`--key`) or made for an account (`--account`). The agent's file is
merged, not replaced: only what this platform owns changes (its provider entry, the default
model and the few settings the guides name); everything else, comments in TOML included, stays.
An existing file is first copied to `<file>.bak-<UTC timestamp>`; the diff is printed with the
key masked; `--dry-run` prints the diff and writes nothing.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from longcat.config import Settings
from longcat.docs import agents

# Subtrees the platform owns outright: replaced, not merged, so a stale model list goes away.
OWNED = {
    "claude-code": (),
    "codex": (("model_providers", agents.CODEX_PROVIDER),),
    "opencode": (("provider", "longcat"),),
    "kilo": (("provider", "longcat"),),
    "openclaw": (("models", "providers", "longcat"),),
}


class ConnectError(Exception):
    """The configuration cannot be written; the message says why."""


@dataclass
class Result:
    agent: str
    path: Path
    backup: Path | None
    diff: str
    changed: bool
    notes: list[str] = field(default_factory=list)


def config_path(agent: str, home: Path, env: dict[str, str] | None = None) -> Path:
    """Where the agent reads its user-level settings. `env` (CODEX_HOME, XDG_CONFIG_HOME) is
    honoured when given; with an explicit home directory only that directory counts."""
    env = env or {}
    xdg = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return {
        "claude-code": home / ".claude" / "settings.json",
        "codex": (Path(env["CODEX_HOME"]) if env.get("CODEX_HOME") else home / ".codex") / "config.toml",
        "opencode": xdg / "opencode" / "opencode.json",
        "kilo": xdg / "kilo" / "kilo.json",
        "openclaw": home / ".openclaw" / "openclaw.json",
    }[agent]


def merge(existing: dict, ours: dict, owned: tuple[tuple[str, ...], ...], at: tuple[str, ...] = ()) -> dict:
    """`existing` with `ours` laid over it: dicts merge key by key, an owned subtree or any other
    value is replaced. Keys only `existing` has are kept."""
    out = dict(existing)
    for key, value in ours.items():
        path = (*at, key)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and path not in owned:
            out[key] = merge(out[key], value, owned, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_toml(doc: Any, ours: dict, owned: tuple[tuple[str, ...], ...], at: tuple[str, ...] = ()) -> None:
    """The same merge on a tomlkit document, which keeps the file's comments and layout."""
    import tomlkit

    for key, value in ours.items():
        path = (*at, key)
        if isinstance(value, dict) and path in owned:
            if key in doc and isinstance(doc[key], dict):
                table = doc[key]  # updated in place: it keeps its place and spacing in the file
                for stale in [k for k in table if k not in value]:
                    del table[stale]
            else:
                table = doc[key] = tomlkit.table()
            for k, v in value.items():
                if table.get(k) != v:
                    table[k] = v
        elif isinstance(value, dict):
            if key not in doc or not isinstance(doc[key], dict):
                doc[key] = tomlkit.table(is_super_table=True)
            _merge_toml(doc[key], value, owned, path)
        else:
            doc[key] = value


def mask(text: str, key: str) -> str:
    if not key or len(key) < 12:
        return text
    return text.replace(key, key[:6] + "…" + key[-4:])


def render(agent: str, existing_text: str | None, ours: dict, path: Path) -> str:
    owned = OWNED[agent]
    if agent == "codex":
        import tomlkit

        try:
            doc = tomlkit.parse(existing_text or "")
        except Exception as exc:  # tomlkit raises its own ParseError subclasses
            raise ConnectError(f"{path} is not valid TOML ({exc}); fix or move it, then run again") from None
        _merge_toml(doc, ours, owned)
        return tomlkit.dumps(doc)
    try:
        current = json.loads(existing_text) if existing_text and existing_text.strip() else {}
    except ValueError as exc:
        raise ConnectError(
            f"{path} is not plain JSON ({exc}); comments or trailing commas cannot be merged safely: "
            "remove them or move the file, then run again"
        ) from None
    if not isinstance(current, dict):
        raise ConnectError(f"{path} does not hold a JSON object")
    return json.dumps(merge(current, ours, owned), indent=2, ensure_ascii=False) + "\n"


def connect(agent: str, target: agents.Target, path: Path, *, dry_run: bool = False, now: dt.datetime | None = None) -> Result:
    if agent not in agents.AGENTS:
        raise ConnectError(f"unknown agent {agent!r}: one of {', '.join(agents.AGENTS)}")
    existing = path.read_text(encoding="utf-8") if path.exists() else None
    new_text = render(agent, existing, agents.settings_for(agent, target), path)
    diff = "".join(
        difflib.unified_diff(
            (existing or "").splitlines(keepends=True), new_text.splitlines(keepends=True),
            fromfile=str(path) if existing is not None else "/dev/null", tofile=str(path),
        )
    )
    result = Result(agent, path, None, mask(diff, target.key), new_text != (existing or ""))
    if agent == "codex":
        result.notes.append(
            f"Codex reads the key from ${agents.CODEX_ENV_KEY}: add to your shell profile\n"
            f"  export {agents.CODEX_ENV_KEY}='{target.key}'"
        )
    if dry_run or not result.changed:
        return result
    path.parent.mkdir(parents=True, exist_ok=True)
    if existing is not None:
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
        backup = path.with_name(f"{path.name}.bak-{stamp}")
        n = 1
        while backup.exists():
            n += 1
            backup = path.with_name(f"{path.name}.bak-{stamp}-{n}")
        shutil.copy2(path, backup)
        result.backup = backup
    tmp = path.with_name(path.name + ".tmp")
    # The file holds a key: readable by its owner only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(new_text)
    os.replace(tmp, path)
    return result


def deployment_models(url: str, key: str, settings: Settings) -> list[tuple[str, int, int]]:
    """The models of the deployment at `url` with their limits, from its model routes; the local
    catalog when it cannot be asked (not running yet, another network)."""
    try:
        with httpx.Client(timeout=10) as client:
            listing = client.get(f"{url}/openai/v1/models", headers={"Authorization": f"Bearer {key}"})
            listing.raise_for_status()
            out = []
            for entry in listing.json().get("data", [])[:100]:
                detail = client.get(f"{url}/openai/v1/models/{entry['id']}", headers={"Authorization": f"Bearer {key}"})
                detail.raise_for_status()
                d = detail.json()
                out.append((d["id"], int(d["context_length"]), int(d.get("max_output_tokens") or d["context_length"])))
            if out:
                return out
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return [(m.id, m.context_window, m.max_output) for m in settings.models]


def order_models(models: list[tuple[str, int, int]], wanted: str | None) -> tuple[tuple[str, int, int], ...]:
    if not wanted:
        return tuple(models)
    first = [m for m in models if m[0] == wanted]
    if not first:
        raise ConnectError(f"model {wanted!r} is not served there; it serves: {', '.join(m[0] for m in models)}")
    return tuple(first + [m for m in models if m[0] != wanted])
