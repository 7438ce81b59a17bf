"""The docs site's routes: `/docs/<page>` (English), `/docs/zh/<page>` (中文), each page also as
Markdown (`.md`), a search page per language, and `/llms.txt` indexing the Markdown for agents.

Pages are public. A signed-in visitor (the console's session cookie) may pick one of their keys'
names; snippets then carry a placeholder naming that key, never the key itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from longcat.docs import facts as facts_mod
from longcat.docs import site
from longcat.gateway.principal import SESSION_COOKIE, from_session
from longcat.httpkit import ImmutableStaticFiles

HERE = Path(__file__).parent
# The security headers (CSP, frame denial…) are the app's, on every response (httpkit.SecurityHeaders).
THEMES = ("system", "light", "dark")

UI = {
    "en": {
        "site": "LongCat API Platform", "docs": "Docs", "search": "Search", "search_docs": "Search the docs",
        "previous": "Previous", "next": "Next", "copy": "Copy", "copied": "Copied", "language": "Language",
        "theme": "Theme", "auto": "Auto", "light": "Light", "dark": "Dark", "pages": "Pages", "markdown": "This page as Markdown",
        "key_pick": "Fill snippets with a reminder of one of your keys", "key_none": "Generic placeholder",
        "apply": "Apply", "console": "Console", "sign_in": "Sign in", "results": "Results for “{q}”",
        "no_results": "Nothing on these pages matches “{q}”.", "not_found": "There is no such page.",
        "skip": "Skip to content", "key_note": "Snippets show {ph} where your key “{name}” goes: paste that key there.",
        "on_page": "On this page", "menu": "Menu",
    },
    "zh": {
        "site": "LongCat API 开放平台", "docs": "文档", "search": "搜索", "search_docs": "搜索文档",
        "previous": "上一页", "next": "下一页", "copy": "复制", "copied": "已复制", "language": "语言",
        "theme": "主题", "auto": "自动", "light": "浅色", "dark": "深色", "pages": "页面", "markdown": "本页的 Markdown 版本",
        "key_pick": "在示例中标注你的某个密钥", "key_none": "通用占位符",
        "apply": "应用", "console": "控制台", "sign_in": "登录", "results": "“{q}”的搜索结果",
        "no_results": "没有与“{q}”匹配的内容。", "not_found": "没有这个页面。",
        "skip": "跳到正文", "key_note": "示例中的 {ph} 是你的密钥“{name}”的位置：把该密钥粘贴到那里。",
        "on_page": "本页内容", "menu": "菜单",
    },
}


def _version(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:10]


_STATIC_VERSION = _version(HERE / "static" / "docs.css", HERE / "static" / "docs.js")
_templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                         trim_blocks=True, lstrip_blocks=True)


def _base(request: Request) -> str:
    settings = request.app.state.settings
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    peer = request.client.host if request.client else ""
    return facts_mod.base_url(settings, request.url.scheme, host, peer, request.headers)


async def _visitor(request: Request) -> tuple[Any, list[str]]:
    """The signed-in account (or None) and its active keys' names."""
    sessions = getattr(request.app.state, "sessions", None)
    token = request.cookies.get(SESSION_COOKIE)
    if sessions is None or not token:
        return None, []
    principal = await from_session(sessions, token)
    if principal is None:
        return None, []
    keys = await request.app.state.accounts.list_keys(principal.account.id)
    return principal, [k.name for k in keys if k.status == "enabled"]


async def _facts(request: Request) -> tuple[dict[str, Any], Any, list[str], str]:
    principal, names = await _visitor(request)
    wanted = request.query_params.get("key", "")
    picked = wanted if wanted in names else ""
    return facts_mod.build(request.app.state.settings, _base(request), picked or None), principal, names, picked


def _console_static(request: Request, path: str) -> str:
    version = getattr(getattr(request.app.state, "console", None), "static_version", "")
    return f"/static/{path}" + (f"?v={version}" if version else "")


