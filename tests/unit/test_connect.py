"""`longcat connect`: merges, never drops what it does not own, backs up, dry-runs, is idempotent."""

from __future__ import annotations

import datetime as dt
import json
import tomllib

import pytest

from longcat.connect import ConnectError, config_path, connect, merge, order_models
from longcat.docs.agents import AGENTS, Target

KEY = "ak_0123456789abcdefghijklmnopqrstuv"
TARGET = Target("http://127.0.0.1:8000", KEY, (("LongCat-2.0-Preview", 8192, 8192), ("big", 262144, 32768)))
NOW = dt.datetime(2026, 12, 2, 1, 0, 0, tzinfo=dt.UTC)


def test_merge_keeps_foreign_keys_and_replaces_owned_subtrees():
    existing = {"provider": {"longcat": {"models": {"stale": {}}}, "other": {"x": 1}}, "theme": "dark"}
    ours = {"provider": {"longcat": {"models": {"new": {}}}}, "model": "longcat/new"}
    out = merge(existing, ours, (("provider", "longcat"),))
    assert out == {"provider": {"longcat": {"models": {"new": {}}}, "other": {"x": 1}}, "theme": "dark", "model": "longcat/new"}


@pytest.mark.parametrize("agent", AGENTS)
def test_new_file_then_idempotent(tmp_path, agent):
    path = config_path(agent, tmp_path)
    first = connect(agent, TARGET, path, now=NOW)
    assert first.changed and first.backup is None and path.exists()
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # it holds a key
    assert KEY not in first.diff and "ak_012…stuv" in first.diff or agent == "codex"
    again = connect(agent, TARGET, path, now=NOW)
    assert not again.changed and again.backup is None
    assert list(path.parent.glob("*.bak-*")) == []


def test_claude_code_env_merges_into_existing_env(tmp_path):
    path = config_path("claude-code", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"env": {"MY_VAR": "1", "ANTHROPIC_MODEL": "old"}, "permissions": {"deny": ["Read(.env)"]}}))
    result = connect("claude-code", TARGET, path, now=NOW)
    data = json.loads(path.read_text())
    assert data["env"]["MY_VAR"] == "1" and data["env"]["ANTHROPIC_MODEL"] == "LongCat-2.0-Preview"
    assert data["env"]["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8000/anthropic" and data["env"]["ANTHROPIC_AUTH_TOKEN"] == KEY
    assert data["permissions"] == {"deny": ["Read(.env)"]}
    assert result.backup.name == "settings.json.bak-20261202T010000Z"
    assert json.loads(result.backup.read_text())["env"]["ANTHROPIC_MODEL"] == "old"


def test_codex_keeps_comments_tables_and_other_providers(tmp_path):
    path = config_path("codex", tmp_path)
    path.parent.mkdir(parents=True)
    original = '# mine\nmodel = "gpt"\n\n[model_providers.other]\nname = "Other"\n\n[model_providers.longcat]\nname = "old"\nstale = 1\n\n[profiles.x]\nmodel = "y"\n'
    path.write_text(original)
    connect("codex", TARGET, path, now=NOW)
    text = path.read_text()
    data = tomllib.loads(text)
    assert text.startswith("# mine\n")
    assert data["model"] == "LongCat-2.0-Preview" and data["model_provider"] == "longcat"
    assert data["model_providers"]["other"] == {"name": "Other"} and data["profiles"] == {"x": {"model": "y"}}
    assert data["model_providers"]["longcat"] == {"name": "LongCat", "base_url": "http://127.0.0.1:8000/openai/v1",
                                                  "env_key": "LONGCAT_API_KEY", "wire_api": "responses"}
    assert KEY not in text  # Codex takes the key from the environment


def test_dry_run_writes_nothing(tmp_path):
    path = config_path("openclaw", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"channels": {}}')
    result = connect("openclaw", TARGET, path, dry_run=True, now=NOW)
    assert result.changed and "+++" in result.diff and '"baseUrl": "http://127.0.0.1:8000/openai/v1"' in result.diff
    assert path.read_text() == '{"channels": {}}' and list(path.parent.iterdir()) == [path]


def test_a_file_it_cannot_read_safely_is_left_alone(tmp_path):
    path = config_path("opencode", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{\n  // a comment\n  "theme": "x",\n}')
    with pytest.raises(ConnectError, match="not plain JSON"):
        connect("opencode", TARGET, path, now=NOW)
    assert "// a comment" in path.read_text()


def test_settings_fit_the_models():
    path_settings = json.loads(json.dumps(__import__("longcat.docs.agents", fromlist=["x"]).opencode_settings(TARGET)))
    limits = path_settings["provider"]["longcat"]["models"]
    assert limits["LongCat-2.0-Preview"]["limit"] == {"context": 8192, "output": 296}
    assert limits["big"]["limit"] == {"context": 262144, "output": 32768}
    assert path_settings["compaction"] == {"auto": False}


def test_model_order():
    models = [("a", 1, 1), ("b", 2, 2)]
    assert order_models(models, "b")[0][0] == "b"
    with pytest.raises(ConnectError, match="not served"):
        order_models(models, "c")
