"""Batch throughput and memory: ``onnxfix batch`` on EfficientNet-Lite0, one run, one table.

    python tools/bench_batch.py [--images 500] [--workers 1,2] [--dask-workers 2] [--methods gradcam,fixations]
                                [--rss 500,2000] [--batch-size B] [--no-peer] [--no-dask] [--no-loop]

For each method (gradcam, fixations), images/s over ``--images`` generated JPEG photos (skimage's photos, randomly
cropped, flipped and tinted, 320×240..640×480) of:

* ``loop``: ``Explainer.explain(path)`` one image at a time (ORT with all cores), the pre-batch way;
* ``local N``: ``onnxfix.batch.run(..., workers=N)`` for each N of ``--workers`` (N processes, cores/N threads each);
* ``dask N``: ``onnxfix.batch.run(..., engine="dask", workers=N)`` on a LocalCluster of N processes started by run;
* ``peer``: pytorch-grad-cam 1.5.7 ``GradCAM`` on the PyTorch EfficientNet-Lite0 with the same weights (the head's
  ReLU6 as target layer, as onnxfix's default layer), batches of 16, top class, ``torch.set_num_threads(cores)``;
  the images are decoded and preprocessed by onnxfix's ``prepare`` inside the timed loop, as the others do. It
  runs on the first ``--peer-images`` (default 64) only: its backward computes every weight's gradient too (the
  module's parameters require grad), which makes it slow on CPUs; the rate is what is compared.

Each batch run writes a fresh table; its time runs from the first chunk handed out to the last part written
(worker start-up included; the driver's model load and option check before it excluded). Scaling efficiency =
(images/s with N workers) / (N × images/s with 1 worker). Peak RSS: the whole process tree (driver + workers) of
``onnxfix batch --methods gradcam,fixations`` (local, 1 worker) over ``--rss`` image counts, sampled every 50 ms —
flat memory means the same peak at 500 and 2000 images. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = ROOT / ".cache" / "real_models" / "models" / "efficientnet_lite0.onnx"


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs from skimage's colour photos: random crop, flip, tint and size (320×240 .. 640×480)."""
    import skimage.data as sd
    from PIL import Image

    photos = [sd.coffee(), sd.chelsea(), sd.astronaut(), sd.rocket(), sd.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        a = photos[i % len(photos)]
        h, w = a.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        c = a[y:y + ch, x:x + cw].astype(np.float32) * rng.uniform(0.8, 1.2, size=3)
        if rng.random() < 0.5:
            c = c[:, ::-1]
        size = (int(rng.integers(320, 641)), int(rng.integers(240, 481)))
        im = Image.fromarray(c.clip(0, 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
        p = folder / f"photo{i:05d}.jpg"
        im.save(p, quality=90)
        out.append(p)
    return out


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def bench_loop(paths: list[Path], method: str) -> float:
    import onnxfix

    ex = onnxfix.Explainer(MODEL, threads=cores())
    ex.explain(str(paths[0]), method=method)  # warm-up: sessions, numba
    t = time.perf_counter()
    for p in paths:
        ex.explain(str(p), method=method)
    return len(paths) / (time.perf_counter() - t)


def bench_run(paths_dir: Path, method: str, engine: str, workers: int, batch_size: int | None) -> dict:
    from onnxfix.batch import run

    out = Path(tempfile.mkdtemp(prefix="onnxfix-bench-"))
    try:
        t = time.perf_counter()
        res = run(MODEL, [str(paths_dir)], method, out, engine=engine, workers=workers, batch_size=batch_size,
                  progress=False)
        wall = time.perf_counter() - t
        assert res["errors"] == 0 and res["rows"] == res["explained"], res
        return {"images_per_s": res["images_per_s"], "wall_s": wall, "batch_size": res["batch_size"]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def torch_net():
    """The PyTorch EfficientNet-Lite0 of tools/bench.py, with the head's ReLU6 as its own module (``_head_act``):
    the shared ``_swish`` runs for the stem too, and pytorch-grad-cam would take its first call (the stem)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench", ROOT / "tools" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    net = bench.torch_efficientnet_lite0(bench._real_models())
    net._head_act = torch.nn.ReLU6()

    def extract_features(inputs):
        x = net._swish(net._bn0(net._conv_stem(inputs)))
        for block in net._blocks:
            x = block(x, drop_connect_rate=None)
        return net._head_act(net._bn1(net._conv_head(x)))

    net.extract_features = extract_features
    return net.eval()


def bench_peer(paths: list[Path], batch: int = 16) -> float:
    import torch

    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.path.append(str(ROOT / "tests" / "stubs"))  # pytorch-grad-cam imports torchvision; the stand-in suffices
    from pytorch_grad_cam import GradCAM

    import onnxfix

    torch.set_num_threads(cores())
    ex = onnxfix.Explainer(MODEL)
    net = torch_net()
    with GradCAM(model=net, target_layers=[net._head_act]) as cam:
        x0 = np.concatenate([ex.prepare(str(p))[0] for p in paths[:batch]])
        cam(input_tensor=torch.from_numpy(x0), targets=None)  # warm-up
        t = time.perf_counter()
        for i in range(0, len(paths), batch):
            x = np.concatenate([ex.prepare(str(p))[0] for p in paths[i:i + batch]])
            cam(input_tensor=torch.from_numpy(x), targets=None)
        return len(paths) / (time.perf_counter() - t)


def peak_rss(paths: list[Path], n: int, batch_size: int | None) -> dict:
    """Peak RSS (MB) of the process tree of ``onnxfix batch`` over the first ``n`` images, sampled every 50 ms."""
    import psutil

    work = Path(tempfile.mkdtemp(prefix="onnxfix-rss-"))
    try:
        man = work / "manifest.csv"
        with open(man, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path"])
            w.writerows([[str(p)] for p in paths[:n]])
        cmd = [sys.executable, "-m", "onnxfix", "batch", str(MODEL), str(man), "--methods", "gradcam,fixations",
               "--out", str(work / "out"), "--no-progress", "--json"]
        if batch_size:
            cmd += ["--batch-size", str(batch_size)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ps = psutil.Process(proc.pid)
        peak = 0
        t = time.perf_counter()
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.05)
        out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"onnxfix batch failed: {err.strip()}")
        res = json.loads(out.strip().splitlines()[-1])
        return {"images": n, "peak_rss_mb": round(peak / 2**20, 1), "wall_s": round(time.perf_counter() - t, 1),
                "images_per_s": round(res["images_per_s"], 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--workers", default="1,2", help="local worker counts (comma list)")
    ap.add_argument("--dask-workers", type=int, default=2)
    ap.add_argument("--methods", default="gradcam,fixations")
    ap.add_argument("--rss", default="500,2000", help="image counts for the peak-RSS runs ('' to skip)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: onnxfix's choice")
    ap.add_argument("--peer-images", type=int, default=64,
                    help="images for the pytorch-grad-cam peer (its rate; default 64: it is slow on CPU)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--no-loop", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    if not MODEL.exists():
        raise SystemExit(f"{MODEL} is missing: run python tools/real_models.py first")
    rss_counts = [int(v) for v in a.rss.split(",") if v.strip()]
    n_total = max([a.images, *rss_counts])
    work = Path(tempfile.mkdtemp(prefix="onnxfix-bench-images-"))
    try:
        t = time.perf_counter()
        paths = make_images(work / "all", n_total)
        sub = work / "bench"
        sub.mkdir()
        for p in paths[:a.images]:
            os.symlink(p, sub / p.name)
        print(f"{n_total} images generated in {time.perf_counter() - t:.1f} s; {cores()} cores; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        rows: list[dict] = []
        for method in a.methods.split(","):
            if not a.no_loop:
                rows.append({"method": method, "config": "loop (explain one by one)", "workers": 1,
                             "images_per_s": bench_loop(paths[:a.images], method)})
                print(rows[-1], flush=True)
            for n in [int(v) for v in a.workers.split(",")]:
                r = bench_run(sub, method, "local", n, a.batch_size)
                rows.append({"method": method, "config": f"batch local {n} worker{'s' if n > 1 else ''}",
                             "workers": n, **r})
                print(rows[-1], flush=True)
            if not a.no_dask:
                r = bench_run(sub, method, "dask", a.dask_workers, a.batch_size)
                rows.append({"method": method, "config": f"batch dask LocalCluster {a.dask_workers} workers",
                             "workers": a.dask_workers, **r})
                print(rows[-1], flush=True)
            if method == "gradcam" and not a.no_peer:
                n_peer = min(a.images, a.peer_images)
                rows.append({"method": method, "config": f"pytorch-grad-cam GradCAM, batches of 16 ({n_peer} img)",
                             "workers": 1, "images_per_s": bench_peer(paths[:n_peer])})
                print(rows[-1], flush=True)
        base = {r["method"]: r["images_per_s"] for r in rows if r["config"] == "batch local 1 worker"}
        for r in rows:
            if r["config"].startswith("batch") and r["method"] in base:
                r["scaling_efficiency"] = r["images_per_s"] / (r["workers"] * base[r["method"]])
        rss = [peak_rss(paths, n, a.batch_size) for n in rss_counts]
        print(f"\nEfficientNet-Lite0, {a.images} images, {cores()} cores")
        print(f"{'method':<10} {'configuration':<42} {'images/s':>9} {'efficiency':>10}")
        for r in rows:
            eff = f"{r['scaling_efficiency']:.2f}" if "scaling_efficiency" in r else ""
            print(f"{r['method']:<10} {r['config']:<42} {r['images_per_s']:>9.2f} {eff:>10}")
        for r in rss:
            print(f"peak RSS, gradcam+fixations, local 1 worker, {r['images']:>5} images: {r['peak_rss_mb']:.0f} MB "
                  f"({r['images_per_s']} images/s)")
        if a.json:
            Path(a.json).write_text(json.dumps({"rows": rows, "rss": rss, "cores": cores()}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
