"""A headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages
separated by NUL on fds 3 and 4), with the standard library only: open a page, run script in it, take a
screenshot, catch downloads and page errors.

Chromium comes from the system (Debian: `apt-get install chromium`); `.ci/run` installs it and sets
GATEDSAE_REQUIRE_BROWSER=1, so CI fails instead of skipping when it is missing.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--no-default-browser-check", "--remote-debugging-pipe"]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("GATEDSAE_REQUIRE_BROWSER") == "1":
        pytest.fail("no Chromium on PATH; install it (Debian: apt-get install -y chromium)")
    pytest.skip("no Chromium on PATH (Debian: apt-get install -y chromium); CI installs it")


def _high_fd(fd: int) -> int:
    """A copy of `fd` numbered 10 or above (so placing the child's ends on 3 and 4 cannot clobber them)."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return copy


class Chromium:
    def __init__(self, profile: Path, timeout: float = 60.0):
        commands_read, commands_write = map(_high_fd, os.pipe())
        replies_read, replies_write = map(_high_fd, os.pipe())

        def child_fds():  # the browser reads commands on fd 3 and writes replies on fd 4
            os.dup2(commands_read, 3)
            os.dup2(replies_write, 4)

        self.process = subprocess.Popen([chromium_binary(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_read)
        os.close(replies_write)
        self.write, self.read, self.timeout = commands_write, replies_read, timeout
        self.buffer, self.events, self.next_id = b"", [], 0
        self.session = None

    # --- protocol ---------------------------------------------------------------------------------------

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            remaining = deadline - time.time()
            if remaining <= 0 or not select.select([self.read], [], [], remaining)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.write, json.dumps(message).encode() + b"\0")
        deadline = time.time() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, predicate=lambda params: True) -> dict:
        deadline = time.time() + self.timeout
        while True:
            for event in self.events:
                if event.get("method") == method and predicate(event.get("params", {})):
                    self.events.remove(event)
                    return event["params"]
            self.events.append(self._message(deadline))

    # --- what the tests do ------------------------------------------------------------------------------

    def open(self, url: str, width: int = 1100, height: int = 900) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page.enable", "Runtime.enable"):
            self.send(domain)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def page_errors(self) -> list[dict]:
        """Uncaught exceptions and console errors seen so far."""
        return [e["params"] for e in self.events if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")]

    def screenshot(self, path: Path, full_page_height: int | None = None) -> Path:
        if full_page_height:
            self.send("Emulation.setDeviceMetricsOverride", {"width": 1100, "height": full_page_height,
                                                             "deviceScaleFactor": 1, "mobile": False})
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def allow_downloads(self, directory: Path) -> None:
        self.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(directory),
                                                  "eventsEnabled": True}, session=False)

    def wait_for_download(self) -> None:
        self.wait_for("Browser.downloadProgress", lambda params: params.get("state") == "completed")

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.write)
        os.close(self.read)
