"""Headless chromium driven over the DevTools protocol on a pipe: open pages, read them, screenshot.

Chromium's one-shot ``--dump-dom``/``--screenshot`` cannot scroll or wait for a condition; the
protocol over ``--remote-debugging-pipe`` can, with the standard library only (no WebDriver, no
websocket client). Protocol: https://chromedevtools.github.io/devtools-protocol/ (Target, Page,
Runtime, Emulation domains).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

WINDOW = (1400, 1000)  # screenshot size, pixels
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-pipe")  # --user-data-dir: a fresh one per browser
# For each "key value" line: scroll the first found into view, then say where each one is.
_SHOW_LINES_JS = """((lines) => {
  const ps = [...document.querySelectorAll("p")];
  const els = lines.map(t => ps.find(p => p.textContent.trim() === t) || null);
  const first = ps.find(p => els.includes(p));
  if (first) { first.scrollIntoView({block: "start"}); window.scrollTo(0, 0); }
  return els.map(e => {
    if (!e) return "missing";
    let box = e.parentElement;
    while (box && !(/auto|scroll/.test(getComputedStyle(box).overflowY) && box.scrollHeight > box.clientHeight))
      box = box.parentElement;  // the scroll container that clips it
    const r = e.getBoundingClientRect(), b = box ? box.getBoundingClientRect() : {top: 0, bottom: innerHeight};
    return r.top >= Math.max(b.top, 0) - 1 && r.bottom <= Math.min(b.bottom, innerHeight) + 1 ? "visible" : "hidden";
  });
})"""


def find_chromium() -> str | None:
    """Path of the chromium executable, or None where it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class HeadlessChromium:
    """Headless chromium driven over the DevTools protocol on a pipe (fds 3 and 4 of the browser)."""

    def __init__(self, executable: str, tmp: Path, timeout_s: float) -> None:
        """Start the browser, its profile and log under ``tmp``; each reply is awaited ``timeout_s`` at most."""
        self.timeout_s = timeout_s
        self.log = tmp / "chromium.log"
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()
        # bash puts the two pipe ends on the fds the protocol expects (no preexec_fn: not thread-safe;
        # not sh: dash takes single-digit fds only). Left to right, so fd 3 is copied before 4 is replaced.
        redirect = f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}'
        args = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", "about:blank"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([shutil.which("bash") or "/bin/bash", "-c", redirect, executable, *args],
                                         pass_fds=(to_browser, from_browser),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._id = 0
        self.session = ""

    def __enter__(self) -> HeadlessChromium:
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1],
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.session = ""
            self.call("Browser.close")
        kill_group(self.proc)
        os.close(self._commands)
        os.close(self._replies)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one protocol command (to the page once attached) and return its result."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        try:
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise RuntimeError(f"chromium exited before {method}: {self._log_tail()}") from None
        deadline = time.monotonic() + self.timeout_s
        while True:  # replies and events come NUL-separated; events are skipped
            while b"\0" not in self._buffer:
                ready, _, _ = select.select([self._replies], [], [], max(deadline - time.monotonic(), 0))
                if not ready:
                    raise RuntimeError(f"chromium gave no reply to {method} within {self.timeout_s:.0f} s")
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited before it answered {method}: {self._log_tail()}")
                self._buffer += chunk
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"chromium {method}: {reply['error']}")
                return dict(reply["result"])

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression evaluated in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        """Navigate the page; returns before it has loaded (wait with `wait_for_text`)."""
        self.call("Page.navigate", url=url)

    def wait_for_text(self, text: str, what: str) -> None:
        """Wait until the page's visible text contains ``text`` (the app has fetched and rendered)."""
        deadline = time.monotonic() + self.timeout_s
        page = ""
        while time.monotonic() < deadline:
            page = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if text in page:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{what} did not show {text!r} within {self.timeout_s:.0f} s; "
                           f"page text: {' '.join(page.split())[:300]!r}")

    def show_lines(self, lines: list[str]) -> list[str]:
        """Find each of ``lines`` (the whole text of a ``<p>``), scroll the first into view, say where each is.

        Returns:
            per line, "visible" (inside the viewport and its scroll box), "hidden" or "missing".
        """
        return list(self.evaluate(f"{_SHOW_LINES_JS}({json.dumps(lines)})"))

    def screenshot(self) -> bytes:
        """PNG of the viewport."""
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-1000:]


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """End ``proc`` and its process group (chromium's helpers outlive the wrapper script); wait for it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group ignored SIGTERM
    proc.wait(timeout=5)
