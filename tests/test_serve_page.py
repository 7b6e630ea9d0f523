"""The service's page in headless Chromium: upload an image through the file input, the overlay, the top-k and
the box appear; a bad target shows the server's one-line reason. Chromium is driven over the DevTools protocol on
``--remote-debugging-pipe`` (JSON messages separated by NUL bytes on fds 3/4): no driver package needed.

Skips where /usr/bin/chromium is absent (Debian: ``apt-get install -y chromium``; .ci/run installs it)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import SAMPLES
from tests.test_serve import MODEL, Server

CHROMIUM = Path(os.environ.get("ONNXFIX_CHROMIUM", "/usr/bin/chromium"))
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install -y chromium)")


class Browser:
    """Headless Chromium and one page, over the DevTools pipe."""

    def __init__(self, profile: Path):
        to_child_r, self._w = os.pipe()  # we write commands; Chromium reads fd 3
        self._r, from_child_w = os.pipe()  # Chromium writes fd 4; we read

        def fds() -> None:  # in the child: the pipe ends onto fds 3 and 4
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def _read(self, timeout: float) -> dict:
        import select

        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._r], [], [], timeout)
            if not ready:
                raise TimeoutError("no message from Chromium")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(max(0.1, deadline - time.monotonic()))
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True},
                      session=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"].get("text"))
        return r["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.js(expr)
            if v:
                return v
            time.sleep(0.2)
        raise TimeoutError(f"{expr} stayed false")

    def upload(self, selector: str, path: Path) -> None:
        root = self.call("DOM.getDocument", {}, session=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector}, session=True)["nodeId"]
        self.call("DOM.setFileInputFiles", {"files": [str(path)], "nodeId": node}, session=True)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - it may be gone already
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._w)
        os.close(self._r)


def test_page_upload_shows_overlay_topk_and_box(tmp_path):
    pytest.importorskip("httpx")
    pytest.importorskip("starlette")
    s = Server(tmp_path, MODEL, "--methods", "gradcam,saliency,fixations")
    b = Browser(tmp_path / "profile")
    try:
        b.call("Page.navigate", {"url": s.url + "/"}, session=True)
        b.wait_for("document.readyState === 'complete' && document.querySelectorAll('#method option').length === 3")
        assert b.js("document.querySelector('#method').value") == "gradcam"
        b.upload("#file", SAMPLES / "resnet_shapes.png")
        b.wait_for("document.body.dataset.state === 'done'")
        assert b.js("document.querySelector('#overlay').naturalWidth") > 0
        assert b.js("getComputedStyle(document.querySelector('#overlay')).display") == "block"
        assert b.js("document.querySelectorAll('#top tbody tr').length") == 5
        assert b.js("document.querySelector('#top tr.target td:nth-child(2)').textContent") == "star (4)"
        assert b.js("document.querySelector('#box').textContent").startswith("[")
        assert "gradcam: star" in b.js("document.querySelector('#status').textContent")
        # another method and a named target: the page asks again
        b.js("document.querySelector('#target').value = 'circle';"
             "document.querySelector('#method').value = 'fixations';"
             "document.querySelector('#method').dispatchEvent(new Event('change')); 1")
        b.wait_for("document.querySelector('#status').textContent.startsWith('fixations: circle')")
        b.wait_for("document.body.dataset.state === 'done'")
        # a bad target: the server's one-line reason on the page, no overlay change needed
        b.js("document.querySelector('#target').value = 'zebra';"
             "document.querySelector('#target').dispatchEvent(new Event('change')); 1")
        b.wait_for("document.body.dataset.state === 'error'")
        assert "zebra" in b.js("document.querySelector('#error').textContent")
    finally:
        b.close()
        s.stop()
