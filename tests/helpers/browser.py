"""A headless Chromium for the playground's browser tests: Playwright (Python) driving the
system's ``chromium`` (Debian package, installed by ``.ci/run``), since no browser can be
downloaded. Tests skip, saying why, when Playwright or the binary is missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    """``$THINKSTREAM_CHROMIUM`` or the first Chromium on ``PATH``."""
    env = os.environ.get("THINKSTREAM_CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def launch_chromium() -> Iterator:
    """A Playwright ``Browser`` (yielded, closed after); skips when it cannot run."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (the test extra)")
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium binary (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path)
        try:
            yield browser
        finally:
            browser.close()
