"""CNN Fixations against a bare ONNX Runtime forward, one process, paired medians (issue 16, part 1).

    PYTHONPATH=. python tools/bench_fixations.py [--threads 2] [--runs 20] [--json OUT] [--models-dir DIR]
        [--models efficientnet_lite0 ...] [--batch 8] [--skip-cli] [--compile-cold]

Needs only numpy, numba, onnx, onnxruntime, networkx and pillow (no torch); a model that is missing is reported and
skipped. The input is scikit-image's ``chelsea`` photograph when scikit-image is installed (the dev extras), else
uniform noise (the row's ``input`` says which). Every ratio is a median over ``--runs`` rounds in which the two
sides run back to back (a, b, a, b, …), so that load on a shared machine hits both alike. Per model:

* ``explain_ratio``: ``Explainer.explain(x, method="fixations")`` (forward exposing the traced tensors → backtrack
  → points; the heatmap and box are lazy and not drawn) / a bare ``InferenceSession.run`` with the same threads;
* components, each against the bare forward of the same round: ``fwd_exposed`` (the session exposing
  :func:`onnxfix.fixations.needed_tensors`, every tensor copied back to NCHW), ``fwd_native`` (the same tensors in
  ONNX Runtime's blocked layout, :mod:`onnxfix.nchwc`: what ``explain`` runs; ``native`` counts them), ``trace``
  (:func:`onnxfix.fixations.trace`: plan lookup, pointers, the compiled pass, the result, on the native values),
  ``run_plan`` (the jitted pass alone), ``numba_dispatch`` (a jitted no-op with the same nine arguments: numba's
  per-call typing and unboxing), ``python_overhead`` (explain minus the native forward minus trace minus points:
  targets, softmax, checks, the Explanation), ``numpy_twin`` (the trace on the numpy twin, what a cold numba cache
  runs);
* ``b8_ratio``: ``Explainer.explain([x] * 8, batch_size=8)`` / a bare batch-8 forward (the model's batch-dynamic
  copy when its batch is fixed).

CLI rows (``--skip-cli`` to skip): a fresh ``onnxfix`` process on the ResNet-like sample with numba's cache warm
(``cli_warm_s``; ``first_explain_s`` is the process's first explanation after imports), and with an empty cache
(``NUMBA_CACHE_DIR`` a new folder: what a fresh ``pip install`` meets; the numpy twins run and the background
compile is switched off so that it does not share the CPU with the measurement). ``--compile-cold`` adds the old
behaviour's cost: the same cold run forced to compile (``ONNXFIX_KERNELS=numba``). Speed is measured here, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
REAL = ["efficientnet_lite0", "efficientnet_lite0_dynamo", "opennsfw"]
SAMPLE = ["resnet_shapes"]


def paired(fns: list, runs: int, warmup: int = 3) -> list[float]:
    """Medians (ms) of callables timed in rounds (each round runs every callable once, in order)."""
    for _ in range(warmup):
        for f in fns:
            f()
    ts: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for f, t in zip(fns, ts, strict=True):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [1000 * statistics.median(t) for t in ts]


def paired_ratios(fn, bare, runs: int) -> tuple[float, float, float]:
    """(median ms of fn, median ms of bare, median of the per-round ratios fn / bare)."""
    for _ in range(3):
        fn()
        bare()
    a, b, r = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        bare()
        t2 = time.perf_counter()
        a.append(t1 - t0)
        b.append(t2 - t1)
        r.append((t1 - t0) / max(t2 - t1, 1e-9))
    return 1000 * statistics.median(a), 1000 * statistics.median(b), statistics.median(r)


def photo():
    """scikit-image's bundled cat photograph (``chelsea``, no network) as a PIL image; ``None`` without it. A
    photograph's walk visits more locations than uniform noise's (EfficientNet-Lite0: 59 input points vs 22)."""
    try:
        import skimage.data as sd
        from PIL import Image
        return Image.fromarray(sd.chelsea()).convert("RGB")
    except Exception:  # noqa: BLE001 - not installed, or its data file missing: noise instead
        return None


def _input(sess, batch: int | None = None) -> np.ndarray:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in sess.get_inputs()[0].shape]
    if batch:
        shape[0] = batch
    return np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)


def bench_model(name: str, path: Path, runs: int, threads: int, batch: int) -> dict:
    import numba
    from onnxfix.kernels import warm
    from onnxfix.kernels.plan import run_plan

    import onnxfix
    from onnxfix.fixations import PLANS, needed_tensors, trace
    from onnxfix.fixations.tracer import _pointers
    from onnxfix.methods.base import input_points
    from onnxfix.nchwc import Blocked

    warm.MODE = "numba"
    ex = onnxfix.Explainer(str(path), threads=threads)
    m = ex.model
    sess = m.runtime.session()
    im = photo()
    pic = ex.prepare(im)[0] if im is not None else None
    noise = _input(sess)
    use_photo = pic is not None and pic.shape == noise.shape
    x = pic if use_photo else noise
    feeds = {m.input: x}
    need = needed_tensors(m.graph, m.input, m.head.logits)
    exposed = m.runtime.session(need)
    names = [o.name for o in exposed.get_outputs()]
    vals = m.runtime.run(feeds, need, native=need)
    nat = m.runtime.native_session(need, need)
    native_fwd = (lambda: nat[0].run(None, feeds)) if nat is not None else (lambda: exposed.run(names, feeds))
    vals[m.input] = x
    logits = vals[m.head.logits]
    start = np.array([np.unravel_index(int(np.argmax(logits)), logits.shape)], np.int64)
    plan = PLANS.get(m.graph, vals, m.input, m.head.logits)
    row: dict = {"model": name, "input": "chelsea" if use_photo else "noise", "exposed": len(need),
                 "native": sum(isinstance(v, Blocked) for v in vals.values()),
                 "tensors": len({t for n in m.graph.nodes for t in n.outputs}), "compiled": plan.compiled}

    bare = lambda: sess.run(None, feeds)  # noqa: E731
    fx, b, r = paired_ratios(lambda: ex.explain(x, method="fixations"), bare, runs)
    row.update(bare_ms=round(b, 3), explain_ms=round(fx, 3), explain_ratio=round(r, 3))
    row["points"] = len(ex.explain(x, method="fixations").points)

    def do_trace():
        return trace(m.graph, vals, m.input, m.head.logits, start)

    fns = [bare, native_fwd, do_trace,
           lambda: input_points(m, do_trace().at(m.input)), lambda: ex.explain(x, method="fixations"),
           lambda: exposed.run(names, feeds)]
    if plan.compiled:
        ptr, lay, keep = _pointers(plan, vals)
        sf = np.ravel_multi_index(tuple(start.T), logits.shape).astype(np.int64)
        args = (plan.steps, plan.ip, plan.fp, plan.weights, ptr, lay, len(plan.tensors), plan.start_t, sf)

        @numba.njit
        def noop(a, b, c, d, e, f, g, h, i):  # pragma: no cover - jitted
            return g

        noop(*args)
        fns += [lambda: run_plan(*args), lambda: noop(*args)]

        def twin():
            warm.MODE = "numpy"
            try:
                do_trace()
            finally:
                warm.MODE = "numba"

        fns.append(twin)
    t = paired(fns, runs)
    base = t[0]
    row.update(fwd_native_ratio=round(t[1] / base, 3), fwd_exposed_ratio=round(t[5] / base, 3),
               trace_ms=round(t[2], 3), trace_ratio=round(t[2] / base, 3),
               points_ms=round(t[3] - t[2], 3),
               python_overhead_ms=round(t[4] - t[1] - t[3], 3))
    if plan.compiled:
        row.update(run_plan_ms=round(t[6], 3), numba_dispatch_ms=round(t[7], 4), numpy_twin_ms=round(t[8], 3))
    bm = m.batch_model()
    if bm is not None and batch > 1:
        bsess = bm.runtime.session()
        xb = np.concatenate([x] * batch)
        imgs = [x.copy() for _ in range(batch)]
        fb, bb, rb = paired_ratios(lambda: ex.explain(imgs, method="fixations", batch_size=batch),
                                   lambda: bsess.run(None, {bm.input: xb}), max(5, runs // 2))
        row.update(bare_b8_ms_per_image=round(bb / batch, 3), explain_b8_ms_per_image=round(fb / batch, 3),
                   b8_ratio=round(rb, 3))
    return row


_FIRST = """
import sys, time
t0 = time.perf_counter()
import onnxfix
t1 = time.perf_counter()
ex = onnxfix.Explainer(sys.argv[1])
e = ex.explain(sys.argv[2], method="fixations")
e.heatmap, e.box
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def bench_cli(runs: int, compile_cold: bool) -> dict:
    model, image = ROOT / "sample_models/resnet_shapes.onnx", ROOT / "sample_models/resnet_shapes.png"
    out = tempfile.mkdtemp(prefix="onnxfix-bench-")
    cmd = [sys.executable, "-m", "onnxfix", str(model), str(image), "--out", out, "--json", "--overwrite"]
    first = [sys.executable, "-c", _FIRST, str(model), str(image)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "ONNXFIX_KERNELS": "auto"}
    subprocess.run(cmd, capture_output=True, check=True, env=env)  # warms numba's cache and the disk cache

    def timed(argv, e) -> tuple[float, float, str]:
        t = time.perf_counter()
        r0 = os.times()
        p = subprocess.run(argv, capture_output=True, check=True, env=e, text=True)
        r1 = os.times()
        return time.perf_counter() - t, (r1.children_user + r1.children_system) - (r0.children_user
                                                                                   + r0.children_system), p.stdout

    def median_of(argv, e, n) -> tuple[float, float, list[float]]:
        rs = [timed(argv, e) for _ in range(n)]
        first_s = [float(r[2].split()[1]) for r in rs] if argv is first else []
        return statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), first_s

    row: dict = {}
    w, c, _ = median_of(cmd, env, runs)
    row.update(cli_warm_wall_s=round(w, 2), cli_warm_cpu_s=round(c, 2))
    _, _, fs = median_of(first, env, runs)
    row["first_explain_warm_s"] = round(statistics.median(fs), 3)
    cold = lambda **kw: {**env, "NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="onnxfix-numba-cold-"),  # noqa: E731
                         "ONNXFIX_BACKGROUND_COMPILE": "0", **kw}
    rs = [timed(cmd, cold()) for _ in range(max(1, runs // 2))]
    row.update(cli_cold_wall_s=round(statistics.median(r[0] for r in rs), 2),
               cli_cold_cpu_s=round(statistics.median(r[1] for r in rs), 2))
    rs = [timed(first, cold()) for _ in range(max(1, runs // 2))]
    row["first_explain_cold_s"] = round(statistics.median(float(r[2].split()[1]) for r in rs), 3)
    if compile_cold:
        wall, cpu, _ = timed(cmd, cold(ONNXFIX_KERNELS="numba"))
        row.update(cli_cold_compiling_wall_s=round(wall, 2), cli_cold_compiling_cpu_s=round(cpu, 2))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--models", nargs="+", default=REAL + SAMPLE)
    ap.add_argument("--models-dir", type=Path, default=ROOT / ".cache/real_models/models",
                    help="where the real models are (default .cache/real_models/models)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--compile-cold", action="store_true", help="also time a cold run that compiles numba (~15 s)")
    args = ap.parse_args(argv)
    os.environ.setdefault("ONNXFIX_BACKGROUND_COMPILE", "0")
    head = {"threads": args.threads, "runs": args.runs, "load": round(os.getloadavg()[0], 1), "cores": os.cpu_count()}
    print(json.dumps(head))
    rows: list[dict] = []
    for name in args.models:
        path = Path(name) if name.endswith(".onnx") else (
            ROOT / "sample_models" / f"{name}.onnx" if name in SAMPLE else args.models_dir / f"{name}.onnx")
        if not path.exists():
            rows.append({"model": name, "missing": str(path)})
            print(json.dumps(rows[-1]), flush=True)
            continue
        rows.append(bench_model(name, path, args.runs, args.threads, args.batch))
        print(json.dumps(rows[-1]), flush=True)
    cli = None if args.skip_cli else bench_cli(5, args.compile_cold)
    if cli:
        print(json.dumps(cli))
    if args.json:
        args.json.write_text(json.dumps({**head, "models": rows, "cli": cli}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
