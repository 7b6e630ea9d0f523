"""The peers' methods (issue #15) against Captum / pytorch-grad-cam on EfficientNet-Lite0, same weights, one run.

    python tools/bench_methods.py [--runs 3] [--threads 2] [--json out.json]

For each method: median wall time of onnxfix's ``Explainer.explain`` and of its peer (timed alternately, so machine
load hits both), their ratio against the issue's target, and the worst relative error of the attributions (the
random numbers are shared: Captum's torch.normal is fed onnxfix's noise). Rows: integrated-gradients (50
Gauss-Legendre steps), smoothgrad with 50 and 25 samples (target ≤ 0.5× Captum), scorecam, ablation-cam, layercam
(≤ 0.5× pytorch-grad-cam), reciprocam (≤ 0.1× pytorch-grad-cam's ScoreCAM), fullgrad (≤ 0.5× pytorch-grad-cam's
FullGrad: the whole normalised map; the torch net's BatchNorms carry the biases the ONNX export folded into its convs,
the same bias terms) and layercam with ``aug_smooth`` (≤ 0.5× pytorch-grad-cam's, whole map). The layer is the last
MBConv block's output (``_blocks.15._bn2``, the block's last module; in ONNX the BN-folded projection conv's output).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

LAYER_MODULE = "_blocks.15._bn2"  # the block is called with kwargs AblationCAM cannot take
LAYER_TENSOR = "/_blocks.15/_project_conv/Conv_output_0"
TARGETS = {"integrated-gradients": 0.5, "smoothgrad-50": 0.5, "smoothgrad-25": 0.5, "scorecam": 0.5,
           "ablation-cam": 0.5, "layercam": 0.5, "reciprocam": 0.1, "fullgrad": 0.5, "layercam-aug": 0.5}


def _pgc():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.path.append(str(ROOT / "tests" / "stubs"))
    import pytorch_grad_cam

    return pytorch_grad_cam


def _pgc_raw(cls, net, module, xt, target: int, **kw):
    """A callable running pytorch-grad-cam's ``cls`` once → its raw map at the layer (ReLU(get_cam_image))."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def run():
        raw: list = []
        with cls(model=net, target_layers=[module], **kw) as cam:  # hooks released after each call
            orig = cam.get_cam_image

            def record(*a, **k):
                out = orig(*a, **k)
                raw.append(np.asarray(out))
                return out

            cam.get_cam_image = record
            cam(input_tensor=xt, targets=[ClassifierOutputTarget(target)])
        return np.maximum(raw[0], 0)[0]

    return run


