"""Cost of an explanation shipped inside the model: ``onnxfix export``'s file vs the source model's bare forward.

Both run on plain ONNX Runtime (default session options, the same thread count), one process, one model at a
time; each row is the median of ``--repeat`` runs after warm-up, as a multiple of the source's forward. Targets
(issue 13): Grad-CAM ≤ 1.6× a forward (it differentiates only the tail), saliency ≤ 3.5×.

    python tools/bench_export.py [MODEL ...] [--batch 1] [--repeat 30] [--threads N] [--json]
    python tools/bench_export.py --serve [MODEL] [--requests 64] [--clients 8] [--methods gradcam]

``--serve``: requests/s of ``onnxfix serve`` (a real uvicorn server on 127.0.0.1, httpx clients) with batching on
(default window and batch size) and off (``--no-batching``), same model, same requests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [ROOT / ".cache/real_models/models/efficientnet_lite0.onnx", ROOT / "sample_models/resnet_shapes.onnx"]
TARGETS = {"gradcam": 1.6, "saliency": 3.5}


def _session(data: bytes, threads: int | None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _time(sess: ort.InferenceSession, feeds: dict, outputs: list[str] | None, repeat: int) -> float:
    for _ in range(3):
        sess.run(outputs, feeds)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(outputs, feeds)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench(model: Path, methods: list[str], batch: int, repeat: int, threads: int | None) -> list[dict]:
    import onnxfix
    from onnxfix.export import EXPORTABLE, export_model

    ex = onnxfix.Explainer(str(model))
    src = _session(model.read_bytes(), threads)
    inp = src.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    rows = []
    for m in methods or list(EXPORTABLE):
        try:
            info = export_model(ex, None, method=m)
        except onnxfix.OnnxfixError as exc:
            rows.append({"model": model.name, "method": m, "skipped": str(exc)})
            continue
        b = batch if info.dynamic_batch or shape[0] != 1 else 1
        x = np.random.default_rng(0).standard_normal([b] + shape[1:]).astype(np.float32)
        exp = _session(info.model.SerializeToString(), threads)
        # interleave to share any drift of the machine between the two
        t_fwd, t_exp = [], []
        for _ in range(3):
            t_fwd.append(_time(src, {inp.name: x}, None, max(3, repeat // 3)))
            t_exp.append(_time(exp, {inp.name: x}, None, max(3, repeat // 3)))
        f, e = statistics.median(t_fwd), statistics.median(t_exp)
        rows.append({"model": model.name, "method": m, "batch": b, "forward_ms": round(f * 1e3, 3),
                     "exported_ms": round(e * 1e3, 3), "x_forward": round(e / f, 2),
                     "target": TARGETS.get(m)})
    return rows


def bench_serve(model: Path, method: str, requests: int, clients: int) -> list[dict]:
    import io
    import os
    import socket
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from PIL import Image

    im = Image.open(ROOT / "sample_models/resnet_shapes.png").convert("RGB").resize((320, 240))
    bodies = []
    for k in range(8):
        buf = io.BytesIO()
        im.rotate(45 * k).save(buf, format="JPEG", quality=90)
        bodies.append(buf.getvalue())
    rows = []
    for label, flags in (("batching on", []), ("batching off", ["--no-batching"])):
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "onnxfix", "serve", str(model), "--methods", method,
                                 "--port", str(port), *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            clients_ = [httpx.Client(base_url=url, timeout=300) for _ in range(clients)]

            def one(i: int, clients_: list = clients_) -> int:
                return clients_[i % clients].post("/explain", params={"method": method},
                                                  content=bodies[i % len(bodies)]).status_code

            with ThreadPoolExecutor(clients) as pool:  # warm-up: sessions, batch-dynamic copy
                list(pool.map(one, range(2 * clients)))
                t0 = time.perf_counter()
                codes = list(pool.map(one, range(requests)))
                dt = time.perf_counter() - t0
            h = httpx.get(url + "/health").json()
            for c in clients_:
                c.close()
            rows.append({"model": model.name, "method": method, "mode": label, "requests": requests,
                         "clients": clients, "ok": codes.count(200), "seconds": round(dt, 2),
                         "requests_per_s": round(requests / dt, 2),
                         "mean_batch": round(h["served"] / max(h["batches"], 1), 2)})
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", type=Path, default=None)
    p.add_argument("--methods", default="", help="comma-separated (default: every exportable method)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve", action="store_true", help="measure onnxfix serve's requests/s, batching on vs off")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--clients", type=int, default=8)
    a = p.parse_args(argv)
    if a.serve:
        model = (a.models or [DEFAULT[0]])[0]
        rows = bench_serve(model, (a.methods or "gradcam").split(",")[0], a.requests, a.clients)
        if a.json:
            print(json.dumps(rows, indent=2))
        for r in rows:
            print(f"{r['model']} {r['method']} {r['mode']:<13} {r['requests']} requests, {r['clients']} clients: "
                  f"{r['requests_per_s']:.2f} req/s (mean batch {r['mean_batch']}, {r['ok']} ok)")
        return 0
    models = a.models or [m for m in DEFAULT if m.exists()]
    methods = [m for m in a.methods.split(",") if m]
    rows = []
    for model in models:
        rows += bench(model, methods, a.batch, a.repeat, a.threads)
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<24} {'method':<16} {'batch':>5} {'forward ms':>11} {'exported ms':>12} {'× forward':>10}  target")
    for r in rows:
        if "skipped" in r:
            print(f"{r['model']:<24} {r['method']:<16} skipped: {r['skipped'][:70]}")
            continue
        tgt = f"≤ {r['target']}" if r["target"] else ""
        ok = "" if not r["target"] else ("  ok" if r["x_forward"] <= r["target"] else "  MISSED")
        print(f"{r['model']:<24} {r['method']:<16} {r['batch']:>5} {r['forward_ms']:>11.2f} {r['exported_ms']:>12.2f} "
              f"{r['x_forward']:>10.2f}  {tgt}{ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