def _page_html(request: Request, lang: str, *, slug: str | None, title: str, body: str, status: int = 200,
               principal: Any = None, names: list[str] | None = None, picked: str = "", headings=None,
               query: str = "") -> HTMLResponse:
    ui = UI[lang]
    theme = request.cookies.get("lc_theme", "system")
    theme = theme if theme in THEMES else "system"
    here = request.url.path + (("?" + request.url.query) if request.url.query else "")
    other = "zh" if lang == "en" else "en"
    if slug:
        other_url = site.page_url(slug, other)
    else:
        other_url = ("/docs/search" if other == "en" else "/docs/zh/search") + (("?" + urlencode({"q": query})) if query else "")
    index = site.SLUGS.index(slug) if slug in site.SLUGS else None
    prev_page = site.SLUGS[index - 1] if index is not None and index > 0 else None
    next_page = site.SLUGS[index + 1] if index is not None and index + 1 < len(site.SLUGS) else None
    suffix = ("?" + urlencode({"key": picked})) if picked else ""
    html = _templates.get_template("page.html").render(
        ui=ui, lang=lang, html_lang=site.HTML_LANG[lang], title=title, body=body, slug=slug, theme=theme,
        pages=[(s, site.title(s, lang), site.page_url(s, lang) + suffix) for s in site.SLUGS],
        prev=(prev_page and (site.title(prev_page, lang), site.page_url(prev_page, lang) + suffix)),
        next=(next_page and (site.title(next_page, lang), site.page_url(next_page, lang) + suffix)),
        other_lang=site.LANG_NAMES[other], other_url=other_url + (suffix if slug else ""), other_code=site.HTML_LANG[other],
        here=quote(here, safe=""), principal=principal, names=names or [], picked=picked,
        placeholder=facts_mod.key_placeholder(picked) if picked else "",
        headings=[h for h in (headings or []) if h[0] == 2],
        markdown_url=site.page_url(slug, lang, md=True) + suffix if slug else "",
        search_url="/docs/search" if lang == "en" else "/docs/zh/search", query=query,
        console_css=_console_static(request, "console.css"), console_js=_console_static(request, "console.js"),
        docs_css=f"/docs/static/docs.css?v={_STATIC_VERSION}", docs_js=f"/docs/static/docs.js?v={_STATIC_VERSION}",
        logo=_console_static(request, "logo.svg"),
    )
    private = principal is not None
    headers = {"Cache-Control": "private, no-store" if private else "no-cache", "Vary": "Host, Cookie"}
    return HTMLResponse(html, status_code=status, headers=headers)


def _not_found(request: Request, lang: str) -> HTMLResponse:
    body = f"<h1>404</h1><p>{UI[lang]['not_found']}</p>"
    return _page_html(request, lang, slug=None, title="404", body=body, status=404)


def _lang_of(request: Request) -> str:
    return "zh" if request.url.path.startswith("/docs/zh") else "en"


async def page(request: Request) -> Response:
    lang = _lang_of(request)
    name = request.path_params.get("page", "quick-start")
    as_markdown = name.endswith(".md")
    slug = name[:-3] if as_markdown else name
    if slug not in site.SLUGS:
        if as_markdown:
            return PlainTextResponse("No such page.\n", status_code=404)
        return _not_found(request, lang)
    facts, principal, names, picked = await _facts(request)
    ui = UI[lang]
    rendered = site.render(slug, lang, facts, ui["copy"], ui["copied"])
    if as_markdown:
        headers = {"Cache-Control": "private, no-store" if principal else "no-cache", "Vary": "Host, Cookie"}
        return Response(rendered.markdown, media_type="text/markdown; charset=utf-8", headers=headers)
    return _page_html(request, lang, slug=slug, title=rendered.title, body=rendered.html, principal=principal,
                      names=names, picked=picked, headings=rendered.headings)


async def search_page(request: Request) -> Response:
    lang = _lang_of(request)
    ui = UI[lang]
    query = request.query_params.get("q", "")[:200].strip()
    facts, principal, names, picked = await _facts(request)
    results = site.search(query, lang, facts) if query else []
    body = _templates.get_template("search.html").render(ui=ui, query=query, results=results, snippet=site.snippet,
                                                          title=ui["search_docs"])
    return _page_html(request, lang, slug=None, title=ui["search_docs"], body=body, principal=principal, names=names,
                      picked=picked, query=query)


async def llms_txt(request: Request) -> Response:
    base = _base(request)
    settings = request.app.state.settings
    lines = [
        "# LongCat API Platform",
        "",
        "> An OpenAI- and Anthropic-compatible LLM API. OpenAI format: "
        f"{base}/openai/v1 ; Anthropic format: {base}/anthropic . Models: "
        + ", ".join(f"{m.id} (context {m.context_window:,}, output {m.max_output:,})" for m in settings.models) + ".",
        "",
    ]
    for lang, heading in (("en", "Docs (English)"), ("zh", "文档（简体中文）")):
        lines.append(f"## {heading}")
        lines.append("")
        for slug in site.SLUGS:
            lines.append(f"- [{site.title(slug, lang)}]({base}{site.page_url(slug, lang, md=True)})")
        lines.append("")
    return PlainTextResponse("\n".join(lines), headers={"Cache-Control": "no-cache", "Vary": "Host"})


async def redirect(request: Request) -> Response:
    return RedirectResponse(request.url.path + "/", status_code=308)


def routes() -> list[BaseRoute]:
    return [
        Route("/llms.txt", llms_txt, methods=["GET", "HEAD"]),
        Route("/docs", redirect, methods=["GET", "HEAD"]),
        Route("/docs/zh", redirect, methods=["GET", "HEAD"]),
        Route("/docs/", page, methods=["GET", "HEAD"]),
        Route("/docs/zh/", page, methods=["GET", "HEAD"]),
        Route("/docs/search", search_page, methods=["GET", "HEAD"]),
        Route("/docs/zh/search", search_page, methods=["GET", "HEAD"]),
        Mount("/docs/static", app=ImmutableStaticFiles(directory=HERE / "static"), name="docs-static"),
        Route("/docs/zh/{page}", page, methods=["GET", "HEAD"]),
        Route("/docs/{page}", page, methods=["GET", "HEAD"]),
    ]
