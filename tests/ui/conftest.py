"""The browser the console and viewer tests drive: Debian's chromium under Playwright, and where screenshots go.

Playwright's own browser download cannot work on these machines, so it launches `/usr/bin/chromium` (`.ci/run`
installs it); a missing chromium fails the tests that need it (tests/tools.py `require`), never skips them.
Each page a test looks at is also saved as a PNG under UI_SCREENSHOTS (default tests/ui/screenshots/, ignored
by git) for a person to look at.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.tools import require

CHROMIUM = "/usr/bin/chromium"
# Headless on a shared 2-core machine: no GPU, no background traffic; SwiftShader gives OHIF its WebGL.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]
SCREENSHOTS = Path(os.environ.get("UI_SCREENSHOTS") or Path(__file__).parent / "screenshots")
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    require("chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile per test (its own sessionStorage, so no credential leaks between tests)."""
    opened = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A page whose script errors fail the test: a console that throws is broken even if it looks fine."""
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    assert not errors, f"the page threw: {errors}"


def screenshot(page: Page, name: str) -> Path:
    """Save what the page shows now as SCREENSHOTS/name.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
