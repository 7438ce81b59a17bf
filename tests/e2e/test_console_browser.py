"""The console in a real browser (Debian's Chromium, driven by Playwright): the newcomer's whole
journey, then every page in both languages, both themes, at desktop and phone widths, with
screenshots kept under tests/artifacts/screenshots/ and axe-core run on each."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.support.browser import axe_violations, chromium, no_csp_violations, require_chromium, watch_csp
from tests.support.console import admin_password, start_console_server, unique_email

# No page of these tests may report a Content-Security-Policy violation.
pytestmark = [pytest.mark.browser, pytest.mark.usefixtures(no_csp_violations.__name__)]
playwright_api = pytest.importorskip("playwright.sync_api")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
PASSWORD = "correct horse battery"

require_chromium()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_console_server(tmp_path_factory.mktemp("browser"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    yield from chromium()

def new_page(browser, server, *, lang: str = "en", theme: str = "light", width: int = 1280):
    ctx = browser.new_context(viewport={"width": width, "height": 900}, color_scheme="dark" if theme == "dark" else "light",
                              locale="zh-CN" if lang == "zh_CN" else "en-US")
    ctx.add_cookies([{"name": "lc_lang", "value": lang, "url": server.base_url}, {"name": "lc_theme", "value": theme, "url": server.base_url}])
    watch_csp(ctx)
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    return page


def sign_in(page, server, email: str, password: str) -> None:
    page.goto(server.base_url + "/login")
    page.locator("#f-email").fill(email)
    page.locator("#f-password").fill(password)
    page.locator("form.stack button[type=submit]").click()
    page.wait_for_url(re.compile(r"/keys"))


def test_the_csp_refuses_inline_script_and_the_watch_reports_it(browser, server, no_csp_violations):
    """The control for every other test here: an inline script is refused, and reported."""
    page = new_page(browser, server)
    page.goto(server.base_url + "/login")
    assert no_csp_violations == []
    page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.__inline = 1';
                             document.head.appendChild(s); }""")
    for _ in range(50):  # the console event arrives asynchronously
        if no_csp_violations:
            break
        page.wait_for_timeout(100)
    assert page.evaluate("window.__inline") is None
    assert any("script-src" in r for r in no_csp_violations), no_csp_violations
    no_csp_violations.clear()
    page.context.close()


