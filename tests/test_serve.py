"""``onnxfix serve``: a real uvicorn server on 127.0.0.1 (a subprocess) and a real HTTP client (httpx).

50 requests from 8 concurrent clients are all answered as ``Explainer.explain`` answers them in-process;
oversized, undecodable and otherwise bad uploads get a 4xx with a one-line reason; the server stays healthy."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, SAMPLES

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

MODEL = SAMPLES / "resnet_shapes.onnx"
METHODS = ["gradcam", "saliency", "cam", "fixations"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m onnxfix serve ...`` on a free loopback port; stderr captured to a file."""

    def __init__(self, tmp: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err_path = tmp / f"serve-{self.port}.err"
        self.out_path = tmp / f"serve-{self.port}.out"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.err_path, "w") as err, open(self.out_path, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "onnxfix", "serve", *map(str, args),
                                          "--port", str(self.port)], stdout=out, stderr=err, cwd=ROOT, env=env)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.err_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not come up: " + self.err_path.read_text()[-2000:])
            time.sleep(0.3)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # --provider cuda: where CUDA cannot load (this CPU build) one clear line, then it runs on the CPU
    s = Server(tmp_path_factory.mktemp("serve"), MODEL, "--methods", ",".join(METHODS), "--max-upload-mb", "1",
               "--max-image-pixels", "4000000", "--provider", "cuda")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def explainer():
    import onnxfix

    return onnxfix.Explainer(str(MODEL))


def _images() -> list[bytes]:
    base = Image.open(SAMPLES / "resnet_shapes.png").convert("RGB")
    ims = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT), base.rotate(90), base.resize((96, 80))]
    for name in ("mobile_shapes.png", "inception_shapes.png"):
        ims.append(Image.open(SAMPLES / name).convert("RGB"))
    out = []
    for i, im in enumerate(ims):
        buf = io.BytesIO()
        im.save(buf, format="PNG" if i % 2 == 0 else "JPEG")
        out.append(buf.getvalue())
    return out


def _heat(d: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(d["heatmap_png_base64"]))), np.int16)


def test_cuda_fallback_is_one_line(server):
    from onnxfix.serve.cli import cuda_status

    why = cuda_status()
    if why is None:
        pytest.skip("CUDA loads here; there is no fallback to report")
    lines = [ln for ln in server.stderr.splitlines() if "CUDA" in ln]
    assert len(lines) == 1 and "running on the CPU" in lines[0], server.stderr


def test_health_methods_page(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == "resnet_shapes.onnx"
    m = httpx.get(server.url + "/methods").json()
    assert [x["name"] for x in m["methods"]] == METHODS and m["default"] == "gradcam"
    assert m["labels"] == ["circle", "square", "triangle", "cross", "star"]
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<script" in page.text and "http" not in page.text.split("<script")[1].split("fetch(")[0]


def test_50_requests_from_8_clients(server, explainer):
    images = _images()
    jobs = []
    for i in range(50):
        method = METHODS[i % len(METHODS)]
        target = [None, 2, "star", None, 0][i % 5]
        jobs.append((i, images[i % len(images)], method, target, i % 3 == 0))
    before = httpx.get(server.url + "/health").json()

    def call(job):
        i, data, method, target, multipart = job
        params = {"method": method, **({"target": str(target)} if target is not None else {})}
        with httpx.Client(base_url=server.url, timeout=120) as c:
            if multipart:
                r = c.post("/explain", params=params, files={"image": (f"img{i}.png", data, "image/png")})
            else:
                r = c.post("/explain", params=params, content=data,
                           headers={"content-type": "application/octet-stream"})
        return job, r

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, jobs))
    assert len(answers) == 50
    for (i, data, method, target, _), r in answers:
        assert r.status_code == 200, (i, r.text[:300])
        d = r.json()
        e = explainer.explain(Image.open(io.BytesIO(data)), method=method, target=target)
        assert d["method"] == method and d["target"]["index"] == e.target, i
        assert [t["index"] for t in d["top"]] == [t["index"] for t in e.top]
        assert np.allclose([t["score"] for t in d["top"]], [t["score"] for t in e.top], rtol=1e-5)
        heat = _heat(d)
        assert heat.shape == e.heatmap.shape and d["image_size"] == [heat.shape[1], heat.shape[0]]
        assert np.abs(heat - np.round(e.heatmap * 255)).max() <= 1, i
        assert (d["box"] is None) == (e.box is None)
        if method == "fixations":
            assert d["points"] is not None and len(d["points"]) == len(e.points)
        assert set(d) >= {"image", "model", "method", "target", "top", "heatmap_png", "points", "box", "seconds"}
    after = httpx.get(server.url + "/health").json()
    assert after["served"] - before["served"] == 50
    assert after["batches"] - before["batches"] < 50  # several requests shared an explain call
    assert "Traceback" not in server.stderr


