"""``onnxfix evaluate MODEL DATASET [--methods a,b,c] [--metrics ...]`` — score explanation methods on a dataset.

Writes, in ``--out`` (default: the current folder), with PREFIX = ``<model stem>.<dataset folder name>``:

* ``PREFIX.jsonl`` — one row per image × method, appended and flushed as it goes (a rerun resumes from it;
  ``--fresh`` starts over);
* ``PREFIX.csv`` — the same rows flattened, one column per metric value;
* ``PREFIX.json`` — the summary: means per method, skipped rows with reasons, settings;
* ``PREFIX.png`` — a bar chart comparing the methods.
The results table goes to stdout (``--json``: the summary JSON instead); skipped rows are listed on stderr.

Output policy (as every subcommand, docs/robustness.md): ``--out`` is a folder; a file that is not this evaluation's
own is never replaced — when ``PREFIX.*`` names are taken by other files the run uses the next free prefix
(``PREFIX-2``…), claimed atomically; a rerun of the same evaluation finds its own results (a journal of this model's
rows, the summary, the CSV and the chart it wrote) and resumes there, updating its summary files; ``--fresh`` starts
a new journal under the next free prefix, ``--overwrite`` replaces the files of ``PREFIX`` itself. No output ever
replaces the model, an annotation file or a dataset image.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from onnxfix.errors import InputError, printable

#: The tEXt entry that marks a chart PNG as written by ``onnxfix evaluate`` (so a rerun may update it).
CHART_MARK = ("onnxfix", "evaluate chart")


def _parser() -> Any:
    from onnxfix.cli import Parser, add_limit_options, float_arg, int_arg
    from onnxfix.evaluate.metrics import METRICS

    p = Parser(prog="onnxfix evaluate",
                                description="Evaluate explanation methods on an annotated dataset "
                                            "(docs/evaluation.md describes the folder format).")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("dataset", help="folder with annotations.json, annotations.csv or VOC/ImageNet XML files")
    p.add_argument("--methods", default="all", help="comma-separated methods, or 'all' that apply (default)")
    p.add_argument("--metrics", default="all",
                   help=f"comma-separated metric families from {', '.join(METRICS)}; default all")
    p.add_argument("--out", default=".", metavar="FOLDER", help="folder for the results (default: current folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files of the same names (default: resume this evaluation's own results, else "
                        "the next free prefix, PREFIX-2...)")
    p.add_argument("--limit", type=int_arg(1), default=None, help="evaluate only the first N images")
    p.add_argument("--fresh", action="store_true",
                   help="do not resume: a new results file (the next free prefix; with --overwrite, PREFIX itself)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a TTY")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")
    p.add_argument("--no-chart", action="store_true", help="do not write the PNG chart")
    p.add_argument("--labels", default=None, help="labels file for the model")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--top-fraction", type=float_arg(0, 1, lo_open=True), default=0.2,
                   help="confidence: fraction of the map kept, in (0, 1] (0.2)")
    p.add_argument("--steps", type=int_arg(1, 10000), default=16, help="deletion/insertion steps (16)")
    p.add_argument("--tolerance", type=float_arg(0), default=0.0, help="pointing game tolerance in pixels (0)")
    p.add_argument("--occlusion-window", type=int_arg(1, 16384), default=None,
                   help="occlusion window for faithfulness")
    add_limit_options(p)
    return p


def _own_journal(path: Path, model_name: str) -> bool:
    from onnxfix.evaluate import runner
    from onnxfix.io.files import is_regular_file

    if not is_regular_file(path):
        return False
    if path.stat().st_size == 0:
        return True
    try:
        rows = runner.read_rows(path)
    except InputError:
        return False
    return any(r.get("model") == model_name for r in rows)


def _own_summary(path: Path, kind: str) -> bool:
    """``path`` (csv, json or png) was written by an evaluation (so a rerun may update it)."""
    from PIL import Image

    from onnxfix.io import files

    if not os.path.lexists(path):
        return True
    if not files.is_regular_file(path):
        return False
    try:
        if kind == "csv":
            return files.read_bytes(path, "results", 1 << 30).startswith(b"model,method,image,label,")
        if kind == "json":
            d = files.read_json(path, "summary", 1 << 30)
            return isinstance(d, dict) and {"model", "dataset", "summary", "methods"} <= set(d)
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get(CHART_MARK[0]) == CHART_MARK[1]
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False


def output_paths(out: Path, prefix: str, model_name: str, fresh: bool, overwrite: bool) -> dict[str, Path]:
    """The four output paths under the output policy (see the module docstring); the journal is claimed
    (created) when new."""
    from onnxfix.io.atomic import claim_name, numbered

    def paths(p: str) -> dict[str, Path]:
        return {k: out / f"{p}.{k}" for k in ("jsonl", "csv", "json", "png")}

    if overwrite:
        return paths(prefix)
    for p in numbered(prefix, ""):
        ps = paths(p)
        taken = [k for k, v in ps.items() if os.path.lexists(v)]
        if not taken:
            got = claim_name([ps["jsonl"]])  # O_EXCL: a parallel run cannot take the same journal
            if got == ps["jsonl"]:
                return ps
            continue
        if not fresh and "jsonl" in taken and _own_journal(ps["jsonl"], model_name) and all(
                _own_summary(ps[k], k) for k in ("csv", "json", "png")):
            return ps
    raise InputError(f"{out}: no free name for the results")


#: metric families left out of ``--metrics all`` for their cost (ROAD: 18 sparse solves per image; max-sensitivity
#: re-explains 10 noisy copies): ask for them by name
_OPT_IN = {"road", "robustness"}


def _pick(text: str, known: list[str], what: str) -> list[str]:
    if text.strip().lower() == "all":
        return [k for k in known if not (what == "metric" and k in _OPT_IN)]
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
    from onnxfix.io.atomic import Terminated
    from onnxfix.methods import METHODS

    a = _parser().parse_args(argv)
    metrics = _pick(a.metrics, list(METRICS), "metric")
    wanted = _pick(a.methods, list(METHODS), "method")
    ds = load_dataset(a.dataset)
    ex = Explainer(a.model, provider=a.provider, labels=a.labels, max_image_pixels=a.max_image_pixels,
                   max_model_mb=a.max_model_mb, memory_budget_mb=a.memory_budget_mb)
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
            print(f"onnxfix evaluate: {m} does not apply to this model ({printable(reasons[m])}); left out",
                  file=sys.stderr)
    if not methods:
        raise InputError("none of the requested methods applies to this model")
    if skipped:
        print(f"onnxfix evaluate: skipped {len(skipped)} row(s):", file=sys.stderr)
        for s in skipped:
            print(f"  {printable(s)}", file=sys.stderr)
    if not items:
        raise InputError(f"{a.dataset}: no image left to evaluate ({len(skipped)} skipped)")

    out = Path(a.out)
    prefix = f"{Path(a.model).stem}.{Path(a.dataset).resolve().name}"
    inputs = [Path(a.model), *Path(a.dataset).glob("annotations.*"), *(it.path for it in ds.items),
              *(it.mask for it in ds.items if it.mask is not None)]
    protected = {p.resolve() for p in inputs}
    wished = {k: (out / f"{prefix}.{k}").resolve() for k in ("jsonl", "csv", "json", "png")}
    if a.overwrite:
        for p in wished.values():
            if p in protected:
                raise InputError(f"{printable(str(p))}: refusing to overwrite an input file")
    paths = output_paths(out, prefix, mdl.name, a.fresh, a.overwrite)
    settings = runner.Settings(top_fraction=a.top_fraction, steps=a.steps, pointing_tolerance=a.tolerance,
                               occlusion_window=a.occlusion_window)
    t0 = time.perf_counter()
    interrupted = False
    try:
        rows = runner.run(ex, mdl.name, items, methods, metrics, paths["jsonl"], settings, resume=not a.fresh,
                          progress=a.progress or sys.stderr.isatty())
    except KeyboardInterrupt as exc:
        interrupted = exc.signum if isinstance(exc, Terminated) else True
        key = set((m, it.file) for it in items for m in methods)
        rows = [r for r in runner.read_rows(paths["jsonl"])
                if r.get("model") == mdl.name and (r.get("method"), r.get("image")) in key]
    summary = runner.aggregate(rows, methods, metrics)
    errors = [f"{printable(r['image'])} [{r['method']}]: {printable(r['error'])}" for r in rows if r.get("error")]
    doc = {"model": str(a.model), "dataset": str(a.dataset), "format": ds.format, "images": len(items),
           "methods": methods, "metrics": metrics, "seconds": round(time.perf_counter() - t0, 3),
           "settings": vars(settings), "summary": summary,
           "skipped": [{"file": s.file, "reason": s.reason, "where": s.where} for s in skipped],
           "errors": errors, "complete": not interrupted}
    report.write_csv(rows, metrics, paths["csv"], protect=inputs)
    runner.write_text_atomic(paths["json"], json.dumps(doc, indent=1) + "\n", protect=inputs)
    if not a.no_chart:
        chart = report.chart(summary, metrics, title=f"{Path(paths['png']).stem} ({len(items)} images)")
        from onnxfix.io.atomic import write_atomic

        write_atomic(paths["png"], render.png_writer(chart, dict([CHART_MARK])), protect=inputs)
    if errors:
        print(f"onnxfix evaluate: {len(errors)} image × method evaluation(s) failed:", file=sys.stderr)
        for e in errors[:20]:
            print(f"  {e}", file=sys.stderr)
    if a.json:
        print(json.dumps(doc))
    else:
        print(report.table(summary, metrics))
        print(f"\nper-image results: {printable(paths['jsonl'])}, {printable(paths['csv'])}; summary: "
              f"{printable(paths['json'])}" + ("" if a.no_chart else f"; chart: {printable(paths['png'])}"))
    if interrupted:
        print("onnxfix evaluate: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130 if interrupted is True else 128 + int(interrupted)
    return 0
