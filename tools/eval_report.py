#!/usr/bin/env python
"""Every method × every metric on the evaluation sets that exist; prints markdown tables with wall times.

    python tools/eval_report.py                          # all sets found, 20 images each
    python tools/eval_report.py --limit 5 --sets digits_loc --methods gradcam,fixations --metrics pointing,mask

Sets (used when present): sample_data/an8flower6, sample_data/an8flower12, sample_data/digits_loc (with
sample_models/<set>.onnx) and .cache/eval/skimage (with .cache/real_models/models/efficientnet_lite0.onnx; build
it with ``python tools/build_eval_sets.py --skimage``). Each metric family is timed on its own (one evaluation =
one set × method × family over the images), so the times add the explanations each family needs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxfix.api import Explainer  # noqa: E402
from onnxfix.errors import OnnxfixError  # noqa: E402
from onnxfix.evaluate.dataset import load_dataset, resolve_labels  # noqa: E402
from onnxfix.evaluate.metrics import METRICS  # noqa: E402
from onnxfix.evaluate.report import better  # noqa: E402
from onnxfix.evaluate.runner import Evaluator  # noqa: E402

SETS = {
    "an8flower6": (ROOT / "sample_data/an8flower6", ROOT / "sample_models/an8flower6.onnx"),
    "an8flower12": (ROOT / "sample_data/an8flower12", ROOT / "sample_models/an8flower12.onnx"),
    "digits_loc": (ROOT / "sample_data/digits_loc", ROOT / "sample_models/digits_loc.onnx"),
    "skimage": (ROOT / ".cache/eval/skimage", ROOT / ".cache/real_models/models/efficientnet_lite0.onnx"),
}


def evaluate_set(name: str, folder: Path, model: Path, methods: list[str] | None, metrics: list[str],
                 limit: int, threads: int | None) -> str:
    ex = Explainer(model, threads=threads)
    ds = load_dataset(folder)
    mdl = ex.model
    n = len(mdl.labels) if mdl.labels else (mdl._dim(mdl.head.logits, mdl.head.class_axis) or 0)
    items, skipped = resolve_labels(ds, mdl.labels, n)
    items = items[:limit]
    usable = [m for m, why in ex.methods().items() if why is None and (methods is None or m in methods)]
    means: dict[str, dict[str, float | None]] = {m: {} for m in usable}
    times: dict[str, dict[str, float]] = {m: {} for m in usable}
    errors: list[str] = []
    for fam in metrics:
        ev = Evaluator(ex, [fam])  # one per family: its randomised models are built once for every method
        for m in usable:
            vals: dict[str, list[float]] = {v: [] for v in METRICS[fam].values}
            t0 = time.perf_counter()
            for it in items:
                try:
                    got, _ = ev.evaluate(it, m)
                except (OnnxfixError, ValueError, OSError) as exc:
                    errors.append(f"{m}/{fam}/{it.file}: {exc}")
                    continue
                for k, v in got.items():
                    if v is not None:
                        vals[k].append(v)
            times[m][fam] = time.perf_counter() - t0
            for k, vs in vals.items():
                means[m][k] = float(np.mean(vs)) if vs else None
    lines = [f"### {name} — {model.name}, {len(items)} images ({len(skipped) + len(ds.skipped)} skipped)", "",
             "| metric | " + " | ".join(usable) + " |", "|---|" + "---:|" * len(usable)]
    for fam in metrics:
        for v in METRICS[fam].values:
            cells = ["—" if means[m].get(v) is None else f"{means[m][v]:.3f}" for m in usable]
            lines.append(f"| {v} {better(v)} | " + " | ".join(cells) + " |")
    for fam in metrics:
        lines.append(f"| time {fam} (s) | " + " | ".join(f"{times[m][fam]:.1f}" for m in usable) + " |")
    if errors:
        lines += ["", f"{len(errors)} evaluation(s) failed, e.g. {errors[0]}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=20, help="images per set (default 20)")
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated sets")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all that apply)")
    p.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metric families")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    a = p.parse_args(argv)
    methods = a.methods.split(",") if a.methods else None
    metrics = [m for m in a.metrics.split(",") if m]
    for name in a.sets.split(","):
        folder, model = SETS[name]
        if not (folder / "annotations.json").exists() and not folder.is_dir() or not model.exists():
            print(f"### {name}: not available ({folder} / {model.name} missing)\n", flush=True)
            continue
        t0 = time.perf_counter()
        print(evaluate_set(name, folder, model, methods, metrics, a.limit, a.threads), flush=True)
        print(f"\n(total {time.perf_counter() - t0:.1f} s)\n", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
