#!/usr/bin/env python
"""Build the Swin-like sample model ``sample_models/swin_shapes.onnx`` (issue #12 item 5).

    python tools/build_swin.py                  # train (one CPU thread, ~5 min), export, check, write the files
    python tools/build_swin.py --out /tmp/m     # somewhere else
    python tools/build_swin.py --smoke          # tiny data, one epoch (exercises the code paths; the model is useless)

The net is tools/nets_swin.SwinTiny (two stages of shifted-window attention with relative position bias and a
patch merging between them), trained on the generated one-object scenes of tools/scenes.py with the v2 training
helpers of tools/build_models_v2.py (AdamW one-cycle, horizontal flips, the dense auxiliary loss on the last
tokens; same data and seeds as ``vit_shapes``), exported by the legacy exporter (opset 17, constant folding,
dynamic batch), stamped with onnxfix's preprocessing metadata, checked (onnx.checker, < 2 MB, ONNX Runtime ==
torch) and scored on the 600 held-out scenes.  Files: swin_shapes.onnx, .labels.txt, .png (a held-out scene at
2x), .json (what the model is, accuracy, the sample's ground truth and the ``twin`` section
tools/nets_swin.load_swin_twin reads).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from onnx import helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import build_models_v2 as B  # noqa: E402
from tools import nets_swin as NS  # noqa: E402

NAME = "swin_shapes"
KWARGS = {"n_classes": 3, "size": 64, "patch": 4, "dim": 32, "depths": [2, 2], "heads": [2, 4], "window": 4,
          "mlp_ratio": 2.0}
SPEC = dict(seed=901, epochs=20, lr=2e-3, bs=64, wd=0.05, norm=B.HALF, data="cls")
WHAT = ("Swin-like: patch embedding Conv 4x4/4 + LayerNorm (16x16 tokens, dim 32); stage 1: 2 blocks (window 4, "
        "2 heads; the second with cyclic shift 2 = Slice/Concat roll and the -100 shift mask), patch merging "
        "(strided Slices, Concat, LayerNorm, MatMul 128-64) to 8x8 tokens; stage 2: 2 blocks (window 4, 4 heads, "
        "the second shifted); window partition/reverse = Reshape/Transpose/Reshape; relative position bias "
        "(folded to a constant per block); pre-norm, MLP ratio 2 with GELU (Erf); LayerNorm, ReduceMean over "
        "tokens, Gemm; legacy exporter, opset 17, dynamic batch")
DESCRIPTION = ("Small Swin-like shape classifier (circle/square/triangle; one object per image): patch 4, two stages "
               "of shifted-window attention (window 4) with patch merging; attention probabilities are one Softmax "
               "per block over [batch x windows, heads, 16, 16].")


def train(smoke: bool) -> NS.SwinTiny:
    torch.manual_seed(SPEC["seed"])
    net = NS.SwinTiny(**KWARGS)
    d = B.data(SPEC["data"])
    tr = d["train"]
    y = torch.from_numpy(tr["y"])
    rng = np.random.default_rng(SPEC["seed"])
    torch.manual_seed(SPEC["seed"] + 1)
    aux = torch.nn.Linear(net.num_features, 4)
    net.add_module("_aux", aux)  # trained with the net, removed before export

    def step(idx):
        im, lab = tr["images"][idx], tr["labels"][idx]
        flip = rng.uniform(size=len(idx)) < 0.5
        im = np.where(flip[:, None, None, None], im[:, :, ::-1], im)
        lab = np.where(flip[:, None, None], lab[:, :, ::-1], lab)
        tok = net.tokens(B.tensor(im, SPEC["norm"]))
        return F.cross_entropy(net.head(tok.mean(1)), y[idx]) + B.dense_aux(tok, aux, lab, net.final_grid)

    B.fit(net, len(y), step, 1 if smoke else SPEC["epochs"], SPEC["lr"], SPEC["bs"], SPEC["seed"], wd=SPEC["wd"],
          channels_last=False)
    del net._aux
    return net.eval()


def build(out_dir: Path, smoke: bool = False) -> dict:
    B.SMOKE = smoke
    t_cpu, t_wall = time.process_time(), time.time()
    B.log(f"== {NAME}")
    net = train(smoke)
    n_params = sum(p.numel() for p in net.parameters())
    m = B.export_legacy(net, (torch.zeros(1, 3, 64, 64),), ["image"], ["logits"], dynamic=True)
    m = B.fix_output_shapes(m)
    labels = B.LABELS
    del m.metadata_props[:]
    helper.set_model_props(m, B.metadata(SPEC["norm"], labels, DESCRIPTION))
    m.doc_string = DESCRIPTION
    m.producer_name, m.producer_version = "onnxfix tools/build_swin.py", torch.__version__
    onnx.checker.check_model(m, full_check=True)
    raw = m.SerializeToString()
    if len(raw) >= B.MAX_BYTES:
        raise SystemExit(f"{NAME}: {len(raw)} bytes (>= 2 MB)")
    sess = B.session(m)
    spec = {"data": "cls", "norm": SPEC["norm"], "inputs": ["image"]}
    diff = B.parity(NAME, spec, net, sess)
    if diff > 1e-4:
        raise SystemExit(f"{NAME}: ONNX Runtime differs from torch by {diff:.3g}")
    pmap = NS.swin_param_map(net, m)
    metrics, sample = B.evaluate(NAME, spec, sess)
    B.log(f"  held-out: {json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)})}")
    te = B.data("cls")["test"]
    sc = te["kept"][sample["index"]]
    png = io.BytesIO()
    sc.image2x.save(png, format="PNG", optimize=True)
    sample.update({"image": f"{NAME}.png", "image_size": list(sc.image2x.size),
                   "boxes": [[float(v) * 2 for v in b] for b in sc.boxes],
                   "boxes_input": [[float(v) for v in b] for b in sc.boxes],
                   "classes": sc.classes.tolist(), "class_names": [labels[c] for c in sc.classes]})
    cpu, wall = time.process_time() - t_cpu, time.time() - t_wall
    info = {
        "name": NAME, "description": DESCRIPTION, "architecture": WHAT, "file": f"{NAME}.onnx",
        "size_bytes": len(raw), "params": n_params, "exporter": "legacy TorchScript, opset 17, constant folding",
        "inputs": [{"name": i.name, "shape": s} for i, s in zip(m.graph.input, B.shapes_of(m.graph.input),
                                                               strict=True)],
        "outputs": [{"name": o.name, "shape": s} for o, s in zip(m.graph.output, B.shapes_of(m.graph.output),
                                                                strict=True)],
        "labels": labels,
        "preprocess": {"resize": "whole image, PIL bilinear, to 64x64", "scale": B.SCALE_STR,
                       "mean": list(SPEC["norm"][0]), "std": list(SPEC["norm"][1])},
        "metadata": {p.key: p.value for p in m.metadata_props},
        "ops": B.op_counts(m), "heldout": metrics,
        "training": {k: SPEC[k] for k in ("seed", "epochs", "lr", "bs", "wd")} | {
            "data": "tools/scenes.classification_set(6000, 2001) (held-out: 600, seed 2002)", "smoke": smoke},
        "token_layout": "raster (row-major on the 16x16 / 8x8 grid) outside the windows; window_partition gives "
                        "[batch x nW, 16, C] with windows row-major per image and images outermost; odd blocks roll "
                        "the grid by (-2, -2) before the partition and by (+2, +2) after the reverse",
        "max_abs_diff_ort_torch": diff, "build_cpu_seconds": round(cpu, 1), "build_wall_seconds": round(wall, 1),
        "sample": sample,
        "twin": {"class": "SwinTiny", "module": "tools/nets_swin.py", "kwargs": KWARGS, "params": pmap},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{NAME}.onnx").write_bytes(raw)
    (out_dir / f"{NAME}.labels.txt").write_text("\n".join(labels) + "\n")
    (out_dir / f"{NAME}.png").write_bytes(png.getvalue())
    (out_dir / f"{NAME}.json").write_text(json.dumps(info, indent=1) + "\n")
    B.log(f"  {len(raw) / 1024:.0f} KiB, {n_params} params, |ORT-torch| {diff:.2e}, ops {info['ops']}")
    B.log(f"  built in {cpu:.1f}s cpu / {wall:.1f}s wall")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "sample_models")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    build(a.out, a.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