def test_bad_uploads_get_4xx_and_server_stays_healthy(server):
    c = httpx.Client(base_url=server.url, timeout=60)
    png = _images()[0]
    big = os.urandom(2 * 1024 * 1024)
    cases = {
        "oversized (Content-Length)": c.post("/explain", content=big),
        "oversized (chunked)": c.post("/explain", content=iter([big[i:i + 65536] for i in range(0, len(big), 65536)])),
        "oversized multipart": c.post("/explain", files={"image": ("x.png", big, "image/png")}),
        "undecodable": c.post("/explain", content=b"this is not an image" * 10),
        "truncated png": c.post("/explain", content=png[: len(png) // 2]),
        "empty": c.post("/explain", content=b""),
        "unknown method": c.post("/explain", params={"method": "nope"}, content=png),
        "method not served": c.post("/explain", params={"method": "occlusion"}, content=png),
        "bad target": c.post("/explain", params={"target": "zebra"}, content=png),
        "target out of range": c.post("/explain", params={"target": "99"}, content=png),
        "bad top_k": c.post("/explain", params={"top_k": "many"}, content=png),
        "multipart without a file": c.post("/explain", data={"note": "hi"}, files={"a": ("a.txt", b"x"),
                                                                                    "b": ("b.txt", b"y")}),
        "pixel bomb": c.post("/explain", content=_bomb()),
        "GET /explain": c.get("/explain"),
    }
    for what, r in cases.items():
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:200])
        body = r.json()
        assert "\n" not in body["error"] and "Traceback" not in body["error"], what
    assert cases["oversized (Content-Length)"].status_code == 413
    assert cases["oversized (chunked)"].status_code == 413
    assert cases["undecodable"].status_code == 400 and "cannot decode" in cases["undecodable"].json()["error"]
    assert "zebra" in cases["bad target"].json()["error"]
    assert "4000000" in cases["pixel bomb"].json()["error"]
    assert c.get("/health").json()["status"] == "ok"
    ok = c.post("/explain", params={"method": "cam"}, content=png)
    assert ok.status_code == 200 and ok.json()["target"]["label"]
    assert "Traceback" not in server.stderr
    c.close()


def _bomb() -> bytes:
    """A valid small PNG whose header claims 5000×5000 pixels (decoding would need 75 MB)."""
    im = Image.new("L", (5000, 5000))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_batching_off_answers_the_same(tmp_path, explainer):
    s = Server(tmp_path, MODEL, "--methods", "gradcam", "--no-batching")
    try:
        data = _images()[1]
        with ThreadPoolExecutor(4) as pool:
            rs = list(pool.map(lambda _: httpx.post(s.url + "/explain", content=data, timeout=60), range(8)))
        assert all(r.status_code == 200 for r in rs)
        h = httpx.get(s.url + "/health").json()
        assert h["batches"] == h["served"] == 8 and h["max_batch"] == 1
        e = explainer.explain(Image.open(io.BytesIO(data)), method="gradcam")
        assert all(r.json()["target"]["index"] == e.target for r in rs)
    finally:
        s.stop()


def test_serve_refuses_bad_options():
    from tests.conftest import run_cli

    p = run_cli("serve", MODEL, "--methods", "gradcam,nope", "--port", str(free_port()))
    assert p.returncode == 2 and "nope" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("serve", SAMPLES / "digits_cnn.onnx", "--methods", "cam", "--port", str(free_port()))
    assert p.returncode == 3 and "cam cannot explain" in p.stderr
