"""Helpers for driving the dashboard in Chromium: pages with JavaScript errors failing the test,
and screenshots saved under artifacts/screenshots/ (gitignored; CI keeps them as artifacts)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# No sandbox (root in CI), no GPU, and nothing that would reach the internet on its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


@contextlib.contextmanager
def open_page(
    browser,
    url: str,
    viewport: dict[str, int] = LAPTOP,
    allow_errors: bool = False,
    expected_errors: str | None = None,
    **options,
) -> Iterator:
    """A page in its own context (its own storage), with JavaScript errors failing the test
    (unless `allow_errors`: a page whose node goes away logs failed reconnections; or they match
    the regular expression `expected_errors`, as the browser's note on each refused request does)."""
    context = browser.new_context(viewport=viewport, **options)
    page = context.new_page()
    errors: list[str] = []
    elsewhere: list[str] = []  # the dashboard works offline: it asks only the node that served it
    origin = url.rstrip("/")
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("request", lambda request: request.url.startswith(origin) or elsewhere.append(request.url))
    page.goto(url)
    try:
        yield page
        unexpected = [e for e in errors if expected_errors is None or not re.search(expected_errors, e)]
        assert allow_errors or not unexpected, f"the page logged errors: {unexpected}"
        assert not elsewhere, f"the page fetched from elsewhere: {elsewhere}"
    finally:
        context.close()


def screenshot(target, name: str, full_page: bool = True) -> Path:
    """Save a page (from the top, whole unless `full_page` is False: then the viewport as it is
    scrolled) or one element (a locator) as artifacts/screenshots/NAME.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if hasattr(target, "goto") and full_page:
        target.evaluate("window.scrollTo(0, 0)")  # else the sticky header lands mid-picture
        target.screenshot(path=str(path), full_page=True)
    else:
        target.screenshot(path=str(path))
    return path


CONTROL_ROLES = (
    "button",
    "link",
    "textbox",
    "combobox",
    "checkbox",
    "radio",
    "spinbutton",
    "slider",
    "switch",
)
UNNAMED = re.compile(rf"^\s*- ({'|'.join(CONTROL_ROLES)})(:|$| \[)")


def unnamed_controls(page) -> list[str]:
    """Controls without an accessible name, as Chromium's accessibility tree has them."""
    return [line for line in page.locator("body").aria_snapshot().splitlines() if UNNAMED.match(line)]
