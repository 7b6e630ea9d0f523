"""``onnxfix batch MODEL INPUT... --methods M1,M2 --out DIR``: explain many images into a Parquet table."""

from __future__ import annotations

import argparse
import json
import sys

from onnxfix.errors import InputError


def _parser() -> argparse.ArgumentParser:
    from onnxfix.cli import Parser, add_limit_options, add_model_options, int_arg

    p = Parser(
        prog="onnxfix batch",
        description="Explain many images into DIR/explanations.parquet (one row per image × method × target). "
                    "Rerunning skips the rows already there; a killed run loses at most the row group in flight.",
        epilog="docs/batch.md: the table's columns, resuming, and running on a Dask cluster.")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (recursive), globs (quoted), or a manifest (.csv/.parquet with a "
                        "'path' column and an optional 'target' column)")
    p.add_argument("--methods", "--method", dest="methods", default="fixations",
                   help="comma-separated methods, or 'all' (default: fixations)")
    p.add_argument("--out", required=True, help="results folder (created; reused to resume)")
    p.add_argument("--target", default=None,
                   help="target for images without one in a manifest: 281, espresso, box:0... (default: top class)")
    p.add_argument("--layer", default=None, help="layer for layer methods (tensor or node name)")
    p.add_argument("--step", type=int_arg(0), default=None, help="time step for sequence outputs")
    p.add_argument("--top-k", type=int_arg(0, 100000), default=5, help="classes kept in the 'top' column (default 5)")
    p.add_argument("--option", action="append", default=[], metavar="[METHOD:]NAME=VALUE",
                   help="a method option, repeatable; 'occlusion:window=16' for one method only")
    p.add_argument("--engine", choices=["local", "dask"], default="local", help="where to run (default: local)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address (tcp://host:8786); default: start a LocalCluster")
    p.add_argument("--workers", type=int_arg(1, 4096), default=None,
                   help="processes (local; default 1) or LocalCluster workers (dask; default: the cores)")
    p.add_argument("--threads", type=int_arg(1, 4096), default=None,
                   help="ONNX Runtime threads per worker (default: cores / workers)")
    p.add_argument("--batch-size", type=int_arg(1, 4096), default=None,
                   help="images per ONNX Runtime call (default: from the model and the memory budget, at most 8)")
    p.add_argument("--row-group", type=int_arg(1, 1_000_000), default=256,
                   help="images per row group / part file (default 256)")
    p.add_argument("--map-size", default="64", metavar="N|HxW",
                   help="largest size of the stored float16 map (default 64, i.e. 64x64)")
    p.add_argument("--png", action="store_true", help="also write overlay PNGs into DIR/png/")
    p.add_argument("--overwrite", action="store_true", help="with --png: replace existing PNGs")
    p.add_argument("--fresh", action="store_true", help="delete the table in DIR and start over")
    p.add_argument("--retry-errors", action="store_true", help="explain again the images whose rows hold an error")
    p.add_argument("--io-threads", type=int_arg(1, 256), default=2, help="decoding threads per worker (default 2)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is drawn only on a terminal)")
    add_model_options(p)
    add_limit_options(p)
    return p


def _map_size(text: str) -> tuple[int, int]:
    t = text.lower().replace("×", "x")
    try:
        if "x" in t:
            h, w = (int(v) for v in t.split("x", 1))
            return h, w
        n = int(t)
        return n, n
    except ValueError:
        raise InputError(f"--map-size {text!r}: give N or HxW (e.g. 64 or 48x64)") from None


def _split_options(items: list[str]) -> tuple[dict, dict[str, dict]]:
    from onnxfix.cli import _options

    common: list[str] = []
    per: dict[str, list[str]] = {}
    for item in items:
        head, eq, _ = item.partition("=")
        if eq and ":" in head:
            method, _, rest = item.partition(":")
            per.setdefault(method.strip(), []).append(rest)
        else:
            common.append(item)
    return _options(common), {m: _options(v) for m, v in per.items()}


def cmd_batch(argv: list[str]) -> int:
    """The ``batch`` subcommand; returns the exit code (user errors raise :class:`onnxfix.errors.OnnxfixError`)."""
    a = _parser().parse_args(argv)
    from onnxfix.batch.runner import run
    from onnxfix.cli import _overrides

    opts, per = _split_options(a.option)
    res = run(a.model, a.inputs, a.methods, a.out, engine=a.engine, workers=a.workers, scheduler=a.scheduler,
              target=a.target, options=opts, method_options=per, layer=a.layer, step=a.step, top_k=a.top_k,
              batch_size=a.batch_size, row_group=a.row_group, map_size=_map_size(a.map_size), png=a.png,
              overwrite=a.overwrite, fresh=a.fresh, retry_errors=a.retry_errors, threads=a.threads,
              io_threads=a.io_threads, provider=a.provider, labels=a.labels, output=a.output,
              preprocess=_overrides(a), max_image_pixels=a.max_image_pixels, max_model_mb=a.max_model_mb,
              memory_budget_mb=a.memory_budget_mb, progress=False if a.no_progress else None)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{res['images']} images × {len(res['methods'])} methods: {res['rows']} rows written "
              f"({res['errors']} with an error), {res['skipped']} already done; {res['explained']} images in "
              f"{res['seconds']:.1f} s ({res['images_per_s']:.1f} images/s, {res['engine']}, "
              f"{res['workers']} worker{'s' if res['workers'] > 1 else ''}, batch {res['batch_size']}) "
              f"→ {res['table']}")
    sys.stdout.flush()
    return 0
