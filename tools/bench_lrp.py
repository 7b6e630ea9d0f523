"""LRP: onnxfix's ``lrp`` against Zennit 0.5.1 on EfficientNet-Lite0, one run, one table.

    python tools/bench_lrp.py [--runs 10] [--threads 2] [--composites epsilon-plus epsilon-gamma-box ...]

onnxfix: ``Method.attribute`` (forward + the LRP backward in ONNX Runtime, batch of one, target the top class) on
tools/real_models.py's legacy export. Zennit: ``Gradient`` attributor with the composite and the canonizers of
tests/test_lrp.py (BatchNorm merged exactly by name, Sum on the skip connections) on the torch model built from the
same sources and weights, float32, ``attr_output`` = output × one-hot — the forward and the modified backward,
what a Zennit user times. Both with THREADS threads, timed alternately (tools/bench.py's paired-median timer).
Each row prints the relative error max|onnxfix − Zennit| / max|Zennit| as a sanity check (float32 on both sides).
Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--composites", nargs="+", default=["epsilon-plus", "epsilon-gamma-box", "epsilon-alpha2-beta1"])
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    bench = _load("bench_main", ROOT / "tools" / "bench.py")
    tl = _load("test_lrp", ROOT / "tests" / "test_lrp.py")
    tl._zennit()
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus

    import onnxfix
    from onnxfix.io.image import IMAGENET_MEAN, IMAGENET_STD
    from onnxfix.methods import METHODS
    from onnxfix.targets import Class

    path = ROOT / ".cache" / "real_models" / "models" / "efficientnet_lite0.onnx"
    if not path.exists():
        print("EfficientNet-Lite0 not obtained (python tools/real_models.py)")
        return 1
    import skimage.data as sd

    entry = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    ex = onnxfix.Explainer(str(path), preprocess=entry, threads=a.threads)
    x, _, _ = ex.prepare(sd.coffee())
    model, m = ex.model, METHODS["lrp"]
    logits = model.runtime.run({model.input: x}, [model.head.logits])[model.head.logits]
    target = int(np.argmax(logits[0]))
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    low, high = float((-mean / std).min()), float(((1 - mean) / std).max())

    net, canonizers = tl.effnet_twin()
    net = net.float()
    xt = torch.from_numpy(x.copy())
    rows = []
    for comp in a.composites:
        opts = m.parse_options({"composite": comp, **({"low": low, "high": high} if comp == "epsilon-gamma-box"
                                                     else {})})
        if comp == "epsilon-gamma-box":
            zc = EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
        else:
            zc = {"epsilon-plus": EpsilonPlus, "epsilon-alpha2-beta1": EpsilonAlpha2Beta1}[comp](
                canonizers=canonizers)

        def ours(opts=opts):
            return m.attribute(model, x, [Class(target)], opts).values

        attributor = Gradient(model=net, composite=zc)
        attributor.__enter__()

        def theirs(attributor=attributor):
            inp = xt.clone().requires_grad_()
            out = net(inp)
            onehot = torch.zeros_like(out)
            onehot[0, target] = 1.0
            return attributor(inp, out.detach() * onehot)[1].detach().numpy()

        try:
            a_ms, b_ms = bench._paired_median_ms(ours, theirs, a.runs)
            err = float(np.abs(ours() - theirs()).max() / np.abs(theirs()).max())
        finally:
            attributor.__exit__(None, None, None)
        rows.append((comp, a_ms, b_ms, err))
        print(f"  {comp}: onnxfix {a_ms:.1f} ms, Zennit {b_ms:.1f} ms", file=sys.stderr, flush=True)
    print(f"\nonnxfix lrp vs Zennit 0.5.1, EfficientNet-Lite0 224×224, {a.threads} threads each, median of {a.runs} "
          "paired runs")
    print(f"{'composite':24s} {'onnxfix ms':>11s} {'Zennit ms':>10s} {'ratio':>6s} {'rel. error':>11s}")
    for comp, a_ms, b_ms, err in rows:
        print(f"{comp:24s} {a_ms:11.1f} {b_ms:10.1f} {a_ms / b_ms:6.2f} {err:11.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
