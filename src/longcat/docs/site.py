"""The docs site's pages: Markdown per language (content/en, content/zh) holding Jinja
placeholders for the deployment's facts, rendered to HTML with markdown-it-py.

A page is rendered in two steps: Jinja fills in the facts (URLs, models, limits, the settings of
each agent) with `StrictUndefined`, so a misspelt fact fails instead of printing nothing; then
markdown-it turns the Markdown into HTML (raw HTML off), headings get anchors and every code
block a copy button. The same filled-in Markdown is what `/docs/<page>.md` serves.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markdown_it import MarkdownIt
from mdit_py_plugins.anchors import anchors_plugin

HERE = Path(__file__).parent
CONTENT = HERE / "content"
CHANGELOG = HERE / "CHANGELOG.md"
LANGS = ("en", "zh")
HTML_LANG = {"en": "en", "zh": "zh-CN"}
LANG_NAMES = {"en": "English", "zh": "简体中文"}

# (slug, English title, Chinese title), in navigation order.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("quick-start", "Quick Start", "快速开始"),
    ("api", "API Docs", "API 文档"),
    ("claude-code", "Claude Code Configuration", "Claude Code 配置"),
    ("kilo-code", "Kilo Code Configuration", "Kilo Code 配置"),
    ("opencode", "OpenCode Configuration", "OpenCode 配置"),
    ("openclaw", "OpenClaw Configuration", "OpenClaw 配置"),
    ("codex", "Codex Configuration", "Codex 配置"),
    ("faq", "FAQ", "常见问题"),
    ("changelog", "Change Log", "更新日志"),
)
SLUGS = tuple(p[0] for p in PAGES)


def title(slug: str, lang: str) -> str:
    for s, en, zh in PAGES:
        if s == slug:
            return en if lang == "en" else zh
    raise KeyError(slug)


def page_url(slug: str, lang: str, md: bool = False) -> str:
    prefix = "/docs/" if lang == "en" else "/docs/zh/"
    return prefix + slug + (".md" if md else "")


def source(slug: str, lang: str) -> Path:
    return CONTENT / lang / f"{slug}.md"


def _slugify(text: str) -> str:
    text = re.sub(r"[^\w\u3400-\u9fff\- ]", "", text.strip().lower())
    return re.sub(r"\s+", "-", text) or "section"


@cache
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(["table", "strikethrough"])
    anchors_plugin(md, min_level=2, max_level=3, slug_func=_slugify, permalink=False)

    def fence(self, tokens, idx, options, env):
        token = tokens[idx]
        lang = (token.info or "").strip().split()[0] if token.info else ""
        env["blocks"] = env.get("blocks", 0) + 1
        block_id = f"code-{env['blocks']}"
        label = env.get("copy_label", "Copy")
        done = env.get("copied_label", "Copied")
        cls = f' class="language-{html.escape(lang)}"' if lang else ""
        return (
            f'<div class="codeblock"><div class="codebar"><span>{html.escape(lang or "text")}</span>'
            f'<button type="button" class="btn ghost small" data-copy="{block_id}" data-copied="{html.escape(done)}" '
            f'aria-label="{html.escape(label)}: {html.escape(lang or "text")}">{html.escape(label)}</button></div>'
            f'<pre class="code" id="{block_id}" tabindex="0"><code{cls}>{html.escape(token.content)}</code></pre></div>\n'
        )

    md.add_render_rule("fence", fence)
    md.add_render_rule("code_block", fence)

    def table_open(self, tokens, idx, options, env):
        return '<div class="table-scroll" tabindex="0"><table>\n'

    def table_close(self, tokens, idx, options, env):
        return "</table></div>\n"

    md.add_render_rule("table_open", table_open)
    md.add_render_rule("table_close", table_close)
    return md


@cache
def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader([CONTENT, HERE]),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["n"] = lambda v: f"{int(v):,}"
    env.filters["json"] = lambda v: __import__("json").dumps(v, ensure_ascii=False)
    return env


@dataclass(slots=True)
class Rendered:
    slug: str
    lang: str
    title: str
    markdown: str
    html: str
    headings: list[tuple[int, str, str]]  # (level, text, anchor)


def fill(slug: str, lang: str, facts: dict[str, Any]) -> str:
    """The page's Markdown with the deployment's facts filled in."""
    template = _env().get_template(f"{lang}/{slug}.md")
    return template.render(**facts, lang=lang, page=slug, url=lambda s, md=False: page_url(s, lang, md))


def render(slug: str, lang: str, facts: dict[str, Any], copy_label: str = "Copy", copied_label: str = "Copied") -> Rendered:
    text = fill(slug, lang, facts)
    md = _markdown()
    env: dict[str, Any] = {"copy_label": copy_label, "copied_label": copied_label}
    tokens = md.parse(text, env)
    headings = []
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            inline = tokens[i + 1]
            headings.append((int(tok.tag[1]), inline.content, tok.attrs.get("id", "")))
    body = md.renderer.render(tokens, md.options, env)
    page_title = headings[0][1] if headings and headings[0][0] == 1 else title(slug, lang)
    return Rendered(slug, lang, page_title, text, body, headings)


def structure(slug: str, lang: str, facts: dict[str, Any]) -> list[int]:
    """The heading levels of a page in order: both languages must have the same."""
    return [level for level, _, _ in render(slug, lang, facts).headings]


_TAGS = re.compile(r"<[^>]+>")


def search(query: str, lang: str, facts: dict[str, Any], limit: int = 30) -> list[dict[str, str]]:
    """Sections of the language's pages that hold every word of `query` (case-insensitive),
    best first: a word in the heading counts more than one in the text."""
    words = [w for w in query.lower().split() if w][:8]
    if not words:
        return []
    hits: list[tuple[int, int, dict[str, str]]] = []
    for order, slug in enumerate(SLUGS):
        page = render(slug, lang, facts)
        for section in _sections(page):
            hay = (section["heading"] + " " + section["text"]).lower()
            if all(w in hay for w in words):
                score = sum(3 * section["heading"].lower().count(w) + min(hay.count(w), 5) for w in words)
                hits.append((-score, order, section))
    hits.sort(key=lambda h: (h[0], h[1]))
    return [h[2] for h in hits[:limit]]


def _sections(page: Rendered) -> list[dict[str, str]]:
    parts = re.split(r"(<h[1-3][^>]*>.*?</h[1-3]>)", page.html)
    out, heading, anchor = [], page.title, ""
    for part in parts:
        m = re.match(r'<h[1-3](?: id="([^"]*)")?[^>]*>(.*?)</h[1-3]>', part)
        if m:
            anchor, heading = m.group(1) or "", html.unescape(_TAGS.sub("", m.group(2)))
            continue
        text = " ".join(html.unescape(_TAGS.sub(" ", part)).split())
        if text:
            out.append({"page": page.slug, "page_title": title(page.slug, page.lang), "heading": heading,
                        "anchor": anchor, "text": text, "url": page_url(page.slug, page.lang) + (f"#{anchor}" if anchor else "")})
    return out


def snippet(text: str, query: str, width: int = 180) -> str:
    low = text.lower()
    first = min((low.find(w) for w in query.lower().split() if low.find(w) >= 0), default=0)
    start = max(0, first - width // 3)
    return ("…" if start else "") + text[start:start + width] + ("…" if start + width < len(text) else "")