def test_newcomer_journey(browser, server):
    from openai import AuthenticationError, OpenAI

    page = new_page(browser, server)
    base = server.base_url
    email = unique_email("journey")

    # Register: the form's labels are "Email" and "Password".
    page.goto(base + "/register")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(r"/keys"))
    assert page.get_by_role("heading", name="API Keys").is_visible()

    # Create a key (htmx, no reload) and copy it with the button.
    page.evaluate("window.__stay = 1")
    page.get_by_label("Name").fill("journey app")
    page.get_by_role("button", name="Create API Key").click()
    secret_box = page.locator("#new-secret")
    secret_box.wait_for()
    secret = secret_box.inner_text().strip()
    assert re.fullmatch(r"ak_[A-Za-z0-9]{40}", secret) and page.evaluate("window.__stay") == 1
    page.get_by_role("button", name="Copy key").click()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    page.reload()
    assert secret not in page.content() and f"{secret[:7]}…{secret[-4:]}" in page.content()

    # Watch the Usage page while the official OpenAI SDK calls the API: the request appears without a reload.
    page.goto(base + "/usage")
    page.evaluate("window.__stay = 1")
    client = OpenAI(api_key=secret, base_url=base + "/openai")
    raw = client.chat.completions.with_raw_response.create(model="mock-echo", messages=[{"role": "user", "content": "Hello!"}], max_tokens=100)
    request_id = raw.headers["x-request-id"]
    assert raw.parse().choices[0].message.content
    started = time.monotonic()
    page.locator(f'tr[data-request-id="{request_id}"]').wait_for(timeout=5000)
    assert time.monotonic() - started < 2.5 and page.evaluate("window.__stay") == 1

    # Export the CSV and find the request in it.
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    assert any(r[2] == request_id for r in rows) and rows[-1][0] == "total"

    # Feedback about that request, and its outcome.
    page.goto(base + "/feedback")
    page.locator("label[for=r4]").click()
    page.get_by_label("Your feedback").fill("The answer was short and correct; streaming felt fast.")
    page.get_by_label("About a request (optional)").select_option(request_id)
    page.get_by_role("button", name="Submit feedback").click()
    outcome = page.locator('[data-testid="feedback-outcome"]')
    assert "Thank you" in outcome.inner_text() and "Valid submissions left today: 9" in outcome.inner_text()
    assert page.locator(".fb").count() == 1

    # The playground in both formats: each exchange shown in both wire formats.
    page.goto(base + "/playground")
    page.get_by_label("Model").select_option("mock-echo")
    for turn, (fmt, label) in enumerate((("openai", "OpenAI"), ("anthropic", "Anthropic"))):
        page.locator(f"label[for=fmt-{fmt}]").click()
        page.get_by_label("Message").fill(f"hello from {label}")
        page.get_by_role("button", name="Send").click()
        page.locator("#pg-chat .msg.assistant").nth(turn).wait_for()
        playwright_api.expect(page.locator("#pg-chat [aria-busy]")).to_have_count(0, timeout=10_000)
        assert "message_stop" in page.locator("#res-anthropic").inner_text()
        assert f"hello from {label}" in page.locator("#pg-chat").inner_text()
        assert '"stream_options"' in page.locator("#req-openai").inner_text()
        assert "[DONE]" in page.locator("#res-openai").inner_text()
        assert page.locator(f'[data-chosen="{fmt}"]').is_visible()
    assert page.locator(".msg.assistant").count() == 2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-exchange.en.light.desktop.png"), full_page=True)
    page.get_by_role("tab", name="Python · Anthropic SDK").click()
    assert "from anthropic import Anthropic" in page.locator("#snip-python_anthropic").inner_text()
    assert secret not in page.content()

    # Disable the key on the Keys page: the API answers 401.
    page.goto(base + "/keys")
    page.get_by_role("button", name="Disable journey app").click()
    page.locator(".badge.disabled").wait_for()
    with pytest.raises(AuthenticationError):
        client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "Hello?"}], max_tokens=10)

    # Switch to Chinese: every page follows, and the choice is remembered.
    page.get_by_role("link", name="简体中文").click()
    page.wait_for_load_state()
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.get_by_role("link", name="用量信息").is_visible() and page.get_by_role("heading", name="API Keys").is_visible()
    page.goto(base + "/usage")
    assert page.get_by_role("heading", name="用量信息").is_visible() and "请求日志" in page.content()


    # An admin sets this user's quota; the user's Usage page shows it.
    admin = new_page(browser, server)
    sign_in(admin, server, "admin@localhost", admin_password(server))
    admin.goto(base + "/admin/users?q=" + email.split("@")[0])
    admin.get_by_role("link", name=email).click()
    admin.get_by_label("Daily quota (tokens)").fill("8000000")
    admin.get_by_role("button", name="Save").click()
    assert admin.get_by_text("Saved.").is_visible()
    page.bring_to_front()  # a background tab's timers are throttled
    # "8,000,000 daily + N from feedback" (N: what a lucky feedback refresh granted), live, no reload.
    page.locator(".stat .sub", has_text="8,000,000").wait_for(timeout=5000)
    admin.context.close()
    page.context.close()


