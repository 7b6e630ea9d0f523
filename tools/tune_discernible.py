"""Learn the layer-wise weights of discernible neurons as the paper does (§3.2), and measure the settings.

§3.2: for every layer and every weight (α_cur, α_pre, α_suc) separately, a Bernoulli multi-armed bandit over K
predefined values of that weight: a trial draws a random image, traces it with the arm's value and gets reward 1
when the traced box (outliers removed, tightest box around the points: §4.1.2, ``onnxfix.maps.fixation_box``)
has IoU > 0.5 with the ground truth, else 0; the bandit is solved with UCB (UCB1, Auer et al. 2002, exploration
constant √2) and the arm with the best mean reward is the layer's value. Layers are visited from the output back
to the input; a layer's search starts from the values already chosen for the others (coordinate-wise).

Usage::

    python tools/tune_discernible.py MODEL DATASET [--rounds 60] [--seed 0] [--k 3] [--location centre]
                                    [--out ALPHAS.json] [--json REPORT.json] [--grid]

``DATASET`` is a folder in the evaluation format (docs/datasets.md). It is shuffled with ``--seed`` and cut in two
halves: tune on one, report on the other. ``--grid`` first measures the global settings (location × k)
on the tuning half. ``--out`` writes ``{"layers": {node: [α_cur, α_pre, α_suc]}, ...}`` for the method's
``alphas`` option. Rewards are deterministic per (setting, image) and cached.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxfix  # noqa: E402
from onnxfix.evaluate.dataset import load_dataset, resolve_labels  # noqa: E402
from onnxfix.evaluate.metrics.pointing import pointing_hit  # noqa: E402
from onnxfix.evaluate.metrics.wsol import best_iou, box_from_points  # noqa: E402

GRID = {"alpha_cur": [0.25, 0.5, 1.0, 2.0, 4.0], "alpha_pre": [0.0, 0.25, 0.5, 1.0, 2.0],
        "alpha_suc": [0.5, 1.0, 2.0]}
WEIGHTS = ("alpha_cur", "alpha_pre", "alpha_suc")
IOU_THRESHOLD = 0.5


@dataclass
class Item:
    path: Path
    label: int
    boxes: list[list[float]]


def load(model: str, folder: Path) -> tuple[onnxfix.Explainer, list[Item]]:
    ex = onnxfix.Explainer(model)
    ds = load_dataset(folder)
    labels = getattr(ex, "labels", None)
    n = int(np.prod(ex.model.graph.shape(ex.model.head.logits)[1:]))
    items, _ = resolve_labels(ds, labels, n)
    return ex, [Item(Path(it.path), int(it.label), [list(b) for b in it.boxes]) for it in items if it.boxes]


def region(boxes: list[list[float]], hw: tuple[int, int]) -> np.ndarray:
    r = np.zeros(hw, bool)
    for x0, y0, x1, y1 in boxes:
        r[max(0, int(y0)):max(0, int(y1)), max(0, int(x0)):max(0, int(x1))] = True
    return r


def _key(params: dict) -> tuple:
    out = []
    for k, v in sorted(params.items()):
        out.append((k, tuple(sorted((n, tuple(a)) for n, a in v.items())) if isinstance(v, dict) else v))
    return tuple(out)


@dataclass
class Scorer:
    """Box IoU, IoU > 0.5 and pointing of (method, options, image), cached."""

    ex: onnxfix.Explainer
    items: list[Item]
    cache: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def measure(self, i: int, method: str, params: dict | None = None) -> dict[str, float]:
        key = (i, method, _key(params or {}))
        if key not in self.cache:
            it = self.items[i]
            t0 = time.perf_counter()
            e = self.ex.explain(str(it.path), method=method, target=it.label, **(params or {}))
            self.seconds.setdefault(method, []).append(time.perf_counter() - t0)
            hw = e.heatmap.shape
            if e.points is not None:
                box = box_from_points(e.points, hw)
            else:
                from onnxfix.evaluate.metrics.wsol import box_from_heatmap
                box = box_from_heatmap(e.heatmap)
            iou = best_iou(box, it.boxes)
            self.cache[key] = {"iou": iou, "hit": float(iou > IOU_THRESHOLD),
                               "pointing": pointing_hit(e.heatmap, region(it.boxes, hw)),
                               "points": float(len(e.points)) if e.points is not None else float("nan")}
        return self.cache[key]

    def hit(self, i: int, method: str, params: dict | None = None) -> float:
        return self.measure(i, method, params)["hit"]

    def score(self, idx: list[int], method: str, params: dict | None = None, what: str = "hit") -> float:
        return float(np.nanmean([self.measure(i, method, params)[what] for i in idx]))


def ucb1(reward, n_arms: int, rounds: int, draw) -> tuple[int, list[dict]]:
    """UCB1 (Auer et al. 2002) on a Bernoulli bandit: ``reward(arm, trial)`` ∈ {0, 1}, ``draw()`` picks the trial
    (an image). Each arm is pulled once, then the arm maximising mean + √(2 ln t / n). Returns the arm with the
    best mean (ties: more pulls, then the lower index) and per-arm statistics."""
    pulls = np.zeros(n_arms, np.int64)
    wins = np.zeros(n_arms, np.float64)
    for t in range(1, rounds + 1):
        if (pulls == 0).any():
            a = int(np.flatnonzero(pulls == 0)[0])
        else:
            a = int(np.argmax(wins / pulls + np.sqrt(2.0 * math.log(t) / pulls)))
        wins[a] += reward(a, draw())
        pulls[a] += 1
    mean = np.divide(wins, pulls, out=np.zeros(n_arms), where=pulls > 0)
    best = sorted(range(n_arms), key=lambda a: (-mean[a], -pulls[a], a))[0]
    return best, [{"pulls": int(pulls[a]), "mean": float(mean[a])} for a in range(n_arms)]


def weighted_layers(ex: onnxfix.Explainer) -> list[str]:
    """The Conv / Gemm / MatMul nodes on the traced path, output first (the order Alg. 1 visits them)."""
    from onnxfix.fixations.tracer import path_nodes
    nodes = path_nodes(ex.model.graph, ex.model.input, ex.model.head.logits)
    return [n.name for n in reversed(nodes) if n.op_type in ("Conv", "Gemm", "MatMul")]


def learn_layer_alphas(scorer: Scorer, idx: list[int], base: dict, rounds: int, rng: np.random.Generator,
                       layers: list[str], log=print) -> tuple[dict[str, list[float]], list[dict]]:
    """§3.2: per layer, per weight, a UCB1 bandit over GRID[weight]; returns {node: [α_cur, α_pre, α_suc]}."""
    start = [float(base.get(w, 1.0)) for w in WEIGHTS]
    alphas = {n: list(start) for n in layers}
    history = []
    for node in layers:
        for wi, w in enumerate(WEIGHTS):
            values = GRID[w]

            def params(v: float, node=node, wi=wi) -> dict:
                trial = {n: list(a) for n, a in alphas.items()}
                trial[node][wi] = v
                if trial[node][0] + trial[node][1] <= 0:
                    return {}
                return dict(base, alphas=trial)

            def reward(a: int, i: int, params=params, values=values) -> float:
                p = params(values[a])
                return scorer.hit(i, "discernible", p) if p else 0.0

            best, stats = ucb1(reward, len(values), rounds, lambda: int(rng.choice(idx)))
            alphas[node][wi] = values[best]
            history.append({"layer": node, "weight": w, "values": values, "best": values[best], "arms": stats})
            log(f"  {node:>28} {w:<9} -> {values[best]:<5} "
                + " ".join(f"{v}:{s['mean']:.2f}/{s['pulls']}" for v, s in zip(values, stats, strict=True)))
    return alphas, history


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--rounds", type=int, default=60, help="bandit trials per layer and weight")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=None, help="k for the bandit (default: the best of --grid, else 1)")
    ap.add_argument("--location", default=None, choices=["centre", "argmax"])
    ap.add_argument("--grid", action="store_true", help="measure location × k on the tuning half first")
    ap.add_argument("--out", type=Path, help="write the learned per-layer alphas here")
    ap.add_argument("--json", type=Path, help="write the report here")
    a = ap.parse_args(argv)
    ex, items = load(a.model, a.dataset)
    rng = np.random.default_rng(a.seed)
    order = rng.permutation(len(items))
    tune, test = sorted(order[: len(items) // 2].tolist()), sorted(order[len(items) // 2:].tolist())
    sc = Scorer(ex, items)
    report: dict = {"model": a.model, "dataset": str(a.dataset), "tune": len(tune), "test": len(test)}
    k, loc = a.k or 1, a.location or "centre"
    if a.grid:
        rows = []
        for location in ("centre", "argmax"):
            for kk in (1, 2, 3, 5, 8):
                p = {"k": kk, "location": location}
                r = {"params": p, **{w: sc.score(tune, "discernible", p, w) for w in ("hit", "iou", "pointing")}}
                rows.append(r)
                print(f"grid {json.dumps(p):<36} IoU>0.5 {r['hit']:.3f}  IoU {r['iou']:.3f}  "
                      f"pointing {r['pointing']:.3f}", flush=True)
        report["grid"] = rows
        best = max(rows, key=lambda r: (r["hit"], r["iou"], -r["params"]["k"]))
        k = a.k or best["params"]["k"]
        loc = a.location or best["params"]["location"]
    base = {"k": k, "location": loc}
    layers = weighted_layers(ex)
    print(f"bandit over {len(layers)} layers, k={k}, location={loc}, {a.rounds} trials per layer and weight")
    alphas, history = learn_layer_alphas(sc, tune, base, a.rounds, rng, layers)
    report["alphas"], report["bandit"] = alphas, history
    tuned = dict(base, alphas=alphas)
    compare = {"fixations": ("fixations", None), "discernible (defaults)": ("discernible", {}),
               "discernible (k, location)": ("discernible", base), "discernible (tuned α)": ("discernible", tuned),
               "discernible (legacy)": ("discernible", {"variant": "legacy", "k": k})}
    report["held_out"] = {}
    for name, (m, p) in compare.items():
        r = {w: sc.score(test, m, p, w) for w in ("hit", "iou", "pointing", "points")}
        report["held_out"][name] = r
        print(f"held-out {name:<28} IoU>0.5 {r['hit']:.3f}  IoU {r['iou']:.3f}  pointing {r['pointing']:.3f}  "
              f"points {r['points']:.1f}")
    if a.out:
        a.out.write_text(json.dumps({"model": Path(a.model).name, "k": k, "location": loc, "layers": alphas},
                                    indent=1) + "\n")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
