"""``onnxfix evaluate MODEL DATASET [--methods a,b,c] [--metrics ...]`` — score explanation methods on a dataset.

Writes, in ``--out`` (default: the current folder), with PREFIX = ``<model stem>.<dataset folder name>``:

* ``PREFIX.jsonl`` — one row per image × method, appended and flushed as it goes (a rerun resumes from it;
  ``--fresh`` starts over);
* ``PREFIX.csv`` — the same rows flattened, one column per metric value;
* ``PREFIX.json`` — the summary: means per method, skipped rows with reasons, settings;
* ``PREFIX.png`` — a bar chart comparing the methods.
The results table goes to stdout (``--json``: the summary JSON instead); skipped rows are listed on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from onnxfix.errors import InputError


def _parser() -> argparse.ArgumentParser:
    from onnxfix.evaluate.metrics import METRICS

    p = argparse.ArgumentParser(prog="onnxfix evaluate",
                                description="Evaluate explanation methods on an annotated dataset "
                                            "(docs/evaluation.md describes the folder format).")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("dataset", help="folder with annotations.json, annotations.csv or VOC/ImageNet XML files")
    p.add_argument("--methods", default="all", help="comma-separated methods, or 'all' that apply (default)")
    p.add_argument("--metrics", default="all",
                   help=f"comma-separated metric families from {', '.join(METRICS)}; default all")
    p.add_argument("--out", default=".", help="folder for the results (default: current folder)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--fresh", action="store_true", help="ignore an existing results file (default: resume)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a TTY")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")
    p.add_argument("--no-chart", action="store_true", help="do not write the PNG chart")
    p.add_argument("--labels", default=None, help="labels file for the model")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--top-fraction", type=float, default=0.2, help="confidence: fraction of the map kept (0.2)")
    p.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (16)")
    p.add_argument("--tolerance", type=float, default=0.0, help="pointing game tolerance in pixels (0)")
    p.add_argument("--occlusion-window", type=int, default=None, help="occlusion window for faithfulness")
    return p


def _pick(text: str, known: list[str], what: str) -> list[str]:
    if text.strip().lower() == "all":
        return list(known)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise InputError(f"unknown {what} {', '.join(bad) or repr(text)}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def cmd_evaluate(argv: list[str]) -> int:
    """Entry point of ``onnxfix evaluate``; returns the exit code."""
    from onnxfix import render
    from onnxfix.api import Explainer
    from onnxfix.evaluate import report, runner
    from onnxfix.evaluate.dataset import load_dataset, resolve_labels
    from onnxfix.evaluate.metrics import METRICS
    from onnxfix.methods import METHODS

    a = _parser().parse_args(argv)
    if a.limit is not None and a.limit < 1:
        raise InputError("--limit must be at least 1")
    if not 0 < a.top_fraction <= 1:
        raise InputError("--top-fraction must be in (0, 1]")
    if a.steps < 1:
        raise InputError("--steps must be at least 1")
    metrics = _pick(a.metrics, list(METRICS), "metric")
    wanted = _pick(a.methods, list(METHODS), "method")
    ds = load_dataset(a.dataset)
    ex = Explainer(a.model, provider=a.provider, labels=a.labels)
    mdl = ex.model
    n_classes = len(mdl.labels) if mdl.labels else (mdl._dim(mdl.head.logits, mdl.head.class_axis) or 0)
    items, label_skips = resolve_labels(ds, mdl.labels, n_classes)
    skipped = ds.skipped + label_skips
    if a.limit is not None:
        items = items[:a.limit]
    reasons = ex.methods()
    methods = [m for m in wanted if reasons.get(m) is None]
    for m in wanted:
        if reasons.get(m) is not None:
            print(f"onnxfix evaluate: {m} does not apply to this model ({reasons[m]}); left out", file=sys.stderr)
    if not methods:
        raise InputError("none of the requested methods applies to this model")
    if skipped:
        print(f"onnxfix evaluate: skipped {len(skipped)} row(s):", file=sys.stderr)
        for s in skipped:
            print(f"  {s}", file=sys.stderr)
    if not items:
        raise InputError(f"{a.dataset}: no image left to evaluate ({len(skipped)} skipped)")

    out = Path(a.out)
    prefix = f"{Path(a.model).stem}.{Path(a.dataset).resolve().name}"
    paths = {k: out / f"{prefix}.{k}" for k in ("jsonl", "csv", "json", "png")}
    protected = {Path(a.model).resolve(), *(p.resolve() for p in Path(a.dataset).glob("annotations.*"))}
    for p in paths.values():
        if p.resolve() in protected:
            raise InputError(f"{p}: refusing to overwrite an input file")
    settings = runner.Settings(top_fraction=a.top_fraction, steps=a.steps, pointing_tolerance=a.tolerance,
                               occlusion_window=a.occlusion_window)
    t0 = time.perf_counter()
    interrupted = False
    try:
        rows = runner.run(ex, mdl.name, items, methods, metrics, paths["jsonl"], settings, resume=not a.fresh,
                          progress=a.progress or sys.stderr.isatty())
    except KeyboardInterrupt:
        interrupted = True
        key = set((m, it.file) for it in items for m in methods)
        rows = [r for r in runner.read_rows(paths["jsonl"])
                if r.get("model") == mdl.name and (r.get("method"), r.get("image")) in key]
    summary = runner.aggregate(rows, methods, metrics)
    errors = [f"{r['image']} [{r['method']}]: {r['error']}" for r in rows if r.get("error")]
    doc = {"model": str(a.model), "dataset": str(a.dataset), "format": ds.format, "images": len(items),
           "methods": methods, "metrics": metrics, "seconds": round(time.perf_counter() - t0, 3),
           "settings": vars(settings), "summary": summary,
           "skipped": [{"file": s.file, "reason": s.reason, "where": s.where} for s in skipped],
           "errors": errors, "complete": not interrupted}
    report.write_csv(rows, metrics, paths["csv"])
    runner.write_text_atomic(paths["json"], json.dumps(doc, indent=1) + "\n")
    if not a.no_chart:
        render.save_png(report.chart(summary, metrics, title=f"{prefix} ({len(items)} images)"), paths["png"])
    if errors:
        print(f"onnxfix evaluate: {len(errors)} image × method evaluation(s) failed:", file=sys.stderr)
        for e in errors[:20]:
            print(f"  {e}", file=sys.stderr)
    if a.json:
        print(json.dumps(doc))
    else:
        print(report.table(summary, metrics))
        print(f"\nper-image results: {paths['jsonl']}, {paths['csv']}; summary: {paths['json']}"
              + ("" if a.no_chart else f"; chart: {paths['png']}"))
    if interrupted:
        print("onnxfix evaluate: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
