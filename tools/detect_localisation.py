"""Localisation of explanations on generated scenes with known objects (issue 11, "How it must be shown").

For each sample detector (yolov8_shapes, yolov5_shapes, nms_shapes) and each method that applies to it, every
detection the model makes on ``--scenes`` generated scenes (tools/scenes.py ``detection_set``, 1-3 objects, 30 % with
an unlabelled distractor) is explained with ``Box(i=k)``; a hit is a map whose peak (argmax of the heatmap at the
64×64 model input, first pixel on ties; a flat map is a miss) lies inside that detection's box, one pixel of slack
on each side. For the U-Net (unet_shapes) every class the model predicts on a scene (≥ ``MIN_PIXELS`` pixels) is
explained with ``Region(cls)`` (its predicted mask, pytorch-grad-cam's SemanticSegmentationTarget); a hit is a peak
inside that mask dilated by one pixel; the CAMs are also run at the last decoder feature map (row
``unet_shapes @ d1``), named explicitly (it is also the automatic layer: the input of the final 1×1 classifier).
``chance`` is the rate a uniformly random peak would reach (mean area of the slack box / dilated mask over the image).

    python tools/detect_localisation.py                        # 100 scenes, every model, table on stdout
    python tools/detect_localisation.py --scenes 20 --json     # JSON: {model: {method: {hits, n, rate}}}
    python tools/detect_localisation.py --only yolov8_shapes --methods gradcam,rise

EigenCAM is target-agnostic (the first principal component of the layer): its rate on images with several
detections is bounded by how often the explained detection is the dominant one. RISE uses ``--masks`` masks (2000,
its default, on the detectors; the U-Net's ``--unet-masks``, default 500, to keep the run short), D-RISE ``--masks``
as well.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import scenes  # noqa: E402

DETECTORS = ("yolov8_shapes", "yolov5_shapes", "nms_shapes")
SEGMENTER = "unet_shapes"
METHODS = ("gradcam", "gradcam++", "layercam", "hirescam", "eigencam", "saliency", "fixations", "occlusion", "rise",
           "d-rise")
CAMS = ("gradcam", "gradcam++", "layercam", "hirescam", "eigencam")
#: the U-Net's last decoder feature map (before the 1×1 classifier conv); its auto Grad-CAM layer is the logits
UNET_LAYER = "/d1/d1.1/act/Relu_output_0"
#: a predicted class region smaller than this (pixels) is not explained (a few stray pixels)
MIN_PIXELS = 10
#: the first scene seed not used by training (1001), held-out (1002) or the tests (4242-4244)
SEED = 5151


def peak(heatmap: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of the heatmap's maximum (first in row-major order), None for a flat map."""
    h = np.asarray(heatmap, np.float64)
    if not np.isfinite(h).all() or h.max() <= h.min():
        return None
    y, x = np.unravel_index(int(np.argmax(h)), h.shape)
    return int(x), int(y)


def in_box(p: tuple[int, int] | None, box, slack: float = 1.0) -> bool:
    """Is pixel ``p`` (its centre) inside ``box`` = [x0, y0, x1, y1) in input pixels, ``slack`` pixels around?"""
    if p is None:
        return False
    x0, y0, x1, y1 = box
    cx, cy = p[0] + 0.5, p[1] + 0.5
    return x0 - slack <= cx <= x1 + slack and y0 - slack <= cy <= y1 + slack


def box_area(box, size: int = 64, slack: float = 1.0) -> float:
    x0, y0, x1, y1 = box
    w = min(x1 + slack, size) - max(x0 - slack, 0)
    h = min(y1 + slack, size) - max(y0 - slack, 0)
    return max(w, 0) * max(h, 0) / (size * size)


