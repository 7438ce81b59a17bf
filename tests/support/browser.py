"""Debian's Chromium driven by Playwright, for the console's and the docs site's browser tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("LONGCAT_CHROMIUM", "/usr/bin/chromium")
AXE = "/static/vendor/axe-core-4.14.1/axe.min.js"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    # Several windows at once: keep the hidden ones' timers (htmx polling) running at full speed.
    "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows", "--disable-renderer-backgrounding",
]


def require_chromium() -> None:
    """Skip the module without Chromium, except in CI, which installs it (.ci/run): there its
    absence is a failure."""
    if Path(CHROMIUM).exists():
        return
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


def chromium() -> Iterator:
    """A launched browser, for a module-scoped fixture."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def axe_violations(page) -> list[dict]:
    """axe-core's serious and critical findings on the page, briefly."""
    page.add_script_tag(url=AXE)
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]} for v in result
            if v["impact"] in ("serious", "critical")]


# Content-Security-Policy violations, as pages report them: Chromium logs a refusal to the console,
# and the page's `securitypolicyviolation` event (listened to by an init script, which CSP does not
# govern) logs one line more with the directive and the source. Tests assert the list stays empty.
CSP_REPORTS: list[str] = []
_CSP_LISTENER = """
document.addEventListener('securitypolicyviolation', (e) => console.error(
  'CSP violation: ' + e.effectiveDirective + ' blocked ' + (e.blockedURI || 'inline') + ' at ' +
  (e.sourceFile || document.location.href) + ':' + e.lineNumber));
"""


def watch_csp(context) -> None:
    """Record every CSP violation of the pages of this browser context in `CSP_REPORTS`."""
    context.add_init_script(_CSP_LISTENER)

    def on_console(message) -> None:
        if message.text.startswith("CSP violation") or "Content Security Policy" in message.text:
            CSP_REPORTS.append(f"{message.location.get('url', '?')}: {message.text}")

    context.on("console", on_console)


@pytest.fixture
def no_csp_violations():
    """Every page a test visits runs under the CSP without one refusal (autouse in the modules)."""
    CSP_REPORTS.clear()
    yield CSP_REPORTS
    assert CSP_REPORTS == [], CSP_REPORTS
