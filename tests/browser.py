"""Headless Chromium (Debian's `chromium` package) for the tests that look at pages as a person would."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import pytest

from tests.conftest import CI

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "Debian's chromium is not installed (make test installs it where it can: root with apt-get)"
#: on a test that needs Chromium: skipped where it is missing, but under CI=true it runs and fails, saying why
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not CI, reason=SKIP_REASON)
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


def inspect_page(url: str, expression: str, timeout: float = 120) -> dict:
    """Load `url` in headless Chromium, driven over the DevTools protocol on a pipe, with every host but
    127.0.0.1 unresolvable (no network beyond loopback); evaluate `expression` once loaded.

    Returns {"value": the expression's value, "console_errors": [...], "exceptions": [...],
    "failed_requests": [url: error, ...], "requests": [url, ...]}."""
    import fcntl
    import json
    import os
    import select
    import time

    assert CHROMIUM, SKIP_REASON
    cmd_r, cmd_w = os.pipe()  # we write commands, Chromium reads them on its fd 3
    out_r, out_w = os.pipe()  # Chromium writes replies and events on its fd 4

    def child_fds() -> None:
        a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
        os.dup2(a, 3)
        os.dup2(b, 4)

    found: dict = {"console_errors": [], "exceptions": [], "failed_requests": [], "requests": []}
    urls: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"]
            + ["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # DevTools wants its pipe on fds 3 and 4; dup2 after fork is the only way to put it there
            preexec_fn=child_fds,  # noqa: PLW1509
            pass_fds=(3, 4),
        )
        os.close(cmd_r)
        os.close(out_w)
        buffer = b""
        next_id = 0
        deadline = time.monotonic() + timeout

        def read_message() -> dict:
            nonlocal buffer
            while b"\0" not in buffer:
                left = deadline - time.monotonic()
                assert left > 0, f"Chromium did not answer within {timeout} s"
                ready, _, _ = select.select([out_r], [], [], left)
                chunk = os.read(out_r, 1 << 16) if ready else b""
                assert chunk or not ready, "Chromium closed the DevTools pipe"
                buffer += chunk
            raw, buffer = buffer.split(b"\0", 1)
            message = json.loads(raw)
            params = message.get("params", {})
            method = message.get("method")
            if method == "Network.requestWillBeSent":
                urls[params["requestId"]] = params["request"]["url"]
                found["requests"].append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                found["failed_requests"].append(f"{urls.get(params['requestId'])}: {params.get('errorText')}")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                found["failed_requests"].append(f"{params['response']['url']}: HTTP {params['response']['status']}")
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                found["console_errors"].append(text)
            elif method == "Runtime.exceptionThrown":
                found["exceptions"].append(params["exceptionDetails"].get("exception", {}).get("description", ""))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found["console_errors"].append(f"{params['entry'].get('url', '')}: {params['entry']['text']}")
            return message

        def call(method: str, params: dict | None = None, session: str | None = None) -> dict:
            nonlocal next_id
            next_id += 1
            message = {"id": next_id, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            os.write(cmd_w, json.dumps(message).encode() + b"\0")
            while True:
                reply = read_message()
                if reply.get("id") == next_id:
                    assert "error" not in reply, f"{method}: {reply['error']}"
                    return reply["result"]

        try:
            target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Network", "Log"):
                call(f"{domain}.enable", session=session)
            call("Page.navigate", {"url": url}, session=session)
            while read_message().get("method") != "Page.loadEventFired":
                pass
            result = call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
            found["value"] = result["result"].get("value")
            call("Browser.close")
        finally:
            os.close(cmd_w)
            os.close(out_r)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return found


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the browser console (script errors included), from a run with
    `--enable-logging=stderr --v=0`; Chromium's own log lines (D-Bus, GPU) are not the page's."""
    return re.findall(r":CONSOLE[^\]]*\] (.*)", stderr)
