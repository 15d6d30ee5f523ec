"""The report pages in a real browser (issue 17): report.html, the precision report and demo.html load
with no console errors and fit a 1,280-pixel-wide window. Skipped where no Chromium or Playwright exists."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.cli import main

playwright = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
CHROMIUM = next(
    (p for p in (os.environ.get("CE_HARNESS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")) if p and Path(p).is_file()),
    None,
)  # fmt: skip
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium)")
WIDTH = 1280
SMALL = ["--examples", "3", "--max-classes", "64", "--quiet", "--shrink-seconds", "3"]


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pages")
    audit = ["audit", "--impl", "stable", "--impl", "naive", "--impl", "torch", "--regime", "huge", "--regime",
             "special", "--regime", "moderate", *SMALL, "--out", str(root / "audit")]  # fmt: skip
    assert main(audit) == 0
    precision = ["audit", "--precision", "--regime", "moderate", "--regime", "special", *SMALL,
                 "--out", str(root / "precision")]  # fmt: skip
    assert main(precision) == 0
    assert main(["demo", "--out", str(root / "demo")]) == 0
    return {
        "report": root / "audit" / "report.html",
        "precision": root / "precision" / "report.html",
        "demo": root / "demo" / "demo.html",
    }


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with playwright.sync_playwright() as p:
        # a fresh profile folder (Playwright passes it as --user-data-dir); Debian's Chromium, never a download
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, viewport={"width": WIDTH, "height": 900},
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run"],
        )  # fmt: skip
        yield context
        context.close()


@pytest.mark.parametrize("name", ["report", "precision", "demo"])
def test_page_loads_without_errors_and_fits_1280_pixels(pages, browser, name, tmp_path):
    page = browser.new_page()
    errors, requests = [], []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(pages[name].resolve().as_uri(), wait_until="load")
    assert errors == []
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []  # self-contained
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    # nothing wider than the window, not even inside a scrolling wrapper
    widest = page.evaluate(
        "Math.max(0, ...Array.from(document.querySelectorAll('table, img, pre, h1, h2, p'))"
        ".map(e => e.getBoundingClientRect().right))"
    )
    assert widest <= WIDTH
    broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
    assert broken == 0
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    page.close()


def test_details_sections_open(pages, browser):
    """The per-regime detail is collapsed; opening it shows a table that still fits."""
    page = browser.new_page()
    page.goto(pages["report"].resolve().as_uri())
    assert page.evaluate("document.querySelectorAll('details').length") >= 3
    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    titled = page.evaluate("Array.from(document.querySelectorAll('th')).every(th => th.title.length > 0)")
    assert titled  # every column header has a tooltip
    page.close()