def dilate(mask: np.ndarray) -> np.ndarray:
    """3×3 binary dilation (one pixel of slack)."""
    m = np.pad(mask.astype(bool), 1)
    out = np.zeros_like(mask, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= m[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out


def _explain(ex, images: list, method: str, target, options: dict) -> list:
    """Explanations of ``images`` with one target; an image the target does not resolve on is None."""
    from onnxfix.errors import InputError

    try:
        return list(ex.explain(images, method=method, target=target, **options))
    except InputError:
        out = []
        for img in images:
            try:
                out.append(ex.explain(img, method=method, target=target, **options))
            except InputError:
                out.append(None)
        return out


def evaluate_detector(name: str, images: np.ndarray, methods=METHODS, masks: int | None = None,
                      max_per_scene: int = 3, samples: Path | None = None) -> dict:
    """{method: {"hits", "n", "rate", "chance", "seconds"}} (or {"refused": why}) for detector ``name``."""
    import onnxfix
    from onnxfix import Box, heads

    ex = onnxfix.Explainer((samples or ROOT / "sample_models") / f"{name}.onnx")
    why = ex.methods()
    n_dets = []
    for img in images:
        x = ex.prepare(img)[0]
        out = ex.model.runtime.run({ex.model.input: x}, [ex.model.head.logits])[ex.model.head.logits]
        item = out if ex.model.head.kind == "nms" else out[0:1]
        n_dets.append(min(len(heads.detections(ex.model.head, item)), max_per_scene))
    res: dict = {}
    for method in methods:
        if method not in why:
            continue
        if why[method] is not None:
            res[method] = {"refused": why[method]}
            continue
        opts = {"masks": masks} if masks and method in ("rise", "d-rise") else {}
        hits = n = 0
        chance = 0.0
        t0 = time.time()
        for k in range(max(n_dets, default=0)):
            batch = [img for img, nd in zip(images, n_dets, strict=True) if nd > k]
            for e in _explain(ex, batch, method, Box(i=k), opts):
                if e is None or e.resolved.box is None:
                    continue
                n += 1
                hits += in_box(peak(e.heatmap), e.resolved.box)
                chance += box_area(e.resolved.box)
        res[method] = {"hits": int(hits), "n": n, "rate": hits / max(n, 1), "chance": chance / max(n, 1),
                       "seconds": round(time.time() - t0, 1)}
    return res


def evaluate_segmenter(images: np.ndarray, methods=METHODS, masks: int | None = 500,
                       samples: Path | None = None, layer: str | None = None) -> dict:
    """{method: {...}} for the U-Net: each predicted class explained with Region(cls), peak inside its mask."""
    import onnxfix
    from onnxfix import Region

    ex = onnxfix.Explainer((samples or ROOT / "sample_models") / f"{SEGMENTER}.onnx")
    why = ex.methods()
    present = []
    for img in images:
        x = ex.prepare(img)[0]
        out = ex.model.runtime.run({ex.model.input: x}, [ex.model.head.logits])[ex.model.head.logits]
        counts = np.bincount(out[0].argmax(0).ravel(), minlength=out.shape[1])
        present.append([c for c in range(1, out.shape[1]) if counts[c] >= MIN_PIXELS])
    res: dict = {}
    for method in methods:
        if method not in why:
            continue
        if why[method] is not None:
            res[method] = {"refused": why[method]}
            continue
        opts = {"masks": masks} if masks and method == "rise" else {}
        if layer is not None:
            if method not in CAMS:
                continue
            opts = {"layer": layer}
        hits = n = 0
        chance = 0.0
        t0 = time.time()
        for cls in range(1, 4):
            batch = [img for img, p in zip(images, present, strict=True) if cls in p]
            if not batch:
                continue
            for e in _explain(ex, batch, method, Region(cls), opts):
                if e is None:
                    continue
                mask = dilate(np.asarray(e.resolved.weights)[0, cls] > 0)
                p = peak(e.heatmap)
                n += 1
                hits += bool(p is not None and mask[p[1], p[0]])
                chance += float(mask.mean())
        res[method] = {"hits": int(hits), "n": n, "rate": hits / max(n, 1), "chance": chance / max(n, 1),
                       "seconds": round(time.time() - t0, 1)}
    return res


def run(n_scenes: int = 100, seed: int = SEED, only=None, methods=METHODS, masks: int | None = None,
        unet_masks: int | None = 500, samples: Path | None = None, log=None) -> dict:
    """Every model's table: {model: {method: {...}}}, ``only`` restricts the models."""
    images = scenes.detection_set(n_scenes, seed, 64)["images"]
    out = {}
    for name in (*DETECTORS, SEGMENTER):
        if only and name not in only:
            continue
        t0 = time.time()
        if name == SEGMENTER:
            out[name] = evaluate_segmenter(images, methods, unet_masks, samples)
            out[f"{name} @ d1"] = evaluate_segmenter(images, methods, None, samples, layer=UNET_LAYER)
        else:
            out[name] = evaluate_detector(name, images, methods, masks, samples=samples)
        if log:
            log(f"{name}: {time.time() - t0:.0f} s")
    return out


def table(results: dict, n_scenes: int, seed: int = SEED) -> str:
    """Markdown table: rows = models, columns = methods, cells = rate (hits/n); chance in the last column."""
    methods = [m for m in METHODS if any(m in r for r in results.values())]
    lines = ["| model | " + " | ".join(methods) + " | chance |", "|---" * (len(methods) + 2) + "|"]
    for name, r in results.items():
        cells, chance = [], []
        for m in methods:
            v = r.get(m)
            if v is None:
                cells.append("—")
            elif "refused" in v:
                cells.append("refused")
            else:
                cells.append(f"{v['rate']:.2f} ({v['hits']}/{v['n']})")
                chance.append(v["chance"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(chance) if chance else 0:.2f} |")
    return "\n".join(lines) + f"\n\n{n_scenes} scenes (tools/scenes.py detection_set, seed {seed})."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--only", default=None, help="comma-separated model names")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--masks", type=int, default=None, help="RISE / D-RISE masks on the detectors (their defaults)")
    p.add_argument("--unet-masks", type=int, default=500, help="RISE masks on the U-Net")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    res = run(a.scenes, a.seed, a.only.split(",") if a.only else None, tuple(a.methods.split(",")), a.masks,
              a.unet_masks, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps(res, indent=1) if a.json else table(res, a.scenes, a.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
