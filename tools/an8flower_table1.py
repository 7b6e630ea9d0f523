#!/usr/bin/env python
"""Reproduce Table 1 of "Visual Explanation by Interpretation" (Oramas et al., ICLR 2019, §4.3) on the bundled sets.

    python tools/an8flower_table1.py [--sets an8flower6,an8flower12] [--folds 5] [--resample floor|resize]
                                     [--k 4] [--json OUT.json]

Protocol (§4.3): area under the IoU-vs-threshold curve of each method's heatmap against the an8Flower mask
(``onnxfix evaluate --metrics mask``: ``mask_iou_auc``, thresholds 1/20 … 1 of the map's maximum), k-fold
cross-validation of the feature selection: per fold, ``onnxfix interpret`` on the other folds' images (μ-lasso,
μ = 10) and ``onnxfix evaluate`` on the held-out fold; mean ± std over the folds, in percent, as the paper.

Rows (the paper's): Upsampled activations / Deconv+GB / ours — the same relevant filters (method
``interpretation`` with visual = activation / exact / nearest) — and Grad-CAM, Guided Grad-CAM, Grad-CAM++,
Guided Grad-CAM++ (this tool registers ``guided-gradcam++`` and the two variants in its own process).

``--resample resize`` swaps the stride-1 backward's resampling U_s (``floor(i/s)``, cropped to the stride-1 size;
onnxfix/autodiff/modes.py) for a nearest-neighbour *resize* of the signal to the stride-1 size ``A + 2·O − M + 1``
with Matlab ``imresize`` semantics (src = ⌊(i + ½)·B/B₁⌋), the paper's literal reading, to measure the difference.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxfix.interpret import explanation as X  # noqa: E402 - registers "interpretation"
from onnxfix.methods.base import METHODS, Attribution, register_method  # noqa: E402
from onnxfix.methods.gradients import nearest_upsample, saliency_map  # noqa: E402
from onnxfix.methods.guided import GuidedGradCAM  # noqa: E402

ROWS = [("Upsam. Act.", "interpretation-act"), ("Deconv+GB", "interpretation-gb"), ("Grad-CAM", "gradcam"),
        ("Guided Grad-CAM", "guided-gradcam"), ("Grad-CAM++", "gradcam++"),
        ("Guided Grad-CAM++", "guided-gradcam++"), ("Ours", "interpretation")]
#: Table 1 of the paper (area under the IoU curve, %, 5 folds; the extracted text lists the two columns in this order).
PAPER = {"an8flower6": [16.8, 21.3, 17.5, 19.9, 15.6, 19.6, 22.5],
         "an8flower12": [16.1, 21.9, 14.8, 19.4, 14.6, 19.7, 23.2]}


@dataclass
class _ActOptions(X.Interpretation.Options):
    visual: str = "activation"


@dataclass
class _GBOptions(X.Interpretation.Options):
    visual: str = "exact"


def register_variants() -> None:
    """The Table 1 rows that are not onnxfix methods of their own (this process only)."""
    if "interpretation-act" in METHODS:
        return
    import onnxfix.methods  # noqa: F401 - every built-in method registered before these

    @register_method
    class InterpretationAct(X.Interpretation):
        name = "interpretation-act"
        summary = "relevant filters, upsampled activation maps"
        Options = _ActOptions

    @register_method
    class InterpretationGB(X.Interpretation):
        name = "interpretation-gb"
        summary = "relevant filters, Deconv+GB (true strided backward)"
        Options = _GBOptions

    @register_method
    class GuidedGradCAMPP(GuidedGradCAM):
        name = "guided-gradcam++"
        summary = "guided backprop × Grad-CAM++ upsampled to the input"

        def attribute_resolved(self, model, x, values, targets, opts):
            g = self.input_gradient(model, x, values, targets)
            gc = METHODS["gradcam++"]
            cams = gc.attribute_resolved(model, x, values, targets, gc.parse_options({"layer": opts.layer})).values
            hw = g.shape[2:4]
            up = np.stack([nearest_upsample(c, hw) for c in cams]).astype(g.dtype)
            att = g * up[:, None]
            maps = [saliency_map(att[n], model) for n in range(att.shape[0])]
            return Attribution(self.name, "input", att, maps, targets, values[model.head.logits],
                               [{"gradcam": cams[n]} for n in range(att.shape[0])])


def use_resize_resampling() -> None:
    """Replace U_s by the paper's literal nearest-neighbour resize to the stride-1 size (see the module docstring)."""
    import importlib

    modes = importlib.import_module("onnxfix.autodiff.modes")  # (the package exports a function named modes)

    def resize(b, g, s, O, O1):  # noqa: ANN001 - the engine's signature
        shape = b.op("Shape", [g], end=2)
        full = b.op("Concat", [shape, b.ints(list(O1))], axis=0)
        return b.op("Resize", [g, "", "", full], mode="nearest", nearest_mode="round_prefer_ceil",
                    coordinate_transformation_mode="half_pixel", hint="nearest_resize")

    modes.nearest_resample = resize