def _pgc_whole(cls, net, modules, xt, target: int, **call):
    """A callable running pytorch-grad-cam's ``cls`` once → its whole output (min-max scaled, at the input size)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def run():
        with cls(model=net, target_layers=modules) as cam:
            return np.asarray(cam(input_tensor=xt, targets=[ClassifierOutputTarget(target)], **call))[0]

    return run


def _paired(fa, fb, runs: int) -> tuple[float, float]:
    """Medians (ms) of two callables timed alternately; no warm-up here: callers ran each once (minutes each)."""
    from bench import _paired_median_ms

    return _paired_median_ms(fa, fb, runs, warmup=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", nargs="+", default=None, help="a subset of the rows")
    a = ap.parse_args()

    import bench
    import skimage.data as sd
    import torch
    import tqdm

    import onnxfix
    from onnxfix.methods.noise_tunnel import noise

    warnings.filterwarnings("ignore")
    _tqdm = tqdm.tqdm

    class _Quiet(_tqdm):
        def __init__(self, *aa, **kk):
            kk["disable"] = True
            super().__init__(*aa, **kk)

    tqdm.tqdm = _Quiet
    torch.set_num_threads(a.threads)
    os.environ["ONNXFIX_THREADS"] = str(a.threads)
    rm = bench._real_models()
    entry = rm.ensure(["efficientnet_lite0"])["efficientnet_lite0"]
    if "error" in entry:
        raise SystemExit(f"efficientnet_lite0 unavailable: {entry['error']}")
    net = bench.torch_efficientnet_lite0(rm)
    pre = {k: entry[k] for k in ("mean", "std", "scale", "channels", "layout") if entry.get(k) is not None}
    ex = onnxfix.Explainer(entry["path"], labels=entry.get("labels"), preprocess=pre, threads=a.threads)
    x, _, _ = ex.prepare(sd.coffee())
    xt = torch.from_numpy(x.copy())
    with torch.no_grad():
        target = int(net(xt).argmax())
    import captum.attr as ca

    pgc = _pgc()
    module = net.get_submodule(LAYER_MODULE)
    rows = []

    def smooth(k: int):
        eps = noise(x.shape, k, 1.0, 0)

        def ref():
            orig = torch.normal
            torch.normal = lambda mean, std, *aa, **kk: torch.from_numpy(eps.copy()).reshape(std.shape)
            try:
                return ca.NoiseTunnel(ca.Saliency(net)).attribute(xt, nt_type="smoothgrad", nt_samples=k, stdevs=1.0,
                                                                  target=target, abs=False).detach().numpy()
            finally:
                torch.normal = orig

        return ("smoothgrad", {"samples": k, "stdev": 1.0, "seed": 0}, ref, f"NoiseTunnel(Saliency) {k} samples")

    ig = ca.IntegratedGradients(net)
    cases = {
        "integrated-gradients": ("integrated-gradients", {},
                                 lambda: ig.attribute(xt, target=target, n_steps=50).detach().numpy(),
                                 "IntegratedGradients(n_steps=50, gausslegendre)"),
        "smoothgrad-50": smooth(50),
        "smoothgrad-25": smooth(25),
        "scorecam": ("scorecam", {"layer": LAYER_TENSOR}, _pgc_raw(pgc.ScoreCAM, net, module, xt, target),
                     "pytorch-grad-cam ScoreCAM (batch 16)"),
        "ablation-cam": ("ablation-cam", {"layer": LAYER_TENSOR}, _pgc_raw(pgc.AblationCAM, net, module, xt, target),
                         "pytorch-grad-cam AblationCAM (batch 32)"),
        "layercam": ("layercam", {"layer": LAYER_TENSOR}, _pgc_raw(pgc.LayerCAM, net, module, xt, target),
                     "pytorch-grad-cam LayerCAM"),
        "fullgrad": ("fullgrad", {}, _pgc_whole(pgc.FullGrad, net, [], xt, target), "pytorch-grad-cam FullGrad"),
        "layercam-aug": ("layercam", {"layer": LAYER_TENSOR, "aug_smooth": True},
                         _pgc_whole(pgc.LayerCAM, net, [module], xt, target, aug_smooth=True),
                         "pytorch-grad-cam LayerCAM aug_smooth"),
    }
    times: dict[str, float] = {}
    for key, (method, opts, ref_fn, note) in cases.items():
        if a.only and key not in a.only and not (key == "scorecam" and "reciprocam" in a.only):
            continue
        ours_fn = lambda method=method, opts=opts: np.asarray(  # noqa: E731
            ex.explain(x, method=method, target=target, **opts).attribution)
        ours, ref = ours_fn(), ref_fn()
        t_ours, t_ref = _paired(ours_fn, ref_fn, a.runs)  # ours_fn()/ref_fn() above warmed up
        times[key] = t_ref
        err = float(np.abs(ours - ref).max() / np.abs(ref).max()) if ours.shape == ref.shape else float("nan")
        rows.append({"method": key, "peer": note, "onnxfix_ms": round(t_ours, 1), "peer_ms": round(t_ref, 1),
                     "ratio": round(t_ours / t_ref, 3), "target": TARGETS[key], "rel_err": err})
        print(rows[-1], file=sys.stderr, flush=True)
    if a.only and "reciprocam" not in a.only:
        rows_out(rows, a)
        return
    rc = lambda: ex.explain(x, method="reciprocam", target=target, layer=LAYER_TENSOR).attribution  # noqa: E731
    rc()
    t_rc = _paired(rc, rc, a.runs)[0]
    rows.append({"method": "reciprocam", "peer": "vs pytorch-grad-cam ScoreCAM", "onnxfix_ms": round(t_rc, 1),
                 "peer_ms": round(times["scorecam"], 1), "ratio": round(t_rc / times["scorecam"], 3),
                 "target": TARGETS["reciprocam"], "rel_err": None})
    rows_out(rows, a, target)


def rows_out(rows: list[dict], a, target: int | None = None) -> None:
    print(f"EfficientNet-Lite0, class {target}, {a.threads} threads, median of {a.runs}")
    print(f"{'method':<22}{'onnxfix ms':>11}{'peer ms':>10}{'ratio':>8}{'target':>8}  ok  {'rel err':>9}  peer")
    for r in rows:
        ok = "yes" if r["ratio"] <= r["target"] else "NO"
        e = "-" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
        print(f"{r['method']:<22}{r['onnxfix_ms']:>11}{r['peer_ms']:>10}{r['ratio']:>8}{'≤' + str(r['target']):>8}"
              f"  {ok:<4}{e:>9}  {r['peer']}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