def _populate(server) -> dict:
    """Data for every page to show: a user with keys, requests, feedback; an invite; audit entries."""
    base = server.base_url
    c = httpx.Client(base_url=base)
    email = unique_email("shots")
    r = c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    token = r.json()["csrf_token"]
    account_id = r.json()["account"]["id"]
    secrets = []
    for name in ("production app", "nightly batch", "laptop"):
        secrets.append(c.post("/api/v1/keys", json={"name": name}, headers={"X-CSRF-Token": token}).json()["secret"])
    for i in range(24):
        httpx.post(base + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {secrets[i % 3]}"},
                   json={"model": ("mock-echo", "mock-thinking", "LongCat-2.0-Preview")[i % 3], "stream": i % 2 == 0,
                         "messages": [{"role": "user", "content": "word " * (5 + 7 * i)}]})
    c.post("/api/v1/feedback", json={"rating": 5, "category": "quality", "text": "Great answers for our support bot."}, headers={"X-CSRF-Token": token})
    c.post("/api/v1/feedback", json={"rating": 2, "category": "speed", "text": "Slow on long prompts this morning."}, headers={"X-CSRF-Token": token})
    admin = httpx.Client(base_url=base)
    t = admin.post("/api/v1/auth/login", json={"email": "admin@localhost", "password": admin_password(server)}).json()["csrf_token"]
    admin.post("/api/v1/admin/invites", json={"note": "for the data team"}, headers={"X-CSRF-Token": t})
    admin.patch(f"/api/v1/admin/users/{account_id}", json={"daily_quota": 6_000_000}, headers={"X-CSRF-Token": t})
    return {"email": email, "account_id": account_id}


PAGES_ANON = ["/login", "/register", "/reset-password"]
PAGES_USER = ["/keys", "/usage", "/feedback", "/playground", "/account"]
PAGES_ADMIN = ["/admin/users", "/admin/users/{account_id}", "/admin/usage", "/admin/feedback", "/admin/invites", "/admin/audit"]


def test_every_page_both_languages_both_themes_axe_and_screenshots(browser, server):
    data = _populate(server)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems = []
    shots = 0
    for lang in ("en", "zh_CN"):
        for theme in ("light", "dark"):
            for width, device in ((1280, "desktop"), (390, "phone")):
                anon = new_page(browser, server, lang=lang, theme=theme, width=width)
                user = new_page(browser, server, lang=lang, theme=theme, width=width)
                sign_in(user, server, data["email"], PASSWORD)
                admin = new_page(browser, server, lang=lang, theme=theme, width=width)
                sign_in(admin, server, "admin@localhost", admin_password(server))
                work = [(anon, p) for p in PAGES_ANON] + [(user, p) for p in PAGES_USER] + [(admin, p.format(**data)) for p in PAGES_ADMIN]
                work += [(user, "/admin/users")]  # the 403 page a non-admin sees
                for page, path in work:
                    response = page.goto(server.base_url + path)
                    assert response.status in (200, 403), (path, response.status)
                    assert page.locator("html").get_attribute("lang") == ("zh-CN" if lang == "zh_CN" else "en")
                    name = (path.strip("/").replace("/", "_") or "root") + ("-forbidden" if response.status == 403 else "")
                    page.screenshot(path=str(ARTIFACTS / f"{name}.{lang}.{theme}.{device}.png"), full_page=True)
                    shots += 1
                    for v in axe_violations(page):
                        problems.append((path, lang, theme, device, v))
                    if lang == "zh_CN":
                        body = page.locator("main").inner_text()
                        assert re.search(r"[\u4e00-\u9fff]", body), path
                # The key shown once, in its panel.
                user.goto(server.base_url + "/keys")
                user.locator("#f-name").fill("screenshot key")
                user.locator("#keys-main form.row-form button[type=submit]").click()
                user.locator("#new-secret").wait_for()
                user.screenshot(path=str(ARTIFACTS / f"keys-new.{lang}.{theme}.{device}.png"), full_page=True)
                shots += 1
                problems += [("/keys (new key)", lang, theme, device, v) for v in axe_violations(user)]
                for p in (anon, user, admin):
                    p.context.close()
    assert shots == 2 * 2 * 2 * (len(PAGES_ANON) + len(PAGES_USER) + len(PAGES_ADMIN) + 2)
    assert problems == [], problems
