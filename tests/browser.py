"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for tests
that look at pages the way people do: load, type, click, wait, screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

from tests.conftest import free_port, stop_process_tree, wait_for


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with one page; ``evaluate`` runs JavaScript in it."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000):
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium is not installed: run infra/local/install-services.sh"
                               " (Debian's chromium package)")
        self.port = free_port()
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             f"--remote-debugging-port={self.port}", "--remote-allow-origins=*",
             f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        wait_for(self._page_socket, 30, "chromium's DevTools endpoint", every=0.2)
        self.socket = connect(self._page_socket(), max_size=64 * 2**20)
        self._ids = itertools.count(1)

    def _page_socket(self) -> str | None:
        try:
            pages = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
        except httpx.HTTPError:
            return None
        return next((p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"), None)

    def call(self, method: str, **params) -> dict:
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_until("document.readyState === 'complete'", f"{url} to load")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, what: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while not self.evaluate(f"Boolean({expression})"):
            if time.time() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            stop_process_tree(self.process)
