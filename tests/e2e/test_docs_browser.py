"""The docs site in a real browser (Debian's Chromium via Playwright): every page in both
languages, both themes, desktop and phone widths, with axe-core on each and screenshots kept
under tests/artifacts/screenshots/docs/; then a reader's moves (search, copy, switch language,
pick a key name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from longcat.docs import site
from tests.support.browser import axe_violations, chromium, no_csp_violations, require_chromium, watch_csp
from tests.support.console import signed_in, start_console_server

# No page of these tests may report a Content-Security-Policy violation.
pytestmark = [pytest.mark.browser, pytest.mark.usefixtures(no_csp_violations.__name__)]
pytest.importorskip("playwright.sync_api")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots" / "docs"

require_chromium()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_console_server(tmp_path_factory.mktemp("docs-browser"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    yield from chromium()

def new_page(browser, server, *, theme: str = "light", width: int = 1280, cookies=()):
    ctx = browser.new_context(viewport={"width": width, "height": 900}, color_scheme="dark" if theme == "dark" else "light")
    ctx.add_cookies([{"name": "lc_theme", "value": theme, "url": server.base_url}, *cookies])
    watch_csp(ctx)
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    return page


def test_every_docs_page_both_languages_both_themes_axe_and_screenshots(browser, server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems, shots = [], 0
    for theme in ("light", "dark"):
        for width, device in ((1280, "desktop"), (390, "phone")):
            page = new_page(browser, server, theme=theme, width=width)
            for lang, prefix in (("en", "/docs/"), ("zh", "/docs/zh/")):
                for slug in [*site.SLUGS, "search?q=quota" if lang == "en" else "search?q=额度"]:
                    response = page.goto(server.base_url + prefix + slug)
                    assert response.status == 200, (prefix + slug, response.status)
                    # Nothing wider than the window: a phone scrolls code and tables inside their boxes.
                    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                    assert overflow <= 1, (prefix + slug, device, overflow)
                    name = slug.split("?")[0]
                    page.screenshot(path=str(ARTIFACTS / f"{name}.{lang}.{theme}.{device}.png"), full_page=slug in ("quick-start", "search?q=quota"))
                    shots += 1
                    problems += [(prefix + slug, theme, device, v) for v in axe_violations(page)]
            page.context.close()
    assert shots == 2 * 2 * 2 * (len(site.SLUGS) + 1)
    assert problems == [], problems


def test_a_reader_searches_copies_switches_language_and_picks_a_key(browser, server):
    reader = signed_in(server)
    reader.create_key("work laptop")
    cookie = {"name": "lc_session", "value": reader.session, "url": server.base_url}
    page = new_page(browser, server, cookies=[cookie])
    page.goto(server.base_url + "/docs/quick-start")
    page.get_by_label("Search the docs").fill("context window")
    page.get_by_role("button", name="Search", exact=True).click()
    page.wait_for_url("**/docs/search?q=context+window")
    assert page.locator("ol.results li").count() > 3
    page.locator("ol.results a").first.click()
    assert "/docs/" in page.url
    page.goto(server.base_url + "/docs/quick-start")
    page.locator("#key-pick").select_option("work laptop")
    page.wait_for_url("**/docs/quick-start?key=work+laptop")
    first = page.locator("pre.code").filter(has_text="import requests")
    first.scroll_into_view_if_needed()
    page.locator(f'button[data-copy="{first.get_attribute("id")}"]').click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "YOUR_KEY:work-laptop" in copied and "ak_" not in copied and "import requests" in copied
    page.locator("[data-lang-switch]").click()
    page.wait_for_url("**/docs/zh/quick-start?key=work+laptop")
    assert page.locator("h1").inner_text() == "快速开始"
    page.locator('[data-theme-set="dark"]').click()
    assert page.locator("html").get_attribute("data-theme") == "dark"
    page.context.close()
    reader.close()
