"""Headless Chromium (Debian's `chromium` package) for the tests that look at pages as a person would."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "Debian's chromium is not installed (make test installs it where it can: root with apt-get)"
# without the background-networking flags Chromium keeps trying to reach Google on this closed network
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def run_chromium(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """Run Chromium once with a fresh profile; `args` are e.g. --dump-dom URL or --screenshot=F URL."""
    assert CHROMIUM, SKIP_REASON
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the browser console (script errors included), from a run with
    `--enable-logging=stderr --v=0`; Chromium's own log lines (D-Bus, GPU) are not the page's."""
    return re.findall(r":CONSOLE[^\]]*\] (.*)", stderr)
