"""The docs site over a real socket: every page in both languages, as HTML and Markdown; links,
placeholders, navigation, search, llms.txt, the key-name picker."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import unquote, urljoin, urlsplit

import httpx
import pytest

from longcat.docs import site
from tests.support.console import signed_in

LANGS = {"en": "/docs/", "zh": "/docs/zh/"}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        for name in ("href", "src", "action"):
            if a.get(name) and not (tag == "form" and name == "action" and a[name] == ""):
                self.hrefs.append(a[name])


def parse(html: str) -> _Links:
    p = _Links()
    p.feed(html)
    return p


def all_urls() -> list[str]:
    return [prefix + slug + ext for prefix in LANGS.values() for slug in site.SLUGS for ext in ("", ".md")]


def test_every_page_answers_in_both_languages_as_html_and_markdown(docs_server):
    with httpx.Client(base_url=docs_server.base_url, timeout=30) as c:
        for url in all_urls() + ["/docs/", "/docs/zh/", "/llms.txt", "/docs/search?q=quota", "/docs/zh/search?q=额度"]:
            r = c.get(url)
            assert r.status_code == 200, (url, r.status_code, r.text[:300])
            if url.endswith(".md"):
                assert r.headers["content-type"].startswith("text/markdown")
                assert r.text.startswith("# ")
            elif "/docs" in url:
                assert r.headers["content-type"].startswith("text/html")
                assert 'data-theme="' in r.text and "/static/console.css" in r.text  # the console's look
        assert c.get("/docs").status_code == 308 and c.get("/docs/zh").headers["location"] == "/docs/zh/"
        assert c.get("/docs/nope").status_code == 404 and c.get("/docs/zh/nope.md").status_code == 404


def test_no_placeholder_is_left_unrendered(docs_server):
    with httpx.Client(base_url=docs_server.base_url, timeout=30) as c:
        for url in all_urls():
            text = c.get(url).text
            for marker in ("{{", "{%", "{#", "Undefined", "<built-in", "SimpleNamespace", "None |"):
                assert marker not in text, (url, marker)


def test_no_internal_link_is_broken(docs_server):
    base = docs_server.base_url
    checked: dict[str, _Links] = {}
    with httpx.Client(base_url=base, timeout=30) as c:
        def fetch(path: str) -> _Links:
            if path not in checked:
                r = c.get(path, follow_redirects=True)
                assert r.status_code == 200, (path, r.status_code)
                checked[path] = parse(r.text) if "html" in r.headers.get("content-type", "") else _Links()
            return checked[path]

        for page in [u for u in all_urls() if not u.endswith(".md")] + ["/docs/search?q=key"]:
            for href in fetch(page).hrefs:
                absolute = urljoin(base + page, href)
                if not absolute.startswith(base):
                    assert absolute.startswith(("https://", "http://")), (page, href)
                    continue
                parts = urlsplit(absolute)
                target = parts.path + (("?" + parts.query) if parts.query else "")
                if parts.path.startswith("/theme/") or parts.path in ("/logout",):
                    continue  # actions, not pages
                links = fetch(target)
                if parts.fragment:
                    assert unquote(parts.fragment) in links.ids, f"{page}: #{parts.fragment} missing on {target}"


def test_pages_have_navigation_prev_next_and_language_switch(docs_server):
    with httpx.Client(base_url=docs_server.base_url, timeout=30) as c:
        for lang, prefix in LANGS.items():
            for i, slug in enumerate(site.SLUGS):
                html = c.get(prefix + slug).text
                for s in site.SLUGS:
                    assert f'href="{prefix}{s}"' in html  # the whole navigation
                assert f'href="{prefix}{slug}" aria-current="page"' in html
                if i > 0:
                    assert f'rel="prev" href="{prefix}{site.SLUGS[i - 1]}"' in html
                if i + 1 < len(site.SLUGS):
                    assert f'rel="next" href="{prefix}{site.SLUGS[i + 1]}"' in html
                other = LANGS["zh" if lang == "en" else "en"]
                assert f'href="{other}{slug}"' in html and "data-lang-switch" in html
                assert f'<html lang="{site.HTML_LANG[lang]}"' in html


def test_code_blocks_have_copy_buttons(docs_server):
    html = httpx.get(docs_server.base_url + "/docs/quick-start", timeout=30).text
    blocks = re.findall(r'<pre class="code" id="(code-\d+)"', html)
    assert len(blocks) >= 6
    for block_id in blocks:
        assert f'data-copy="{block_id}"' in html
    zh = httpx.get(docs_server.base_url + "/docs/zh/quick-start", timeout=30).text
    assert ">复制</button>" in zh


def test_llms_txt_indexes_the_markdown_pages(docs_server):
    text = httpx.get(docs_server.base_url + "/llms.txt", timeout=30).text
    links = re.findall(r"\]\((http[^)]+)\)", text)
    assert len(links) == 2 * len(site.SLUGS)
    for link in links:
        assert link.startswith(docs_server.base_url) and link.endswith(".md")
        assert httpx.get(link, timeout=30).status_code == 200
    assert "LongCat-2.0-Preview (context 1,048,576" in text


def test_search_finds_sections_in_each_language(docs_server):
    with httpx.Client(base_url=docs_server.base_url, timeout=30) as c:
        en = c.get("/docs/search", params={"q": "compaction"}).text
        assert 'href="/docs/opencode#' in en
        zh = c.get("/docs/zh/search", params={"q": "额度 刷新"}).text
        assert 'href="/docs/zh/' in zh and "quick-start" in zh
        assert "Nothing on these pages matches" in c.get("/docs/search", params={"q": "zzqqxx"}).text
        # The query is text, never markup.
        assert "<script>" not in c.get("/docs/search", params={"q": "<script>x"}).text


def test_a_signed_in_reader_picks_a_key_name_never_the_key(docs_server):
    b = signed_in(docs_server)
    try:
        _, secret = b.create_key("laptop one")
        page = b.get("/docs/quick-start").text
        assert 'name="key"' in page and ">laptop one</option>" in page
        assert page.count("YOUR_API_KEY") > 3
        picked = b.get("/docs/quick-start", params={"key": "laptop one"})
        assert picked.headers["cache-control"] == "private, no-store"
        assert "YOUR_KEY:laptop-one" in picked.text and secret not in picked.text
        md = b.get("/docs/codex.md", params={"key": "laptop one"}).text
        assert 'LONGCAT_API_KEY="YOUR_KEY:laptop-one"' in md and secret not in md
        # A name that is not one of the reader's keys changes nothing; neither does an anonymous visitor's.
        assert "YOUR_KEY:" not in b.get("/docs/quick-start", params={"key": "someone else"}).text
        anon = httpx.get(docs_server.base_url + "/docs/quick-start", params={"key": "laptop one"}, timeout=30).text
        assert "YOUR_KEY:" not in anon and 'name="key"' not in anon
    finally:
        b.close()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_security_headers(docs_server, lang):
    r = httpx.get(docs_server.base_url + LANGS[lang] + "api", timeout=30)
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
