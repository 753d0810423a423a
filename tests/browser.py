"""Headless Chromium for the dashboard's tests: Debian's ``chromium`` driven by Playwright.

Playwright never fetches a browser of its own here: it is pointed at the system's binary.
Without chromium the browser tests skip, and in CI (``CI`` set) they fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

#: The flags that keep Chromium quiet and offline: no sandbox (containers), no GPU, no
#: first-run pages, and nothing fetched in the background.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def chromium_binary() -> str:
    """The system's chromium; skip without it (fail in CI)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def screenshot_dir(fallback: Path) -> Path:
    """Where the tests put their screenshots: ``JOBPOOL_SCREENSHOTS`` (``make screenshots``
    points it at docs/), else a temp directory: every run takes them, only a deliberate
    run replaces the README's."""
    chosen = os.environ.get("JOBPOOL_SCREENSHOTS")
    path = Path(chosen) if chosen else fallback
    path.mkdir(parents=True, exist_ok=True)
    return path
