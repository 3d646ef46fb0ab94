"""Headless Chromium for pages a person looks at: load, console errors, DOM, screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Chromium with --enable-logging=stderr prints each console message (console.log or
# .error, an uncaught exception) as '...:INFO:CONSOLE:1] "text", source: url (1)', at
# level INFO whatever the message's level: so every console message counts.
_CONSOLE_RE = re.compile(r":CONSOLE[:(]\d+\)?\] \"(.*)\", source")
_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0")


@dataclass
class PageLoad:
    dom: str
    console_messages: list[str]
    log: str


def chromium() -> str:
    """The Chromium binary (``run_tests.sh`` installs the Debian package)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is not installed (run_tests.sh installs it with apt-get)"
    return path


def load_page(page: Path, screenshot: Path | None = None, timeout: float = 90) -> PageLoad:
    """Loads a local page; returns its DOM after load and every console message.

    Args:
        page: The HTML file.
        screenshot: Where to save a PNG of the page (1300 px wide), if wanted.
        timeout: Seconds before the browser is given up on (a failure).
    """
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [chromium(), *_FLAGS, "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert dom.returncode == 0, f"chromium failed ({dom.returncode}):\n{dom.stderr[-3000:]}"
    errors = _CONSOLE_RE.findall(dom.stderr)
    if screenshot is not None:
        shot = subprocess.run(
            [chromium(), *_FLAGS, "--window-size=1300,2400", f"--screenshot={screenshot}", url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-3000:]
    return PageLoad(dom.stdout, errors, dom.stderr)