def folds(items: list[dict], k: int) -> list[list[int]]:
    """Stratified folds: within each label, images in file order go to folds 0, 1, …, k−1, 0, …"""
    out: list[list[int]] = [[] for _ in range(k)]
    seen: dict[int, int] = {}
    for i, it in enumerate(items):
        c = int(it["label"])
        out[seen.get(c, 0) % k].append(i)
        seen[c] = seen.get(c, 0) + 1
    return out


def subset(src: Path, items: list[dict], idx: list[int], dst: Path, classes: list[str] | None) -> None:
    dst.mkdir(parents=True)
    rows = []
    for i in idx:
        it = dict(items[i])
        for key in ("file", "mask"):
            if it.get(key):
                (dst / it[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / it[key], dst / it[key])
        rows.append(it)
    doc = {"images": rows}
    if classes:
        doc["classes"] = classes
    (dst / "annotations.json").write_text(json.dumps(doc))


def run_set(name: str, k: int, work: Path) -> dict[str, list[float]]:
    from onnxfix.evaluate.cli import cmd_evaluate
    from onnxfix.interpret.cmd_interpret import cmd_interpret

    src = ROOT / "sample_data" / name
    ann = json.loads((src / "annotations.json").read_text())
    items, classes = ann["images"], ann.get("classes")
    scores: dict[str, list[float]] = {m: [] for _, m in ROWS}
    for f, test in enumerate(folds(items, k)):
        train = [i for i in range(len(items)) if i not in set(test)]
        d = work / f"{name}-fold{f}"
        d.mkdir(parents=True)
        for suffix in (".onnx", ".labels.txt"):
            if (ROOT / "sample_models" / f"{name}{suffix}").exists():
                shutil.copyfile(ROOT / "sample_models" / f"{name}{suffix}", d / f"{name}{suffix}")
        subset(src, items, train, d / "train", classes)
        subset(src, items, test, d / "test", classes)
        with contextlib.redirect_stdout(io.StringIO()):
            cmd_interpret([str(d / f"{name}.onnx"), str(d / "train")])
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            cmd_evaluate([str(d / f"{name}.onnx"), str(d / "test"), "--methods", ",".join(m for _, m in ROWS),
                          "--metrics", "mask", "--out", str(d / "out"), "--json", "--no-chart"])
        doc = json.loads(buf.getvalue())
        if doc["errors"]:
            raise SystemExit(f"{name} fold {f}: {doc['errors'][:3]}")
        for _, m in ROWS:
            scores[m].append(100 * float(doc["summary"][m]["mean"]["mask_iou_auc"]))
        print(f"  {name} fold {f}: " + ", ".join(f"{m} {scores[m][-1]:.1f}" for _, m in ROWS), file=sys.stderr)
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="an8flower6,an8flower12")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--resample", choices=["floor", "resize"], default="floor")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    register_variants()
    if a.resample == "resize":
        use_resize_resampling()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.sets.split(","):
            results[name] = run_set(name, a.folds, Path(tmp))
    print(f"| method | {' | '.join(f'{n} (ours)' + (f' | {n} (paper)' if n in PAPER else '') for n in results)} |")
    print("|---|" + "---|" * sum(2 if n in PAPER else 1 for n in results))
    for r, (label, m) in enumerate(ROWS):
        cells = []
        for n, sc in results.items():
            cells.append(f"{np.mean(sc[m]):.1f} ± {np.std(sc[m]):.1f}")
            if n in PAPER:
                cells.append(f"{PAPER[n][r]:.1f}")
        print(f"| {label} | {' | '.join(cells)} |")
    for n, sc in results.items():
        order = sorted(ROWS, key=lambda lm: -np.mean(sc[lm[1]]))
        print(f"{n} order: " + " > ".join(label for label, _ in order))
        if n in PAPER:
            porder = sorted(range(len(ROWS)), key=lambda i: -PAPER[n][i])
            print(f"{n} paper: " + " > ".join(ROWS[i][0] for i in porder))
    if a.json:
        Path(a.json).write_text(json.dumps({"resample": a.resample, "folds": a.folds, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
