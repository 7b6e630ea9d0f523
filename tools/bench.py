"""Benchmarks, one process, medians after warm-up; prints a table of times and ratios.

    python tools/bench.py [--runs 20] [--models efficientnet_lite0 opennsfw] [--threads 2]

fixations: the whole ``Explainer.explain`` (preprocessed input → forward exposing the traced tensors → backtrack
→ points), against a bare ONNX Runtime forward of the same model and input with the same threads. ``cli-first``:
a fresh ``onnxfix`` process on a sample model with the numba cache already warm.
Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_ms(fn, runs: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def bench_fixations(name: str, runs: int, threads: int) -> dict:
    import skimage.data as sd

    import onnxfix

    spec = __import__("importlib.util").util.spec_from_file_location("rm", ROOT / "tools" / "real_models.py")
    rm = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(rm)
    entry = rm.ensure([name])[name]
    if "error" in entry:
        return {"model": name, "error": entry["error"]}
    pre = {k: entry[k] for k in ("mean", "std", "scale", "channels", "layout") if entry.get(k) is not None}
    ex = onnxfix.Explainer(entry["path"], labels=entry.get("labels"), preprocess=pre, threads=threads)
    x, _, _ = ex.prepare(sd.coffee())
    sess = ex.model.runtime.session()
    feeds = {ex.model.input: x}
    bare = _median_ms(lambda: sess.run(None, feeds), runs)
    fix = _median_ms(lambda: ex.explain(x, method="fixations"), runs)
    e = ex.explain(x, method="fixations")
    return {"model": name, "bare_forward_ms": round(bare, 2), "fixations_ms": round(fix, 2),
            "ratio": round(fix / bare, 2), "points": int(len(e.points))}


def bench_cli_first(runs: int = 3) -> dict:
    model, image = ROOT / "sample_models" / "resnet_shapes.onnx", ROOT / "sample_models" / "resnet_shapes.png"
    if not model.exists():
        return {"cli": "sample model missing"}
    cmd = [sys.executable, "-m", "onnxfix", str(model), str(image), "--out", "/tmp/onnxfix-bench", "--json"]
    subprocess.run(cmd, capture_output=True, check=True)  # warms the numba cache
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        ts.append(time.perf_counter() - t)
    return {"cli_first_run_s": round(statistics.median(ts), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "efficientnet_lite0_dynamo", "opennsfw"])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = [bench_fixations(m, a.runs, a.threads) for m in a.models]
    rows.append(bench_cli_first())
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'model':<28}{'bare ORT ms':>12}{'fixations ms':>14}{'ratio':>8}{'points':>8}")
    for r in rows:
        if "bare_forward_ms" in r:
            print(f"{r['model']:<28}{r['bare_forward_ms']:>12}{r['fixations_ms']:>14}{r['ratio']:>8}{r['points']:>8}")
        else:
            print(r)
    np.set_printoptions()


if __name__ == "__main__":
    main()
