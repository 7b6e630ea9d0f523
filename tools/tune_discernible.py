"""Tune the discernible-neuron parameters (α_cur, α_pre, α_suc, k) with a UCB1 bandit on a dataset with boxes.

The paper's procedure: each arm is one point of a grid of parameters; a round draws a random image of the tuning
split, explains its ground-truth class with the arm's parameters and rewards a pointing-game hit (the heatmap's
maximum inside a ground-truth box or mask). After the rounds the arm with the best mean reward is the tuned
setting. The report is the pointing game on the *held-out* split of fixations, discernible with the defaults and
discernible tuned (the dataset is shuffled with ``--seed`` and cut in two halves: tune on one, report on the other).

Usage::

    python tools/tune_discernible.py MODEL DATASET [--rounds 400] [--seed 0] [--limit N] [--json OUT]
    python tools/tune_discernible.py sample_models/resnet_shapes.onnx DIR --make-shapes 200   # render a set first

``DATASET`` is a folder in the evaluation format (annotations.json / annotations.csv / VOC XML; read by
``onnxfix.evaluate.dataset.load_dataset`` when it exists, else annotations.json directly). ``--make-shapes N``
first writes N shape images with boxes (tools/samples_data.py, the data resnet_shapes was trained on) into DATASET.

Decisions: α_suc multiplies every score alike and only the ratio α_pre : α_cur changes a ranking, so the grid
spans α_pre/α_cur ∈ {0, 0.25, 0.5, 1, 2, ∞} (α_cur = 0 for ∞) × k ∈ {1, 2, 3, 5, 8} with α_suc = 1 (30 arms);
rewards are deterministic per (arm, image) and cached; UCB1's exploration constant is √2 (Auer et al.). The
recommendation is the arm with the best sample mean; ties (frequent: the pointing game saturates on easy sets) are
re-scored on the whole tuning split, then go to the most pulled arm, then the smallest k.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxfix  # noqa: E402
from onnxfix.fixations.discernible import DEFAULTS  # noqa: E402

RATIOS = [(1.0, 0.0), (1.0, 0.25), (1.0, 0.5), (1.0, 1.0), (1.0, 2.0), (0.0, 1.0)]
KS = [1, 2, 3, 5, 8]


@dataclass
class Item:
    path: Path
    label: int | str
    boxes: list[list[float]]
    mask: Path | None = None


def arms(ks: list[int] | None = None) -> list[dict[str, float]]:
    return [{"alpha_cur": c, "alpha_pre": p, "alpha_suc": 1.0, "k": k} for c, p in RATIOS for k in (ks or KS)]


def load(folder: Path) -> list[Item]:
    """Items with a label and at least one box or a mask."""
    try:
        from onnxfix.evaluate.dataset import load_dataset  # type: ignore[import-not-found]

        ds = load_dataset(folder)
        items = [Item(Path(it.path), it.label, [list(b) for b in (it.boxes or [])],
                      Path(it.mask) if getattr(it, "mask", None) else None) for it in ds.items]
    except ImportError:
        ann = json.loads((folder / "annotations.json").read_text())
        items = [Item(folder / d["file"], d["label"], d.get("boxes") or [],
                      folder / d["mask"] if d.get("mask") else None) for d in ann["images"]]
    return [it for it in items if it.boxes or it.mask]


def region(item: Item, hw: tuple[int, int], kind: str = "box") -> np.ndarray:
    """The ground-truth region: the union of the boxes (``kind="box"``; the mask when there is no box) or the mask
    (``kind="mask"``, stricter: the object's own pixels; the boxes when there is no mask)."""
    r = np.zeros(hw, bool)
    use_mask = item.mask is not None and (kind == "mask" or not item.boxes)
    if use_mask:
        from PIL import Image
        return np.asarray(Image.open(item.mask).convert("L")) > 0
    for x0, y0, x1, y1 in item.boxes:
        r[max(0, int(y0)):max(0, int(y1)), max(0, int(x0)):max(0, int(x1))] = True
    return r


def pointing(heat: np.ndarray, reg: np.ndarray) -> float:
    """1 when a maximum of the heatmap lies in the region (every pixel at the maximum counts)."""
    if not reg.any():
        return float("nan")
    if heat.max() <= 0:
        return 0.0
    ys, xs = np.nonzero(heat == heat.max())
    return float(reg[ys, xs].any())


def box_iou(box, truth: list[list[float]]) -> float:
    """Largest IoU of the explanation's box with a ground-truth box (NaN without boxes)."""
    if not truth:
        return float("nan")
    if box is None:
        return 0.0
    x0, y0, x1, y1 = (float(v) for v in box)
    best = 0.0
    for g0, h0, g1, h1 in truth:
        iw = max(0.0, min(x1, g1) - max(x0, g0))
        ih = max(0.0, min(y1, h1) - max(y0, h0))
        union = (x1 - x0) * (y1 - y0) + (g1 - g0) * (h1 - h0) - iw * ih
        best = max(best, iw * ih / union if union > 0 else 0.0)
    return best


class Scorer:
    """Pointing-game hit of (method, parameters, image), cached; times every explanation."""

    def __init__(self, ex: onnxfix.Explainer, items: list[Item], reward: str = "box"):
        self.ex, self.items, self.reward, self.cache, self.seconds = ex, items, reward, {}, {}

    def hits(self, i: int, method: str, params: dict | None = None) -> dict[str, float]:
        key = (i, method, tuple(sorted((params or {}).items())))
        if key not in self.cache:
            it = self.items[i]
            t0 = time.perf_counter()
            e = self.ex.explain(str(it.path), method=method, target=it.label, **(params or {}))
            self.seconds.setdefault(method, []).append(time.perf_counter() - t0)
            hits = {kind: pointing(e.heatmap, region(it, e.heatmap.shape, kind)) for kind in ("box", "mask")}
            hits["iou"] = box_iou(e.box, it.boxes)
            hits["points"] = float(len(e.points)) if e.points is not None else float("nan")
            self.cache[key] = hits
        return self.cache[key]

    def hit(self, i: int, method: str, params: dict | None = None) -> float:
        return self.hits(i, method, params)[self.reward]

    def score(self, idx: list[int], method: str, params: dict | None = None, kind: str | None = None) -> float:
        return float(np.nanmean([self.hits(i, method, params)[kind or self.reward] for i in idx]))


def ucb1(scorer: Scorer, idx: list[int], candidates: list[dict], rounds: int, rng: np.random.Generator):
    """UCB1 over ``candidates``: returns (best arm, per-arm pulls and mean reward)."""
    n = np.zeros(len(candidates))
    s = np.zeros(len(candidates))
    for t in range(1, rounds + 1):
        if t <= len(candidates):
            a = t - 1
        else:
            a = int(np.argmax(s / n + np.sqrt(2.0 * math.log(t) / n)))
        r = scorer.hit(int(rng.choice(idx)), "discernible", candidates[a])
        n[a] += 1
        s[a] += 0.0 if math.isnan(r) else r
    mean = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    # the arms with the best sample mean are re-scored on the whole tuning split (saturated rewards tie often);
    # remaining ties: the most pulled, then the smallest k (cheapest), then grid order
    tied = [a for a in range(len(candidates)) if n[a] > 0 and mean[a] >= mean.max() - 1e-12]
    full = {a: scorer.score(idx, "discernible", candidates[a]) for a in tied}
    best = min(tied, key=lambda a: (-full[a], -n[a], candidates[a]["k"], a))
    return candidates[best], [{"arm": c, "pulls": int(k), "mean": float(m)} for c, k, m in zip(candidates, n, mean,
                                                                                              strict=True)]


def make_shapes(folder: Path, n: int, seed: int) -> None:
    """Write ``n`` shape renders (2× the resnet_shapes input size) with boxes and an annotations.json."""
    sys.path.insert(0, str(ROOT / "tools"))
    from samples_data import SHAPE_CLASSES, render_shapes  # type: ignore[import-not-found]

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img, cls, box = render_shapes(rng, 64)
        name = f"images/{i:04d}.png"
        img.save(folder / name)
        rows.append({"file": name, "label": int(cls), "boxes": [box]})
    tmp = folder / "annotations.json.tmp"
    tmp.write_text(json.dumps({"classes": list(SHAPE_CLASSES), "images": rows}, indent=1))
    os.replace(tmp, folder / "annotations.json")


def make_digits(folder: Path, n: int, seed: int) -> None:
    """Write ``n`` digits_loc-style renders of the 300 digits the digits_loc model never saw
    (tools/build_eval_sets.py's renderer and split, another seed) with boxes, masks and an annotations.json."""
    sys.path.insert(0, str(ROOT / "tools"))
    import build_eval_sets as bes  # type: ignore[import-not-found]

    _, (xte8, yte) = bes._digits_split()
    rng = np.random.default_rng(1000 + seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img, box, mask = bes.render_digit_loc(xte8[i % len(xte8)], rng)
        name, mname = f"images/{i:04d}.png", f"masks/{i:04d}.png"
        img.save(folder / name)
        mask.save(folder / mname)
        rows.append({"file": name, "label": int(yte[i % len(xte8)]), "boxes": [box], "mask": mname})
    tmp = folder / "annotations.json.tmp"
    tmp.write_text(json.dumps({"classes": [str(i) for i in range(10)], "images": rows}, indent=1))
    os.replace(tmp, folder / "annotations.json")


METHODS3 = ("fixations", "discernible_default", "discernible_tuned")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("dataset")
    p.add_argument("--rounds", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    p.add_argument("--reward", choices=["box", "mask"], default="box",
                   help="pointing game against the boxes (the paper) or the masks (stricter)")
    p.add_argument("--make-shapes", type=int, default=0, metavar="N", help="first render N shape images")
    p.add_argument("--make-digits", type=int, default=0, metavar="N", help="first render N digits_loc images")
    p.add_argument("--ks", default=None, help="comma-separated k values of the grid (default 1,2,3,5,8; deep "
                   "networks: 1,2 — larger k saturates and takes seconds per image)")
    p.add_argument("--grid", action="store_true",
                   help="also score every arm on both splits (box and mask pointing): the exhaustive table")
    p.add_argument("--json", default=None, help="write the report as JSON to this file")
    a = p.parse_args(argv)
    folder = Path(a.dataset)
    if a.make_shapes:
        make_shapes(folder, a.make_shapes, a.seed)
    if a.make_digits:
        make_digits(folder, a.make_digits, a.seed)
    items = load(folder)
    if a.limit:
        items = items[: a.limit]
    if len(items) < 4:
        print(f"{folder}: need at least 4 images with boxes, found {len(items)}", file=sys.stderr)
        return 2
    ex = onnxfix.Explainer(a.model)
    rng = np.random.default_rng(a.seed)
    order = [int(i) for i in rng.permutation(len(items))]
    tune, held = order[: len(order) // 2], order[len(order) // 2:]
    sc = Scorer(ex, items, a.reward)
    try:
        ks = [int(v) for v in a.ks.split(",")] if a.ks else None
    except ValueError:
        print(f"--ks: expected integers like 1,2,3, got {a.ks!r}", file=sys.stderr)
        return 2
    grid = arms(ks)
    best, table = ucb1(sc, tune, grid, a.rounds, rng)
    default = dict(DEFAULTS)
    runs = {"fixations": ("fixations", None), "discernible_default": ("discernible", default),
            "discernible_tuned": ("discernible", best)}
    report = {
        "model": a.model, "dataset": str(folder), "images": len(items), "tune": len(tune), "held_out": len(held),
        "rounds": a.rounds, "reward": a.reward, "default": default, "tuned": best,
        "pointing": {split: {kind: {name: sc.score(idx, m, prm, kind) for name, (m, prm) in runs.items()}
                             for kind in ("box", "mask", "iou", "points")}
                     for split, idx in (("held_out", held), ("tune", tune))},
        "ms_per_explanation": {m: 1000 * float(np.median(v)) for m, v in sc.seconds.items()},
        "arms": sorted(table, key=lambda r: -r["pulls"]),
    }
    if a.grid:
        report["grid"] = [{"arm": arm, **{f"{kind}_{split}": sc.score(idx, "discernible", arm, kind)
                                          for kind in ("box", "mask", "iou", "points")
                                          for split, idx in (("tune", tune), ("held_out", held))}}
                          for arm in grid]
    print(f"{len(items)} images ({len(tune)} tune / {len(held)} held out), {a.rounds} UCB1 rounds, "
          f"reward: {a.reward} pointing")
    print(f"tuned: {best}   default: {default}")
    print("pointing game          box held-out  box tune  mask held-out  mask tune")
    pt = report["pointing"]
    for key in METHODS3:
        print(f"  {key:20s} {pt['held_out']['box'][key]:12.3f}  {pt['tune']['box'][key]:8.3f}  "
              f"{pt['held_out']['mask'][key]:13.3f}  {pt['tune']['mask'][key]:9.3f}   box IoU held-out "
              f"{pt['held_out']['iou'][key]:.3f}, points {pt['held_out']['points'][key]:.0f}")
    print("ms per explanation (median): " + ", ".join(f"{m} {v:.1f}" for m, v in
                                                      report["ms_per_explanation"].items()))
    print("most pulled arms (pulls, mean reward):")
    for r in report["arms"][:6]:
        print(f"  {r['arm']}  {r['pulls']:4d}  {r['mean']:.3f}")
    if a.grid:
        print("every arm: box tune/held-out, mask tune/held-out, box IoU tune/held-out, mean points")
        for r in report["grid"]:
            print(f"  {r['arm']['alpha_cur']:4.2f} {r['arm']['alpha_pre']:4.2f} k={r['arm']['k']}  "
                  f"{r['box_tune']:.3f} {r['box_held_out']:.3f}  {r['mask_tune']:.3f} {r['mask_held_out']:.3f}  "
                  f"{r['iou_tune']:.3f} {r['iou_held_out']:.3f}  {r['points_tune']:.0f}")
    if a.json:
        out = Path(a.json)
        with tempfile.NamedTemporaryFile("w", dir=out.parent or ".", delete=False, suffix=".tmp") as f:
            json.dump(report, f, indent=1)
        os.replace(f.name, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
