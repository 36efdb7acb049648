"""Open a local HTML file in Debian's headless Chromium and say what happened there.

The driver is the Chrome DevTools Protocol over `--remote-debugging-pipe` (JSON messages, each
ended by a NUL byte, on file descriptors 3 and 4 of the browser), spoken with the standard
library alone. Chosen over the alternatives because it sees what the tests must check and they
do not: `--dump-dom`/`--screenshot` on the command line give neither network requests nor sizes
of elements and mix the page's console with Chromium's own log; Selenium with chromium-driver
gives sizes but neither requests nor dialogs without the same protocol underneath, plus two
packages to pin; Playwright would download its own browser. Here every request the page makes
(Network.requestWillBeSent), every console message, exception and log entry, any alert dialog,
the load time, the DOM's answers to one expression and a full-page screenshot come from one
session of the real browser.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_S = 30.0  # one page of ours loads in well under a second; a hung browser fails the test
FLAGS = [
    "--headless",
    "--no-sandbox",  # root (CI) cannot use the setuid sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # any name lookup fails: a request cannot leave
    "--remote-debugging-pipe",
]


@dataclass
class Visit:
    url: str
    load_ms: float  # Page.navigate until the load event, measured here
    requests: list[str] = field(default_factory=list)  # every URL the page asked for but itself
    console: list[str] = field(default_factory=list)  # console errors, exceptions, error logs
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt messages
    result: object = None  # the value of the expression evaluated after load
    screenshot: Path | None = None


class _Pipe:
    """The two pipes of --remote-debugging-pipe: commands out, NUL-ended JSON messages in."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int):
        self.proc, self.out, self.inp = proc, to_browser, from_browser
        self.buffer, self.events, self.next_id = b"", [], 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read()
            if event.get("method") == method:
                return event
            self.events.append(event)
            if event.get("method") == "Page.javascriptDialogOpening":  # it blocks the page
                self.send("Page.handleJavaScriptDialog", {"accept": True}, event.get("sessionId"))

    def _read(self) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.inp], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"chromium said nothing for {TIMEOUT_S} s")
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium ended (exit {self.proc.poll()})")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)


class Browser:
    """One headless Chromium for several visits (each page in a fresh tab): starting the browser
    is most of the cost of a visit."""

    def __enter__(self) -> Browser:
        self._profile = tempfile.TemporaryDirectory(prefix="bnpipe-chromium-")
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()

        def wire():  # in the child: the browser reads fd 3 and writes fd 4
            r, w = os.dup(to_r), os.dup(from_w)  # above 4: neither is overwritten by the other
            os.dup2(r, 3)  # dup2 clears close-on-exec: these two reach the browser
            os.dup2(w, 4)

        self._proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self._profile.name}", "--window-size=1100,900"],
            preexec_fn=wire,
            close_fds=False,  # Python's own fds are close-on-exec (PEP 446); 3 and 4 must stay
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_r)
        os.close(from_w)
        self._fds = (to_w, from_r)
        self.pipe = _Pipe(self._proc, to_w, from_r)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.pipe.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in self._fds:
            os.close(fd)
        self._profile.cleanup()

    def visit(
        self, page: Path, expression: str, screenshot: Path | None = None, width: int = 1100
    ) -> Visit:
        """Load `page` (a local file) in a new tab; evaluate `expression` (its value must be
        JSON) once the load event fired; write a full-page PNG to `screenshot` if given."""
        url = Path(page).resolve().as_uri()
        return _session(self.pipe, url, expression, screenshot, width)


def _session(pipe: _Pipe, url: str, expression: str, screenshot: Path | None, width: int):
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    pipe.events.clear()  # about:blank's own events, and those of earlier visits
    t0 = time.perf_counter()
    pipe.send("Page.navigate", {"url": url}, session=session)
    pipe.wait_for("Page.loadEventFired")
    load_ms = 1000 * (time.perf_counter() - t0)
    value = pipe.send(
        "Runtime.evaluate",
        {"expression": expression, "returnByValue": True, "awaitPromise": True},
        session=session,
    )
    result = Visit(url, load_ms, result=value.get("result", {}).get("value"))
    if screenshot is not None:
        shot = pipe.send(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True},
            session=session,
        )
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        result.screenshot = screenshot
    _collect(pipe.events, url, result)
    pipe.send("Target.closeTarget", {"targetId": target})
    return result


def _collect(events: list[dict], url: str, into: Visit) -> None:
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent" and params["request"]["url"] != url:
            into.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            into.console.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            into.console.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            into.console.append(params["entry"].get("text", ""))
        elif method == "Page.javascriptDialogOpening":
            into.dialogs.append(params.get("message", ""))
