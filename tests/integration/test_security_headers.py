"""Security headers on a real server: every page route of the console and the docs (derived from
the app's own routes, so a new page is covered or this test says why not), static files, errors
and the wire API (nosniff only); HSTS only for an https deployment; and no inline script anywhere the CSP
would have to allow it."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, Route

from longcat.app import create_app
from longcat.config import ModelConfig, Settings
from longcat.docs import site
from tests.support.console import admin_browser, start_console_server

SRC = Path(__file__).resolve().parents[2] / "src" / "longcat"
API_PREFIXES = ("/openai", "/anthropic", "/api/", "/health")
# Values for the path parameters of page routes; a page route with another parameter fails the test.
PARAMS = {"lang": ["en", "zh_CN"], "theme": ["dark"], "page": list(site.SLUGS)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_console_server(tmp_path_factory.mktemp("headers"), extra='public_url = "https://llm.example.com"')
    yield s
    s.stop()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    s = start_console_server(tmp_path_factory.mktemp("headers-http"))
    yield s
    s.stop()


def page_paths(account_id: int) -> list[str]:
    """Every GET route that is not the API, with its parameters filled in."""
    settings = Settings(models=[ModelConfig(id="m", engine="mock", context_window=100, max_output=10)])
    paths: list[str] = []
    for route in create_app(settings).routes:
        if isinstance(route, Mount) or not isinstance(route, Route) or "GET" not in (route.methods or ()):
            continue
        if route.path.startswith(API_PREFIXES):
            continue
        expanded = [route.path.replace("{account_id}", str(account_id))]
        for name in re.findall(r"{(\w+)(?::\w+)?}", expanded[0]):
            assert name in PARAMS, f"page route {route.path}: no test value for {{{name}}}"
            expanded = [re.sub("{" + name + r"(?::\w+)?}", v, p) for p in expanded for v in PARAMS[name]]
        paths += expanded
    return paths


def assert_page_headers(response: httpx.Response, *, hsts: bool) -> None:
    where = f"{response.request.method} {response.url.path} ({response.status_code})"
    h = response.headers
    csp = h.get("content-security-policy", "")
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives.get("script-src") == ["'self'"], where
    assert directives.get("style-src") == ["'self'"], where
    assert directives.get("frame-ancestors") == ["'none'"] and directives.get("object-src") == ["'none'"], where
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, where
    assert h.get("x-frame-options") == "DENY", where
    assert h.get("x-content-type-options") == "nosniff", where
    assert h.get("referrer-policy") in ("same-origin", "strict-origin-when-cross-origin", "no-referrer"), where
    assert (h.get("strict-transport-security") == "max-age=31536000") is hsts, where
    for name in ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy"):
        assert len(h.get_list(name)) == 1, (where, name)


INLINE = [
    (re.compile(r"<script(?![^>]*\ssrc=)[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.I), "an on…= handler attribute"),
    (re.compile(r"<[a-z][^>]*\sstyle\s*=", re.I), "a style attribute"),
    (re.compile(r"<style[\s>]", re.I), "a <style> element"),
    (re.compile(r"""(href|src|action)\s*=\s*["']?\s*javascript:""", re.I), "a javascript: URL"),
    (re.compile(r"\shx-on[:-]", re.I), "an hx-on attribute (htmx evaluates it as script)"),
]


def inline_code(html: str) -> list[str]:
    return [what for pattern, what in INLINE if pattern.search(html)]


def test_every_page_route_carries_the_headers_and_no_inline_code(server):
    admin = admin_browser(server)
    account_id = admin.get("/api/v1/account").json()["id"]
    paths = page_paths(account_id)
    assert {"/login", "/keys", "/admin/users", f"/admin/users/{account_id}", "/docs/quick-start", "/docs/zh/faq"} <= set(paths)
    anonymous = httpx.Client(base_url=server.base_url, timeout=30)
    for path in paths:
        for client in (admin.client, anonymous):
            r = client.get(path)
            assert r.status_code < 500, (path, r.status_code)
            assert_page_headers(r, hsts=True)
            if r.headers.get("content-type", "").startswith("text/html"):
                assert inline_code(r.text) == [], (path, inline_code(r.text))
    # htmx fragments, form posts that redirect, static files, and errors carry them too.
    assert_page_headers(admin.client.get("/usage/live", headers={"HX-Request": "true"}), hsts=True)
    assert_page_headers(anonymous.post("/login", data={"email": "x@example.com", "password": "wrong"}), hsts=True)
    assert_page_headers(anonymous.get("/static/console.js"), hsts=True)
    assert_page_headers(anonymous.get("/docs/static/docs.css"), hsts=True)
    assert_page_headers(anonymous.get("/no/such/page"), hsts=True)
    assert_page_headers(anonymous.get("/api/v1/account"), hsts=True)  # the console's JSON API (401)
    anonymous.close()
    admin.close()


def test_the_wire_api_gets_only_nosniff(server, plain_server):
    for s in (server, plain_server):
        key = s.new_key("headers@example.com")
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=s.base_url, timeout=30) as c:
            replies = [
                c.post("/openai/v1/chat/completions", headers=auth,
                       json={"model": "LongCat-2.0-Preview", "messages": [{"role": "user", "content": "hi"}]}),
                c.get("/openai/v1/models", headers=auth),
                c.post("/anthropic/v1/messages", json={"model": "x", "max_tokens": 5, "messages": []}),  # 401
            ]
            with c.stream("POST", "/openai/v1/chat/completions", headers=auth,
                          json={"model": "LongCat-2.0-Preview", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as sse:
                sse.read()
                replies.append(sse)
        assert [r.status_code for r in replies] == [200, 200, 401, 200]
        for r in replies:
            assert r.headers.get_list("x-content-type-options") == ["nosniff"], r.url
            assert "content-security-policy" not in r.headers and "x-frame-options" not in r.headers, r.url
            assert "strict-transport-security" not in r.headers, r.url  # the pages carry it


def test_plain_http_deployment_has_no_hsts(plain_server):
    r = httpx.get(plain_server.base_url + "/login", timeout=30)
    assert_page_headers(r, hsts=False)


def test_templates_hold_no_inline_script_or_style():
    templates = [*sorted((SRC / "console" / "templates").rglob("*.html")), *sorted((SRC / "docs" / "templates").rglob("*.html"))]
    content = sorted((SRC / "docs" / "content").rglob("*.md"))
    assert len(templates) > 10 and len(content) > 10
    found = {str(p.relative_to(SRC)): inline_code(p.read_text()) for p in templates + content}
    assert {p: f for p, f in found.items() if f} == {}
    # Every script the templates load comes from this site's static files.
    for path in templates:
        for src in re.findall(r"<script[^>]*\ssrc=\"([^\"]+)\"", path.read_text()):
            assert src.startswith("{{"), (path, src)


def test_the_inline_scan_finds_what_it_looks_for():
    assert inline_code('<p>ok</p><script src="/static/a.js" defer></script>') == []
    assert inline_code("<script>alert(1)</script>") == ["an inline <script>"]
    assert inline_code('<button onclick="x()">') == ["an on…= handler attribute"]
    assert inline_code('<div style="color:red">') == ["a style attribute"]
    assert inline_code('<a href="javascript:alert(1)">') == ["a javascript: URL"]
    assert inline_code('<form hx-on:submit="x()">') == ["an hx-on attribute (htmx evaluates it as script)"]
