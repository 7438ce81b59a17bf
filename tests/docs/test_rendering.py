"""What the pages say comes from the running configuration, and both languages stay in step."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from longcat.app import create_app
from longcat.config import ModelConfig, load_settings
from longcat.docs import agents, facts, site

CATALOG = [
    ModelConfig(id="big-agent-model", engine="mock", context_window=262144, max_output=32768),
    ModelConfig(id="tiny-model", engine="mock", context_window=4096, max_output=2048),
]


def settings(tmp_path, **overrides):
    s = load_settings(env={}, data_dir=str(tmp_path), **overrides)
    s.models = list(CATALOG)
    return s


def client(s, peer: str = "127.0.0.1") -> TestClient:
    return TestClient(create_app(s), client=(peer, 50000))


def test_every_page_exists_in_both_languages_and_nothing_else():
    for lang in site.LANGS:
        files = {p.stem for p in (site.CONTENT / lang).glob("*.md") if not p.name.startswith("_")}
        assert files == set(site.SLUGS), lang


@pytest.mark.parametrize("catalog", ["default", "custom"])
def test_headings_have_the_same_structure_in_both_languages(tmp_path, catalog):
    s = load_settings(env={}, data_dir=str(tmp_path)) if catalog == "default" else settings(tmp_path, registration="invite")
    f = facts.build(s, "http://127.0.0.1:8000")
    for slug in site.SLUGS:
        en, zh = site.structure(slug, "en", f), site.structure(slug, "zh", f)
        assert en == zh, f"{slug}: English headings {en} vs 中文 {zh}"
        assert en[0] == 1 and en.count(1) == 1, slug


def test_the_facts_come_from_the_configuration(tmp_path):
    s = settings(tmp_path, daily_quota=1234567, daily_quota_cap=7654321, key_rpm=42, account_tpm=99999,
                 feedback_daily_limit=3, feedback_refresh_probability=0.25)
    with client(s) as c:
        qs = c.get("/docs/quick-start.md").text
        for text in ("1,234,567", "7,654,321", "| 42 |", "99,999", "25%", "At most 3 submissions",
                     "`big-agent-model` | OpenAI / Anthropic | 262,144 tokens | 32,768 tokens",
                     "`tiny-model` | OpenAI / Anthropic | 4,096 tokens | 2,048 tokens"):
            assert text in qs, text
        assert "LongCat-2.0-Preview" not in qs and "8,192" not in qs
        zh = c.get("/docs/zh/faq.md").text
        assert "1,234,567" in zh and "每分钟 42 次请求" in zh


def test_guides_judge_each_model_from_measured_prompt_sizes(tmp_path):
    with client(settings(tmp_path)) as c:
        claude = c.get("/docs/claude-code.md").text
        assert "| `big-agent-model` | 262,144 | yes, 242,044 tokens left to answer | 32,768 |" in claude
        assert "| `tiny-model` | 4,096 | no: about 20,100 tokens needed | — |" in claude
        assert '"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "32768"' in claude
        opencode = c.get("/docs/opencode.md").text
        assert '"compaction": {\n    "auto": false' in opencode  # a small model is served
        assert '"context": 4096' in opencode


def test_the_embedded_default_fits_opencode_and_openclaw_only():
    fits = {a: agents.fit(a, "LongCat-2.0-Preview", 8192, 8192) for a in agents.AGENTS}
    assert {a for a, f in fits.items() if f.fits} == {"opencode", "openclaw"}
    # OpenCode compacts when used >= context - output: its first prompt must stay below that.
    assert agents.PROMPT_TOKENS["opencode"] < 8192 - fits["opencode"].output
    # OpenClaw's full prompt would leave under 100 tokens: it is given the minimal tool profile,
    # and its output limit is sized from that prompt.
    assert agents.openclaw_lean(8192) and not agents.openclaw_lean(200_000)
    assert fits["openclaw"].prompt == agents.OPENCLAW_LEAN_PROMPT
    assert fits["openclaw"].output > 1 and agents.OPENCLAW_LEAN_PROMPT + fits["openclaw"].output <= 8192
    target = agents.Target("http://x", "k", (("LongCat-2.0-Preview", 8192, 8192),))
    assert agents.openclaw_settings(target)["tools"] == {"profile": "minimal"}
    assert "tools" not in agents.openclaw_settings(agents.Target("http://x", "k", (("big", 200_000, 8192),)))


def test_public_url_wins(tmp_path):
    with client(settings(tmp_path, public_url="https://llm.example.org/")) as c:
        qs = c.get("/docs/quick-start.md", headers={"host": "other:1"}).text
        assert "https://llm.example.org/openai/v1/chat/completions" in qs and "other:1" not in qs
        assert "https://llm.example.org/docs/api.md" in c.get("/llms.txt").text


def test_forwarded_headers_count_only_from_trusted_proxies(tmp_path):
    forwarded = {"host": "10.0.0.7:8000", "x-forwarded-proto": "https", "x-forwarded-host": "docs.example.net"}
    with client(settings(tmp_path, trusted_proxies="127.0.0.1")) as c:
        assert "https://docs.example.net/anthropic" in c.get("/docs/quick-start.md", headers=forwarded).text
        assert "http://10.0.0.7:8000/anthropic" in c.get("/docs/quick-start.md", headers={"host": "10.0.0.7:8000"}).text
    with client(settings(tmp_path / "b", trusted_proxies="127.0.0.1"), peer="192.0.2.9") as c:
        text = c.get("/docs/quick-start.md", headers=forwarded).text
        assert "docs.example.net" not in text and "http://10.0.0.7:8000/anthropic" in text
    with client(settings(tmp_path / "c", trusted_proxies="127.0.0.1")) as c:
        text = c.get("/docs/quick-start.md", headers={**forwarded, "x-forwarded-host": "evil.example/<x>"}).text
        assert "evil" not in text


def test_key_placeholder_never_breaks_a_snippet():
    assert facts.key_placeholder(None) == "YOUR_API_KEY"
    assert facts.key_placeholder('my "laptop" $(rm -rf)') == "YOUR_KEY:my-laptop-rm--rf"
    assert facts.key_placeholder("笔记本 电脑") == "YOUR_KEY:笔记本-电脑"
    assert re.fullmatch(r"YOUR_KEY:[\w.-]+", facts.key_placeholder("a b;c|d'e`f\\g"))


def test_openclaw_fit_follows_the_default_models_window():
    # The tool profile is one setting for every model: the default model's window decides it,
    # and the fit table and output limits of the other models follow that choice.
    small_first = agents.Target("http://x", "k", (("small", 8192, 8192), ("big", 200_000, 8192)))
    assert [f.prompt for f in small_first.fits("openclaw")] == [agents.OPENCLAW_LEAN_PROMPT] * 2
    big_first = agents.Target("http://x", "k", (("big", 200_000, 8192), ("small", 8192, 8192)))
    big, small = big_first.fits("openclaw")
    assert big.prompt == small.prompt == agents.PROMPT_TOKENS["openclaw"]
    assert small.room == 8192 - agents.PROMPT_TOKENS["openclaw"]
    assert "tools" not in agents.openclaw_settings(big_first)
    limits = {m["id"]: m["maxTokens"] for m in agents.openclaw_settings(big_first)["models"]["providers"]["longcat"]["models"]}
    assert limits["small"] == small.output
