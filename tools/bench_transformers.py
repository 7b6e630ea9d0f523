"""Transformers (issue #12): localisation of every method on the sample ViT, and speed against pytorch-grad-cam.

    python tools/bench_transformers.py localise [--model sample_models/vit_shapes.onnx] [--n 200] [--only fixations]
    python tools/bench_transformers.py speed [--model sample_models/vit_shapes.onnx] [--repeat 30]

``localise``: generated held-out scenes with one object and its box (tools/scenes.classification_set, seed 2002,
the ViT's own held-out distribution); each method explains the ground-truth class; pointing game (the map's maximum
inside the box, onnxfix.evaluate.metrics.pointing) and box IoU (Grad-CAM's WSOL box at 15 % of the max; fixations:
outlier removal + tightest box, onnxfix.evaluate.metrics.wsol). Prints a markdown table (docs/transformers.md).

``speed``: one image, Grad-CAM at ``blocks[-1].norm1`` and attention-gradient, onnxfix (Explainer.explain, ONNX
Runtime) vs pytorch-grad-cam 1.5.7 GradCAM with ``reshape_transform`` and vs Chefer's torch recipe on the torch
twin (same weights); median wall time over ``--repeat`` runs after one warm-up; one thread each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = [
    ("gradcam", {}), ("gradcam++", {}), ("layercam", {}), ("hirescam", {}), ("xgradcam", {}), ("eigencam", {}),
    ("saliency", {}), ("input-x-gradient", {}), ("integrated-gradients", {}), ("occlusion", {}),
    ("attention-rollout", {}), ("attention-rollout", {"head_fusion": "max", "discard_ratio": 0.9}),
    ("attention-gradient", {}), ("fixations", {"attention": "positive"}), ("fixations", {"attention": "argmax"}),
    ("fixations", {"attention": "topk", "attention_k": 2}), ("fixations", {"attention": "topk", "attention_k": 3}),
]


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def localise(model: Path, n: int, seed: int, methods=METHODS) -> list[dict]:
    import onnxfix
    from onnxfix.errors import OnnxfixError
    from onnxfix.evaluate.metrics.pointing import pointing_hit
    from onnxfix.evaluate.metrics.wsol import box_from_heatmap, box_from_points, iou

    scenes = _module("onnxfix_tools_scenes", ROOT / "tools" / "scenes.py")
    data = scenes.classification_set(n, seed, 64)
    ex = onnxfix.Explainer(str(model), threads=1)
    rows = []
    for method, opts in methods:
        label = method + ("" if not opts else " (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")")
        hits, ious, t0 = [], [], time.perf_counter()
        try:
            for i in range(n):
                img, box, y = data["images"][i], data["boxes"][i], int(data["y"][i])
                e = ex.explain(img, method=method, target=y, **opts)
                hm = e.heatmap
                region = np.zeros(hm.shape, bool)
                x0, y0, x1, y1 = (int(round(v)) for v in box)
                region[y0:y1, x0:x1] = True
                hits.append(pointing_hit(hm, region))
                b = box_from_points(e.points, hm.shape) if e.points is not None else box_from_heatmap(hm)
                ious.append(iou(b, [float(v) for v in box]))
        except OnnxfixError as exc:
            rows.append({"method": label, "error": str(exc)})
            print(f"{label:45s} refused: {exc}", flush=True)
            continue
        sec = (time.perf_counter() - t0) / n
        row = {"method": label, "pointing": float(np.nanmean(hits)), "iou": float(np.mean(ious)),
               "loc_0.5": float(np.mean(np.asarray(ious) >= 0.5)), "ms_per_image": 1000 * sec, "n": n}
        rows.append(row)
        print(f"{label:45s} pointing {row['pointing']:.3f}  IoU {row['iou']:.3f}  IoU≥0.5 {row['loc_0.5']:.3f}  "
              f"{row['ms_per_image']:.1f} ms", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| method | pointing game | mean box IoU | IoU ≥ 0.5 | ms / image |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['method']} | refused | | | |")
        else:
            out.append(f"| {r['method']} | {r['pointing']:.3f} | {r['iou']:.3f} | {r['loc_0.5']:.3f} | "
                       f"{r['ms_per_image']:.1f} |")
    return "\n".join(out)


def _median(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed(model: Path, repeat: int) -> dict:
    import torch

    import onnxfix

    torch.set_num_threads(1)
    stubs = ROOT / "tests" / "stubs"
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.path.append(str(stubs))
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    nets = _module("onnxfix_tools_nets_v2", ROOT / "tools" / "nets_v2.py")
    if not model.with_suffix(".json").exists():
        raise SystemExit(f"{model}: no torch twin ({model.with_suffix('.json').name})")
    net = nets.load_twin(model)
    size = net.grid * net.patch_embed.stride[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    xt = torch.from_numpy(x)
    c = int(net(xt).argmax())
    ex = onnxfix.Explainer(str(model), threads=1)
    g = net.grid

    def rt(t):
        return t[:, 1:, :].reshape(t.size(0), g, g, t.size(2)).transpose(2, 3).transpose(1, 2)

    cam = pgc.GradCAM(model=net, target_layers=[net.blocks[-1].norm1], reshape_transform=rt)

    def chefer_torch():
        for b in net.blocks:
            b.attn.keep = True
        out = net(xt)
        attns = [b.attn.attn for b in net.blocks]
        for a in attns:
            a.retain_grad()
        out[0, c].backward()
        R = torch.eye(attns[0].shape[-1])
        for a in attns:
            w = (a.grad[0] * a[0]).clamp(min=0).mean(dim=0)
            R = R + w @ R
        net.zero_grad(set_to_none=True)
        return R[0, 1:]

    res = {
        "onnxfix gradcam": _median(lambda: ex.explain(x, method="gradcam", target=c).attribution, repeat),
        "pytorch-grad-cam GradCAM": _median(lambda: cam(input_tensor=xt, targets=[ClassifierOutputTarget(c)]),
                                            repeat),
        "onnxfix attention-gradient": _median(lambda: ex.explain(x, method="attention-gradient",
                                                                 target=c).attribution, repeat),
        "torch Chefer recipe": _median(chefer_torch, repeat),
    }
    cam.__exit__(None, None, None)
    for k, v in res.items():
        print(f"{k:32s} {1000 * v:8.2f} ms", flush=True)
    print(f"gradcam: pytorch-grad-cam / onnxfix = {res['pytorch-grad-cam GradCAM'] / res['onnxfix gradcam']:.2f}x")
    print(f"attention-gradient: torch / onnxfix = "
          f"{res['torch Chefer recipe'] / res['onnxfix attention-gradient']:.2f}x")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["localise", "speed"])
    ap.add_argument("--model", type=Path, default=ROOT / "sample_models" / "vit_shapes.onnx")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=2002)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", nargs="*", help="localise: only these methods (names as in the table's first word)")
    a = ap.parse_args(argv)
    if a.what == "localise":
        rows = localise(a.model, a.n, a.seed, [m for m in METHODS if not a.only or m[0] in a.only])
        print()
        print(table(rows))
        result: object = rows
    else:
        result = speed(a.model, a.repeat)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
