"""A headless Chromium driven over the DevTools protocol (websocket-client), for tests of the HTML pages this
code writes. `python tests/browser.py PAGE.html OUT.png [--point X,Y]` opens a page, points at a pixel of the
explorer's sample and saves a screenshot (how docs/attention_explorer.png was made)."""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

NAMES = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; `call(method, **params)` sends a DevTools command and returns its result."""

    def __init__(self, binary: str, width: int = 1400, height: int = 900) -> None:
        import websocket

        self.profile = tempfile.mkdtemp(prefix="sagan-chromium-")
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            line = self.proc.stderr.readline()
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            port = int(found.group(1)) if found else None
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"{binary} exited with {self.proc.returncode} before DevTools started")
        if port is None:
            raise RuntimeError(f"{binary} did not start DevTools in 60 s")
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str) -> object:
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression[:80]}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> object:
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout} s for {expression}")

    def open(self, path: Path) -> None:
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("document.readyState === 'complete' && document.body && document.body.dataset.ready !== undefined")

    def point_at(self, element_id: str, x: float, y: float, size: int) -> None:
        """Move the pointer over pixel (x, y) of an element that shows a `size`-pixel image."""
        r = self.evaluate(f"JSON.stringify(document.getElementById('{element_id}').getBoundingClientRect())")
        rect = json.loads(r)
        cx, cy = rect["left"] + (x + 0.5) * rect["width"] / size, rect["top"] + (y + 0.5) * rect["height"] / size
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=cx, y=cy)

    def screenshot(self, out: Path) -> None:
        out.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("page", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--point", default=None, metavar="X,Y", help="the pixel of the sample to point at (default: the centre)")
    a = p.parse_args()
    binary = find_chromium()
    if binary is None:
        raise SystemExit("no Chromium found: apt-get install chromium")
    b = Browser(binary)
    try:
        b.open(a.page)
        size = int(b.evaluate("DATA.imsize"))
        x, y = (int(v) for v in a.point.split(",")) if a.point else (size // 2, size // 2)
        b.point_at("main", x, y, size)
        time.sleep(0.3)
        b.screenshot(a.out)
    finally:
        b.close()
    print(f"wrote {a.out}")
