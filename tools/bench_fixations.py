"""CNN Fixations against a bare ONNX Runtime forward, one process, medians (issue 16, part 1).

    python tools/bench_fixations.py [--runs 20] [--threads 2] [--models efficientnet_lite0 ...] [--skip-cold]

Rows (each a median of ``--runs`` timed calls after warm-up; the two sides timed alternately, a, b, a, b, …, so
that load on a shared machine hits both alike):

* ``explain b1``: ``Explainer.explain(x, method="fixations")`` on one preprocessed image (forward exposing the
  traced tensors → backtrack → points → density heatmap and box) / a bare ``InferenceSession.run`` of the same model
  and input with the same threads;
* ``trace b1``: the method's own work only — the forward exposing :func:`onnxfix.fixations.needed_tensors` plus
  :func:`onnxfix.fixations.trace` and the points — / the bare forward;
* ``explain b8``: ``Explainer.explain([x] * 8, batch_size=8)`` per image / a bare batch-8 forward per image (the
  model's batch-dynamic copy when its batch is fixed);
* ``cli warm``: a fresh ``onnxfix`` process explaining the ResNet-like sample, numba's cache warm, minus the
  forward; ``cli cold``: the same with an empty numba cache (``NUMBA_CACHE_DIR`` pointed at a new folder: what a
  fresh ``pip install`` meets).

Models: the real ones from tools/real_models.py (skipped when missing) and sample_models/resnet_shapes.onnx.
Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = {
    "efficientnet_lite0": ROOT / ".cache/real_models/models/efficientnet_lite0.onnx",
    "efficientnet_lite0_dynamo": ROOT / ".cache/real_models/models/efficientnet_lite0_dynamo.onnx",
    "opennsfw": ROOT / ".cache/real_models/models/opennsfw.onnx",
    "resnet_shapes": ROOT / "sample_models/resnet_shapes.onnx",
}


def paired(fa, fb, runs: int) -> tuple[float, float]:
    """Medians (ms) of two callables timed alternately (tools/bench.py's)."""
    from bench import _paired_median_ms

    return _paired_median_ms(fa, fb, runs)


def _input(ex) -> np.ndarray:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in ex.model.runtime.session().get_inputs()[0].shape]
    return np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)


def bench_model(name: str, path: Path, runs: int, threads: int, batch: int) -> dict:
    import onnxfix
    from onnxfix.fixations import needed_tensors, trace
    from onnxfix.methods.base import input_points

    ex = onnxfix.Explainer(str(path), threads=threads)
    m = ex.model
    x = _input(ex)
    sess = m.runtime.session()
    feeds = {m.input: x}
    row: dict = {"model": name}
    need = needed_tensors(m.graph, m.input, m.head.logits)

    def method_only():
        vals = m.runtime.run(feeds, need)
        vals[m.input] = x
        logits = vals[m.head.logits]
        start = np.array([np.unravel_index(int(np.argmax(logits)), logits.shape)], np.int64)
        return input_points(m, trace(m.graph, vals, m.input, m.head.logits, start).at(m.input))

    bare = lambda: sess.run(None, feeds)  # noqa: E731
    fx, b = paired(lambda: ex.explain(x, method="fixations"), bare, runs)
    row.update(bare_ms=round(b, 2), explain_ms=round(fx, 2), explain_ratio=round(fx / b, 2))
    tr, b2 = paired(method_only, bare, runs)
    row.update(trace_ms=round(tr, 2), trace_ratio=round(tr / b2, 2), exposed=len(need))
    row["points"] = len(ex.explain(x, method="fixations").points)
    bm = m.batch_model()
    if bm is not None and batch > 1:
        xb = np.concatenate([x] * batch)
        bsess = bm.runtime.session()
        imgs = [x.copy() for _ in range(batch)]
        fb, bb = paired(lambda: ex.explain(imgs, method="fixations", batch_size=batch),
                        lambda: bsess.run(None, {bm.input: xb}), max(5, runs // 2))
        row.update(bare_b8_ms_per_image=round(bb / batch, 2), explain_b8_ms_per_image=round(fb / batch, 2),
                   b8_ratio=round(fb / bb, 2))
    return row


def bench_cli(runs: int, cold: bool) -> dict:
    model, image = ROOT / "sample_models/resnet_shapes.onnx", ROOT / "sample_models/resnet_shapes.png"
    out = tempfile.mkdtemp(prefix="onnxfix-bench-")
    cmd = [sys.executable, "-m", "onnxfix", str(model), str(image), "--out", out, "--json", "--overwrite"]
    env = dict(os.environ)
    subprocess.run(cmd, capture_output=True, check=True, env=env)  # warms the numba cache (and the disk cache)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=env)
        ts.append(time.perf_counter() - t)
    row = {"cli_warm_s": round(statistics.median(ts), 2)}
    if cold:
        cts = []
        for _ in range(2):
            env_c = dict(env, NUMBA_CACHE_DIR=tempfile.mkdtemp(prefix="onnxfix-numba-cold-"))
            t = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True, env=env_c)
            cts.append(time.perf_counter() - t)
        row["cli_cold_s"] = round(statistics.median(cts), 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--skip-cold", action="store_true", help="skip the cold-cache CLI run (it compiles numba)")
    ap.add_argument("--skip-cli", action="store_true")
    args = ap.parse_args()
    print(f"threads={args.threads} runs={args.runs} (medians; load: {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")
    cols = ["model", "bare_ms", "explain_ms", "explain_ratio", "trace_ms", "trace_ratio", "exposed",
            "bare_b8_ms_per_image", "explain_b8_ms_per_image", "b8_ratio", "points"]
    print(" | ".join(cols))
    for name in args.models:
        path = MODELS.get(name, Path(name))
        if not path.exists():
            print(f"{name} | missing ({path})")
            continue
        row = bench_model(name, path, args.runs, args.threads, args.batch)
        print(" | ".join(str(row.get(c, "")) for c in cols), flush=True)
    if not args.skip_cli:
        print(bench_cli(5, not args.skip_cold))


if __name__ == "__main__":
    main()
